/*-------------------------------------------------------------------------
 * crypto.c
 *	  Thin wrappers over OpenSSL libcrypto.
 *-------------------------------------------------------------------------
 */
#include "fintx.h"

#include <ctype.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>

static EVP_MD *sha256_md = NULL;
static EVP_MD_CTX *sha256_ctx = NULL;

/* SHA-256 of part1 || part2 into out (32 bytes), with a digest context kept per backend. */
void
fintx_sha256_2(const unsigned char *part1, size_t len1, const unsigned char *part2, size_t len2,
			   uint8 *out)
{
	unsigned int outlen = 0;

	if (sha256_md == NULL)
	{
		sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
		sha256_ctx = EVP_MD_CTX_new();
		if (sha256_md == NULL || sha256_ctx == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not initialize SHA-256")));
	}
	if (EVP_DigestInit_ex2(sha256_ctx, sha256_md, NULL) != 1 ||
		(len1 > 0 && EVP_DigestUpdate(sha256_ctx, part1, len1) != 1) ||
		(len2 > 0 && EVP_DigestUpdate(sha256_ctx, part2, len2) != 1) ||
		EVP_DigestFinal_ex(sha256_ctx, out, &outlen) != 1 || outlen != 32)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute SHA-256 digest")));
}

/* Computes SHA-256 of data into out (32 bytes); emits an error if libcrypto fails. */
void
fintx_sha256(const unsigned char *data, size_t len, uint8 *out)
{
	fintx_sha256_2(data, len, NULL, 0, out);
}

/* ------------------------------------------------------------------------
 * Ed25519 signing key and C2SP signed notes
 * ------------------------------------------------------------------------
 */
#include "common/base64.h"
#include "storage/fd.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/pem.h>

static EVP_PKEY *cached_key = NULL;
static char *cached_path = NULL;
static struct stat cached_stat;

/* The largest key file read: an Ed25519 PEM is about 120 bytes. */
#define FINTX_KEY_FILE_MAX 65536

/* Whether two stats describe the same file in the same state (same inode, size and times). */
static bool
SameFileState(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
		a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
		a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* pem_password_cb that gives no passphrase: an encrypted key fails instead of prompting on a terminal */
static int
NoPassphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

/*
 * Returns the Ed25519 private key from the PEM file path (cached until the
 * file changes: another inode, size, modification or change time), or NULL
 * if path is empty. Emits 55000 if the file is not a regular file, cannot be
 * read, is larger than any key file, or holds no unencrypted Ed25519 key.
 * The file is opened without blocking (a FIFO would wait for a writer) and
 * checked on the descriptor it is read from.
 */
EVP_PKEY *
fintx_signing_key(const char *path)
{
	struct stat st;
	int			fd;
	char	   *buf;
	ssize_t		len = 0;
	BIO		   *bio;
	EVP_PKEY   *key;

	if (path == NULL || path[0] == '\0')
		return NULL;
	if (stat(path, &st) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("could not read signing key file \"%s\": %m", path)));
	if (cached_key && cached_path && strcmp(cached_path, path) == 0 && SameFileState(&cached_stat, &st))
		return cached_key;
	fd = OpenTransientFile(path, O_RDONLY | O_NONBLOCK | PG_BINARY);
	if (fd < 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("could not open signing key file \"%s\": %m", path)));
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > FINTX_KEY_FILE_MAX)
	{
		bool		regular = S_ISREG(st.st_mode);

		CloseTransientFile(fd);
		if (regular)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("signing key file \"%s\" is too large to be a key file", path)));
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("signing key file \"%s\" is not a regular file", path)));
	}
	buf = palloc(FINTX_KEY_FILE_MAX + 1);
	for (;;)
	{
		ssize_t		n = read(fd, buf + len, FINTX_KEY_FILE_MAX + 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
		{
			int			save = errno;

			CloseTransientFile(fd);
			errno = save;
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("could not read signing key file \"%s\": %m", path)));
		}
		len += n;
		if (n == 0 || len > FINTX_KEY_FILE_MAX)
			break;
	}
	CloseTransientFile(fd);
	bio = len <= FINTX_KEY_FILE_MAX ? BIO_new_mem_buf(buf, (int) len) : NULL;
	key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NoPassphrase, NULL) : NULL;
	BIO_free(bio);
	ERR_clear_error();
	explicit_bzero(buf, FINTX_KEY_FILE_MAX + 1);
	pfree(buf);
	if (key == NULL || EVP_PKEY_id(key) != EVP_PKEY_ED25519)
	{
		EVP_PKEY_free(key);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("signing key file \"%s\" does not hold an Ed25519 private key in PEM format", path),
				 errdetail("An encrypted key cannot be used: the server has no passphrase for it."),
				 errhint("Create one with: openssl genpkey -algorithm ed25519 -out key.pem")));
	}
	EVP_PKEY_free(cached_key);
	if (cached_path)
		free(cached_path);
	cached_key = key;
	cached_path = strdup(path);
	cached_stat = st;
	return key;
}

/* Writes the 32-byte raw public key of key to pub. */
void
fintx_ed25519_public(EVP_PKEY *key, uint8 *pub)
{
	size_t		len = 32;

	if (EVP_PKEY_get_raw_public_key(key, pub, &len) != 1 || len != 32)
		elog(ERROR, "could not extract the Ed25519 public key");
}

/* Signs msg with key into sig (64 bytes). */
void
fintx_ed25519_sign(EVP_PKEY *key, const uint8 *msg, size_t len, uint8 *sig)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	size_t		siglen = 64;

	if (ctx == NULL || EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) != 1 ||
		EVP_DigestSign(ctx, sig, &siglen, msg, len) != 1 || siglen != 64)
	{
		EVP_MD_CTX_free(ctx);
		elog(ERROR, "could not compute Ed25519 signature");
	}
	EVP_MD_CTX_free(ctx);
}

/* True if sig (64 bytes) is a valid Ed25519 signature of msg by public key pub (32 bytes). */
bool
fintx_ed25519_verify(const uint8 *pub, const uint8 *msg, size_t len, const uint8 *sig)
{
	EVP_PKEY   *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, 32);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool		ok;

	ok = key != NULL && ctx != NULL &&
		EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
		EVP_DigestVerify(ctx, sig, 64, msg, len) == 1;
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(key);
	return ok;
}

/* Standard base64 of len bytes (palloc'd, NUL-terminated). */
char *
fintx_base64(const uint8 *data, int len)
{
	int			enclen = pg_b64_enc_len(len);
	char	   *out = palloc(enclen + 1);
	int			n = pg_b64_encode((const char *) data, len, out, enclen);

	if (n < 0)
		elog(ERROR, "could not encode base64");
	out[n] = '\0';
	return out;
}

/*
 * C2SP signed-note key ID of an Ed25519 key: the first 4 bytes of
 * SHA-256(name || 0x0A || 0x01 || public key).
 */
void
fintx_note_key_id(const char *name, const uint8 *pub, uint8 *id)
{
	StringInfoData buf;
	uint8		hash[32];

	initStringInfo(&buf);
	appendStringInfoString(&buf, name);
	appendStringInfoChar(&buf, '\n');
	appendStringInfoChar(&buf, 0x01);
	appendBinaryStringInfo(&buf, (const char *) pub, 32);
	fintx_sha256((unsigned char *) buf.data, buf.len, hash);
	memcpy(id, hash, 4);
	pfree(buf.data);
}

/*
 * Whether a raw Ed25519 public key is unusable as a verifier: its y coordinate
 * not below p (a non-canonical encoding), or a point of small order (order 1,
 * 2, 4 or 8: the eight torsion points have the five y coordinates below, each
 * with either sign of x). Under a small-order key a constant signature (R the
 * identity, S = 0) verifies many messages or every message, and OpenSSL does
 * not refuse such keys: a service could register one and later deny whatever
 * it signed. The y values are those of [L]P for random points P (L the order
 * of the base point), the list libsodium blocks; pgTAP 006 refuses each.
 */
static bool
UnusableKey(const uint8 *pub)
{
	static const uint8 small_order_y[5][32] = {
		{0},					/* y = 0: order 4 */
		{1},					/* y = 1: the identity */
		{0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0,
		0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05},	/* order 8 */
		{0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f,
		0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a},	/* order 8 */
		{0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}	/* y = p - 1: order 2 */
	};
	uint8		y[32];
	int			cmp = 0;

	memcpy(y, pub, 32);
	y[31] &= 0x7f;				/* the top bit is the sign of x */
	/* y >= p = 2^255 - 19 (little-endian: ed ff ... ff 7f) */
	for (int i = 31; i >= 0 && cmp == 0; i--)
	{
		uint8		pi = i == 31 ? 0x7f : (i == 0 ? 0xed : 0xff);

		cmp = (y[i] > pi) - (y[i] < pi);
	}
	if (cmp >= 0)
		return true;
	for (int k = 0; k < (int) lengthof(small_order_y); k++)
		if (memcmp(y, small_order_y[k], 32) == 0)
			return true;
	return false;
}

/* text without leading and trailing white space, in a new string */
static char *
Trimmed(const char *text)
{
	const char *end = text + strlen(text);

	while (*text != '\0' && isspace((unsigned char) *text))
		text++;
	while (end > text && isspace((unsigned char) end[-1]))
		end--;
	return pnstrdup(text, end - text);
}

/*
 * Parses an Ed25519 public key given as PEM (SubjectPublicKeyInfo, one block
 * as written by "openssl pkey -pubout", white space around it allowed) or as
 * canonical standard base64 of the raw 32 bytes. Returns false with *why set
 * if text is neither, or if the key could not verify anything soundly.
 */
bool
fintx_ed25519_parse_public(const char *text, uint8 *pub, const char **why)
{
	static const char begin[] = "-----BEGIN PUBLIC KEY-----";
	static const char end[] = "-----END PUBLIC KEY-----";
	char	   *t = Trimmed(text);
	size_t		len = strlen(t);

	*why = "It is neither one PEM block of an Ed25519 public key nor base64 of 32 bytes.";
	if (strncmp(t, begin, strlen(begin)) == 0)
	{
		BIO		   *bio;
		EVP_PKEY   *key;
		size_t		publen = 32;
		bool		ok;

		/* one block and nothing else: no text before or after it, no second block */
		if (len < strlen(begin) + strlen(end) || strstr(t + 1, "-----BEGIN") != NULL ||
			strstr(t, "-----END") != t + len - strlen(end) || strcmp(t + len - strlen(end), end) != 0)
			return false;
		bio = BIO_new_mem_buf(t, (int) len);
		key = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
		ok = key != NULL && EVP_PKEY_get_id(key) == EVP_PKEY_ED25519 &&
			EVP_PKEY_get_raw_public_key(key, pub, &publen) == 1 && publen == 32;
		EVP_PKEY_free(key);
		BIO_free(bio);
		ERR_clear_error();
		if (!ok)
			return false;
	}
	else
	{
		char		raw[48];
		char		again[64];
		int			n;

		if (len == 0 || len > 64 || pg_b64_dec_len((int) len) > (int) sizeof(raw))
			return false;
		n = pg_b64_decode(t, (int) len, raw, sizeof(raw));
		if (n != 32)
			return false;
		/* canonical: the one encoding of these bytes (no stray bits in the last character) */
		n = pg_b64_encode(raw, 32, again, sizeof(again));
		if (n != (int) len || memcmp(again, t, len) != 0)
			return false;
		memcpy(pub, raw, 32);
	}
	if (UnusableKey(pub))
	{
		*why = "The key is a point of small order or not canonically encoded: signatures under it prove nothing.";
		return false;
	}
	return true;
}
