/*-------------------------------------------------------------------------
 * fintx-verify.c
 *	  Offline verifier of a fintx audit log: checks an export against a
 *	  signed checkpoint without PostgreSQL (libcrypto and libc only).
 *
 *	  fintx-verify --export FILE --checkpoint FILE --key KEY_OR_FILE
 *	               [--previous-checkpoint FILE [--consistency-proof FILE]]
 *	               [--print]
 *
 * It checks:
 *	 - the verifier key "name+hex(key id)+base64(0x01 || Ed25519 public key)"
 *	   and its key id (C2SP signed-note);
 *	 - the checkpoint "origin\nsize\nbase64(root)\n" and its signed-note
 *	   signature by that key;
 *	 - the export "leaf_index<TAB>hex(canonical bytes)" per line: indexes 0..n-1
 *	   in order, every entry well formed (docs/audit-format.md: text fields
 *	   valid UTF-8, details exactly as jsonb prints them), no entry id twice;
 *	 - the RFC 6962 tree head of the first `size` leaves against the root;
 *	 - optionally an older checkpoint: its signature, the export's tree head at
 *	   its size, and an RFC 9162 consistency proof from it to the checkpoint.
 *
 * --print escapes everything it prints from the export (fput_escaped).
 * Exit status: 0 verified, 1 verification failed (or an input could not be
 * read), 2 usage error.
 * The format is specified in docs/audit-format.md; docs/audit.md has an
 * auditor's walkthrough.
 *-------------------------------------------------------------------------
 */
#define _POSIX_C_SOURCE 200809L

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define HASH_LEN		32
#define ED25519_PUB_LEN 32
#define ED25519_SIG_LEN 64
#define KEY_ID_LEN		4
#define ALG_ED25519		0x01
#define ENTRY_MAGIC		"fintx.audit.v1"
#define EM_DASH			"\xe2\x80\x94"	/* U+2014, starts a signature line */

#define EXIT_VERIFIED	0
#define EXIT_FAILED		1
#define EXIT_USAGE		2

static const char *progname = "fintx-verify";

/* ------------------------------------------------------------------------
 * Messages
 * ------------------------------------------------------------------------
 */

/* Prints "fintx-verify: <message>" to stderr; callers then return -1. */
static void
report(const char *fmt,...)
__attribute__((format(printf, 1, 2)));

static void
report(const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "%s: ", progname);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void
usage(FILE *out)
{
	fprintf(out,
			"Usage: %s --export FILE --checkpoint FILE --key KEY_OR_FILE\n"
			"                    [--previous-checkpoint FILE [--consistency-proof FILE]] [--print]\n"
			"\n"
			"Verifies a fintx audit log export against a signed checkpoint, without PostgreSQL.\n"
			"\n"
			"  --export FILE               output of: psql -Atc \"SELECT * FROM fintx.audit_export()\"\n"
			"                              (one line per leaf: leaf_index<TAB>hex(canonical bytes));\n"
			"                              \"-\" reads standard input\n"
			"  --checkpoint FILE           output of: psql -Atc \"SELECT fintx.checkpoint()\"\n"
			"  --key KEY_OR_FILE           verifier key (output of fintx.public_key()), or a file holding it;\n"
			"                              a well-formed key is used as given, never read as a file\n"
			"  --previous-checkpoint FILE  an older checkpoint of the same log, saved earlier: it must be\n"
			"                              signed by the same key and be a prefix of the export\n"
			"  --consistency-proof FILE    RFC 9162 consistency proof from the previous checkpoint to\n"
			"                              this one, one hex hash per line, output of:\n"
			"                              psql -Atc \"SELECT encode(h, 'hex') FROM\n"
			"                                unnest(fintx.consistency_proof(M, N)) h\"\n"
			"  --print                     print every entry the checkpoint covers, one tab-separated line\n"
			"                              each: leaf index, entry id, recorded_at (UTC), actor, session\n"
			"                              role, action, object type, object id, details. Bytes that\n"
			"                              could act on a terminal are escaped as \\xNN (a byte in hex):\n"
			"                              bytes below 0x20, 0x7f, the C1 controls U+0080-U+009F (both\n"
			"                              bytes, \\xc2\\x80 to \\xc2\\x9f) and bytes of invalid UTF-8;\n"
			"                              in the text fields also \\ as \\\\ and tab, LF, CR as \\t, \\n,\n"
			"                              \\r; the details are JSON text, with backslashes as they are\n"
			"  --help                      show this help\n"
			"\n"
			"Exit status: 0 verified, 1 verification failed or an input could not be read,\n"
			"2 usage error.\n",
			progname);
}

/* ------------------------------------------------------------------------
 * Hashing (SHA-256 through one reused context) and Ed25519
 * ------------------------------------------------------------------------
 */

static EVP_MD *sha256_md = NULL;
static EVP_MD_CTX *sha256_ctx = NULL;

static int
crypto_init(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
	sha256_ctx = EVP_MD_CTX_new();
	if (sha256_md == NULL || sha256_ctx == NULL)
	{
		report("could not initialise SHA-256 in libcrypto");
		return -1;
	}
	return 0;
}

static void
crypto_done(void)
{
	EVP_MD_CTX_free(sha256_ctx);
	EVP_MD_free(sha256_md);
}

/* SHA-256 of the concatenation of up to three parts (b or c may be NULL). */
static void
sha256_3(const void *a, size_t alen, const void *b, size_t blen, const void *c, size_t clen,
		 uint8_t *out)
{
	unsigned int outlen = 0;

	if (EVP_DigestInit_ex2(sha256_ctx, sha256_md, NULL) != 1 ||
		EVP_DigestUpdate(sha256_ctx, a, alen) != 1 ||
		(b && EVP_DigestUpdate(sha256_ctx, b, blen) != 1) ||
		(c && EVP_DigestUpdate(sha256_ctx, c, clen) != 1) ||
		EVP_DigestFinal_ex(sha256_ctx, out, &outlen) != 1 || outlen != HASH_LEN)
	{
		/* libcrypto failing on SHA-256 leaves nothing sensible to do */
		report("SHA-256 computation failed in libcrypto");
		exit(EXIT_FAILED);
	}
}

/* RFC 6962 leaf hash: SHA-256(0x00 || data). */
static void
leaf_hash(const uint8_t *data, size_t len, uint8_t *out)
{
	static const uint8_t prefix = 0x00;

	sha256_3(&prefix, 1, data, len, NULL, 0, out);
}

/* RFC 6962 interior node hash: SHA-256(0x01 || left || right). */
static void
node_hash(const uint8_t *left, const uint8_t *right, uint8_t *out)
{
	static const uint8_t prefix = 0x01;
	uint8_t		tmp[HASH_LEN];

	sha256_3(&prefix, 1, left, HASH_LEN, right, HASH_LEN, tmp);
	memcpy(out, tmp, HASH_LEN);
}

/* True if sig is a valid Ed25519 signature of msg by the raw public key pub. */
static int
ed25519_verify(const uint8_t *pub, const uint8_t *msg, size_t len, const uint8_t *sig)
{
	EVP_PKEY   *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, ED25519_PUB_LEN);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int			ok;

	ok = key != NULL && ctx != NULL &&
		EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
		EVP_DigestVerify(ctx, sig, ED25519_SIG_LEN, msg, len) == 1;
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(key);
	return ok;
}

/* ------------------------------------------------------------------------
 * Encodings: hex and strict (canonical, padded) standard base64
 * ------------------------------------------------------------------------
 */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard base64 with padding of len bytes into out (4 * ceil(len / 3) + 1 bytes). */
static void
base64_encode(const uint8_t *in, size_t len, char *out)
{
	size_t		o = 0;

	for (size_t i = 0; i < len; i += 3)
	{
		uint32_t	v = (uint32_t) in[i] << 16;

		if (i + 1 < len)
			v |= (uint32_t) in[i + 1] << 8;
		if (i + 2 < len)
			v |= in[i + 2];
		out[o++] = b64chars[(v >> 18) & 63];
		out[o++] = b64chars[(v >> 12) & 63];
		out[o++] = i + 1 < len ? b64chars[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < len ? b64chars[v & 63] : '=';
	}
	out[o] = '\0';
}

static int
b64val(char c)
{
	const char *p = c ? strchr(b64chars, c) : NULL;

	return p ? (int) (p - b64chars) : -1;
}

/*
 * Decodes len characters of canonical padded base64 into out (room for
 * maxout bytes); returns the decoded length or -1. Canonical: the input is
 * exactly what base64_encode would produce for the decoded bytes.
 */
static long
base64_decode(const char *in, size_t len, uint8_t *out, size_t maxout)
{
	size_t		o = 0;

	if (len == 0 || len % 4 != 0)
		return -1;
	for (size_t i = 0; i < len; i += 4)
	{
		int			v[4];
		int			pad = 0;
		uint32_t	w;

		for (int k = 0; k < 4; k++)
		{
			if (in[i + k] == '=' && i + 4 == len && k >= 2)
			{
				v[k] = 0;
				pad++;
			}
			else if (pad > 0 || (v[k] = b64val(in[i + k])) < 0)
				return -1;
		}
		w = ((uint32_t) v[0] << 18) | ((uint32_t) v[1] << 12) | ((uint32_t) v[2] << 6) | (uint32_t) v[3];
		if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0))
			return -1;			/* non-zero bits under the padding: not canonical */
		if (o + 3 - pad > maxout)
			return -1;
		out[o++] = (uint8_t) (w >> 16);
		if (pad < 2)
			out[o++] = (uint8_t) (w >> 8);
		if (pad < 1)
			out[o++] = (uint8_t) w;
	}
	return (long) o;
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes 2 * n hex digits into out; returns the offset of the first bad digit or -1 if fine. */
static long
hex_decode(const char *in, size_t n, uint8_t *out)
{
	for (size_t i = 0; i < n; i++)
	{
		int			hi = hexval((unsigned char) in[2 * i]);
		int			lo = hexval((unsigned char) in[2 * i + 1]);

		if (hi < 0)
			return (long) (2 * i);
		if (lo < 0)
			return (long) (2 * i + 1);
		out[i] = (uint8_t) (hi << 4 | lo);
	}
	return -1;
}

static void
hex_encode(const uint8_t *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++)
	{
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

/*
 * The length (1 to 4) of the valid UTF-8 sequence at p (avail bytes left), or
 * 0 if none starts there: no overlong forms, no surrogates (U+D800-U+DFFF),
 * nothing above U+10FFFF (RFC 3629, and what PostgreSQL accepts as UTF8).
 */
static size_t
utf8_seq_len(const uint8_t *p, size_t avail)
{
	uint8_t		c = p[0],
				lo = 0x80,
				hi = 0xbf;
	size_t		n;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
	{
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;			/* below: overlong */
		else if (c == 0xed)
			hi = 0x9f;			/* above: surrogates */
	}
	else if (c >= 0xf0 && c <= 0xf4)
	{
		n = 4;
		if (c == 0xf0)
			lo = 0x90;			/* below: overlong */
		else if (c == 0xf4)
			hi = 0x8f;			/* above: beyond U+10FFFF */
	}
	else
		return 0;				/* 0x80-0xc1 (continuation, overlong lead), 0xf5-0xff */
	if (avail < n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	return n;
}

/* The offset of the first byte of s that is not part of valid UTF-8, or -1 if all are. */
static long
utf8_invalid_at(const uint8_t *s, size_t len)
{
	for (size_t i = 0; i < len;)
	{
		size_t		n = utf8_seq_len(s + i, len - i);

		if (n == 0)
			return (long) i;
		i += n;
	}
	return -1;
}

/*
 * The one escaping of untrusted bytes (the export's fields, a checkpoint's
 * lines) on their way to a terminal. Printable ASCII and valid UTF-8 of
 * code points U+00A0 and above pass; every other byte is written as \xNN
 * (two lowercase hex digits): bytes below 0x20, 0x7f, each of the two bytes
 * of a C1 control U+0080-U+009F (c2 80 to c2 9f), and each byte that does
 * not belong to a valid sequence (overlong, surrogate, above U+10FFFF,
 * truncated or stray). In ESC_TEXT mode '\' is written \\ and tab, newline
 * and carriage return \t, \n and \r, so that the output is unambiguous. In
 * ESC_JSON mode (the details, a JSON text) '\' stays as it is: JSON writes
 * a backslash in a string as \\ and has no \x escape, so a \x in the output
 * is always ours.
 */
#define ESC_TEXT 0
#define ESC_JSON 1

static void
fput_escaped(FILE *out, const uint8_t *s, size_t len, int mode)
{
	for (size_t i = 0; i < len;)
	{
		uint8_t		c = s[i];
		size_t		n;

		if (mode == ESC_TEXT && (c == '\\' || c == '\t' || c == '\n' || c == '\r'))
		{
			fputc('\\', out);
			fputc(c == '\\' ? '\\' : c == '\t' ? 't' : c == '\n' ? 'n' : 'r', out);
			i++;
			continue;
		}
		n = utf8_seq_len(s + i, len - i);
		if (n == 0 || c < 0x20 || c == 0x7f)
			n = 1;				/* one byte escaped; go on with the next */
		else if (!(c == 0xc2 && s[i + 1] <= 0x9f))
		{
			fwrite(s + i, 1, n, out);	/* printable ASCII, or a non-control sequence */
			i += n;
			continue;
		}
		for (size_t k = 0; k < n; k++)	/* a control, a C1 control (2 bytes), a bad byte */
			fprintf(out, "\\x%02x", s[i + k]);
		i += n;
	}
}

/*
 * fput_escaped() into a malloc'd NUL-terminated string, for messages that
 * quote untrusted bytes; NULL if out of memory.
 */
static char *
escaped_text(const void *s, size_t len)
{
	char	   *buf = NULL;
	size_t		buflen = 0;
	FILE	   *m = open_memstream(&buf, &buflen);

	if (m == NULL)
		return NULL;
	fput_escaped(m, s, len, ESC_TEXT);
	if (fclose(m) != 0)
	{
		free(buf);
		return NULL;
	}
	return buf;
}

/* True if s is valid UTF-8 without control characters (C0, DEL, C1), so safe to print as is. */
static int
utf8_printable(const uint8_t *s, size_t len)
{
	for (size_t i = 0; i < len;)
	{
		size_t		n = utf8_seq_len(s + i, len - i);

		if (n == 0 || s[i] < 0x20 || s[i] == 0x7f || (s[i] == 0xc2 && s[i + 1] <= 0x9f))
			return 0;
		i += n;
	}
	return 1;
}

/* ------------------------------------------------------------------------
 * Files
 * ------------------------------------------------------------------------
 */

/*
 * The key, a checkpoint and a proof are a few hundred bytes; a file beyond
 * this is refused (EFBIG) instead of read until memory runs out (/dev/zero).
 */
#define MAX_SMALL_FILE	(1024 * 1024)

/* Reads a whole file into a NUL-terminated malloc'd buffer; NULL (errno set) on failure. */
static char *
read_file(const char *path, size_t *lenp)
{
	FILE	   *f = fopen(path, "rb");
	char	   *buf = NULL;
	size_t		len = 0,
				cap = 0;

	if (f == NULL)
		return NULL;
	for (;;)
	{
		size_t		got;

		if (cap - len < 4096)
		{
			char	   *nb = realloc(buf, cap ? cap * 2 : 8192);

			if (nb == NULL)
			{
				free(buf);
				fclose(f);
				errno = ENOMEM;
				return NULL;
			}
			buf = nb;
			cap = cap ? cap * 2 : 8192;
		}
		got = fread(buf + len, 1, cap - len - 1, f);
		len += got;
		if (got == 0)
			break;
		if (len > MAX_SMALL_FILE)
		{
			free(buf);
			fclose(f);
			errno = EFBIG;
			return NULL;
		}
	}
	if (ferror(f))
	{
		int			saved = errno ? errno : EIO;

		free(buf);
		fclose(f);
		errno = saved;
		return NULL;
	}
	fclose(f);
	buf[len] = '\0';
	*lenp = len;
	return buf;
}

/* ------------------------------------------------------------------------
 * Verifier key: "name+hex(key id)+base64(0x01 || public key)"
 * ------------------------------------------------------------------------
 */

typedef struct VerifierKey
{
	char	   *name;
	uint8_t		id[KEY_ID_LEN];
	uint8_t		pub[ED25519_PUB_LEN];
} VerifierKey;

/* A key name or signature name: non-empty, no spaces, controls or '+'. */
static int
valid_key_name(const char *s, size_t len)
{
	if (len == 0)
		return 0;
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c <= 0x20 || c == 0x7f || c == '+')
			return 0;
	}
	return 1;
}

/* C2SP signed-note key id: first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key). */
static void
note_key_id(const char *name, size_t namelen, const uint8_t *pub, uint8_t *id)
{
	uint8_t		h[HASH_LEN];
	uint8_t		mid[2] = {'\n', ALG_ED25519};

	sha256_3(name, namelen, mid, 2, pub, ED25519_PUB_LEN, h);
	memcpy(id, h, KEY_ID_LEN);
}

/*
 * Parses a verifier key from text (len bytes, no trailing newline); on error
 * writes the reason to why and returns -1.
 */
static int
parse_verifier_key(const char *s, size_t len, VerifierKey *key, const char **why)
{
	const char *plus1 = memchr(s, '+', len);
	const char *hex,
			   *b64;
	uint8_t		data[64];
	uint8_t		id[KEY_ID_LEN];
	long		n;

	*why = NULL;
	if (plus1 == NULL)
	{
		*why = "it does not have the form name+keyid+base64key";
		return -1;
	}
	if (!valid_key_name(s, (size_t) (plus1 - s)) || !utf8_printable((const uint8_t *) s, (size_t) (plus1 - s)))
	{
		*why = "its name is empty, holds spaces or control characters, or is not valid UTF-8";
		return -1;
	}
	hex = plus1 + 1;
	if ((size_t) (hex - s) + 9 > len || hex[8] != '+')
	{
		*why = "its key id is not 8 hex digits followed by '+'";
		return -1;
	}
	for (int i = 0; i < 8; i++)
		if (hexval((unsigned char) hex[i]) < 0 || (hex[i] >= 'A' && hex[i] <= 'F'))
		{
			*why = "its key id is not 8 lowercase hex digits";
			return -1;
		}
	b64 = hex + 9;
	n = base64_decode(b64, len - (size_t) (b64 - s), data, sizeof(data));
	if (n < 0)
	{
		*why = "its key data is not valid base64";
		return -1;
	}
	if (n < 1 || data[0] != ALG_ED25519)
	{
		*why = "it is not an Ed25519 key (algorithm byte 0x01)";
		return -1;
	}
	if (n != 1 + ED25519_PUB_LEN)
	{
		*why = "its Ed25519 public key is not 32 bytes";
		return -1;
	}
	(void) hex_decode(hex, KEY_ID_LEN, key->id);
	memcpy(key->pub, data + 1, ED25519_PUB_LEN);
	note_key_id(s, (size_t) (plus1 - s), key->pub, id);
	if (memcmp(id, key->id, KEY_ID_LEN) != 0)
	{
		*why = "its key id does not match its name and public key";
		return -1;
	}
	key->name = malloc((size_t) (plus1 - s) + 1);
	if (key->name == NULL)
	{
		*why = "out of memory";
		return -1;
	}
	memcpy(key->name, s, (size_t) (plus1 - s));
	key->name[plus1 - s] = '\0';
	return 0;
}

/*
 * --key: the key itself, or a file holding it. An argument that is a key is
 * used as given and the file system is not consulted: a key is also a valid
 * relative path, and a file planted under that name in the directory the
 * auditor runs in must not replace the key typed.
 */
static int
load_key(const char *arg, VerifierKey *key)
{
	size_t		len;
	char	   *text;
	const char *why;
	int			ret;

	if (parse_verifier_key(arg, strlen(arg), key, &why) == 0)
		return 0;
	text = read_file(arg, &len);
	if (text == NULL)
	{
		int			saved = errno;

		if (strchr(arg, '+') != NULL && saved == ENOENT)
			report("verifier key \"%s\" is malformed: %s", arg, why);
		else
			report("could not read verifier key file \"%s\": %s", arg, strerror(saved));
		return -1;
	}
	/* one line, trailing whitespace (newline) allowed */
	while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
		text[--len] = '\0';
	if (memchr(text, '\n', len) != NULL)
	{
		report("verifier key file \"%s\" holds more than one line", arg);
		free(text);
		return -1;
	}
	ret = parse_verifier_key(text, len, key, &why);
	if (ret != 0)
		report("verifier key in \"%s\" is malformed: %s", arg, why);
	free(text);
	return ret;
}

/* ------------------------------------------------------------------------
 * Checkpoints: C2SP tlog-checkpoint body signed as a C2SP signed note
 * ------------------------------------------------------------------------
 */

typedef struct Checkpoint
{
	const char *path;
	char	   *text;			/* the whole file */
	size_t		body_len;		/* text[0 .. body_len) is the signed body */
	char	   *origin;
	uint64_t	size;
	uint8_t		root[HASH_LEN];
} Checkpoint;

static int
parse_size(const char *s, size_t len, uint64_t *out)
{
	uint64_t	v = 0;

	if (len == 0 || (len > 1 && s[0] == '0'))
		return -1;
	for (size_t i = 0; i < len; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return -1;
		if (v > (UINT64_C(0x7fffffffffffffff) - (uint64_t) (s[i] - '0')) / 10)
			return -1;
		v = v * 10 + (uint64_t) (s[i] - '0');
	}
	*out = v;
	return 0;
}

/* Parses the checkpoint in cp->path and checks its signature by key. */
static int
load_checkpoint(Checkpoint *cp, const VerifierKey *key, const char *what)
{
	size_t		len;
	char	   *sep,
			   *line,
			   *end,
			   *nl;
	int			lineno = 0;
	int			matched = 0;
	int			others = 0;

	cp->text = read_file(cp->path, &len);
	if (cp->text == NULL)
	{
		report("could not read %s \"%s\": %s", what, cp->path, strerror(errno));
		return -1;
	}
	if (memchr(cp->text, '\0', len) != NULL || memchr(cp->text, '\r', len) != NULL)
	{
		report("%s \"%s\" holds NUL bytes or carriage returns; a signed note is text with \\n line ends",
			   what, cp->path);
		return -1;
	}
	/* psql appends one more newline after the note's own: drop extra trailing newlines */
	while (len >= 2 && cp->text[len - 1] == '\n' && cp->text[len - 2] == '\n')
		cp->text[--len] = '\0';
	if (len == 0 || cp->text[len - 1] != '\n')
	{
		report("%s \"%s\" does not end with a newline", what, cp->path);
		return -1;
	}
	sep = strstr(cp->text, "\n\n");
	if (sep == NULL)
	{
		report("%s \"%s\" has no signatures (no blank line after the body)", what, cp->path);
		return -1;
	}
	cp->body_len = (size_t) (sep - cp->text) + 1;

	/* body: origin, size, root hash, then optional extension lines */
	for (line = cp->text; line < cp->text + cp->body_len; line = nl + 1)
	{
		size_t		ll;

		nl = memchr(line, '\n', (size_t) (cp->text + cp->body_len - line));
		ll = (size_t) (nl - line);
		lineno++;
		if (lineno == 1)
		{
			cp->origin = malloc(ll + 1);
			if (cp->origin == NULL)
			{
				report("out of memory");
				return -1;
			}
			memcpy(cp->origin, line, ll);
			cp->origin[ll] = '\0';
		}
		else if ((lineno == 2 && parse_size(line, ll, &cp->size) != 0) ||
				 (lineno == 3 && base64_decode(line, ll, cp->root, HASH_LEN) != HASH_LEN))
		{
			char	   *shown = escaped_text(line, ll);	/* not signed yet: any bytes */

			report("%s \"%s\": line %d (%s) is not %s: \"%s\"", what, cp->path, lineno,
				   lineno == 2 ? "tree size" : "root hash",
				   lineno == 2 ? "a decimal number from 0 to 9223372036854775807" : "the base64 of 32 bytes",
				   shown ? shown : "?");
			free(shown);
			return -1;
		}
	}
	if (lineno < 3)
	{
		report("%s \"%s\": the body has %d lines; a checkpoint has origin, tree size and root hash",
			   what, cp->path, lineno);
		return -1;
	}

	/* signature lines: "— name base64(key id || signature)" */
	end = cp->text + len;
	lineno = 0;
	for (line = sep + 2; line < end; line = nl + 1)
	{
		char	   *sp;
		size_t		namelen;
		uint8_t		blob[KEY_ID_LEN + ED25519_SIG_LEN + 16];
		long		n;

		nl = memchr(line, '\n', (size_t) (end - line));
		lineno++;
		if (strncmp(line, EM_DASH " ", strlen(EM_DASH " ")) != 0)
		{
			report("%s \"%s\": signature line %d does not start with an em dash (U+2014) and a space",
				   what, cp->path, lineno);
			return -1;
		}
		line += strlen(EM_DASH " ");
		sp = memchr(line, ' ', (size_t) (nl - line));
		if (sp == NULL || !valid_key_name(line, (size_t) (sp - line)))
		{
			report("%s \"%s\": signature line %d is not \"— name base64\"", what, cp->path, lineno);
			return -1;
		}
		namelen = (size_t) (sp - line);
		if (namelen != strlen(key->name) || memcmp(line, key->name, namelen) != 0)
		{
			others++;			/* another key's signature (of any length): ignored, as C2SP says */
			continue;
		}
		n = base64_decode(sp + 1, (size_t) (nl - sp - 1), blob, sizeof(blob));
		if (n < KEY_ID_LEN + 1)
		{
			report("%s \"%s\": signature line %d does not hold base64 of a key id and a signature",
				   what, cp->path, lineno);
			return -1;
		}
		if (memcmp(blob, key->id, KEY_ID_LEN) != 0)
		{
			others++;			/* the same name, another key: ignored */
			continue;
		}
		if (matched++)
		{
			report("%s \"%s\" has more than one signature by key %s", what, cp->path, key->name);
			return -1;
		}
		if (n != KEY_ID_LEN + ED25519_SIG_LEN)
		{
			report("%s \"%s\": the signature by key %s is %ld bytes, not an Ed25519 signature (64)",
				   what, cp->path, key->name, n - KEY_ID_LEN);
			return -1;
		}
		if (!ed25519_verify(key->pub, (const uint8_t *) cp->text, cp->body_len, blob + KEY_ID_LEN))
		{
			report("%s \"%s\": the signature by key %s does not verify: the checkpoint was altered or "
				   "signed by another key", what, cp->path, key->name);
			return -1;
		}
	}
	if (!matched)
	{
		char		idhex[2 * KEY_ID_LEN + 1];

		hex_encode(key->id, KEY_ID_LEN, idhex);
		report("%s \"%s\" has no signature by key %s+%s (%d signature%s by other keys)",
			   what, cp->path, key->name, idhex, others, others == 1 ? "" : "s");
		return -1;
	}

	/*
	 * The signature covers the body, not the name it was made under: a
	 * checkpoint of another log signed with the same private key (one key
	 * file serves every database of a server) would verify. fintx names each
	 * log's key after the log's origin, so the two must be equal.
	 */
	if (strcmp(cp->origin, key->name) != 0)
	{
		char	   *shown = escaped_text(cp->origin, strlen(cp->origin));

		report("%s \"%s\" is of log \"%s\", not of log \"%s\" that the verifier key names",
			   what, cp->path, shown ? shown : "?", key->name);
		free(shown);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * RFC 6962 tree head, built leaf by leaf (a stack of complete subtrees)
 * ------------------------------------------------------------------------
 */

typedef struct TreeBuilder
{
	uint8_t		hash[64][HASH_LEN];
	uint64_t	size[64];
	int			depth;
	uint64_t	n;
} TreeBuilder;

static void
tree_add(TreeBuilder *t, const uint8_t *leaf)
{
	memcpy(t->hash[t->depth], leaf, HASH_LEN);
	t->size[t->depth] = 1;
	t->depth++;
	while (t->depth >= 2 && t->size[t->depth - 1] == t->size[t->depth - 2])
	{
		node_hash(t->hash[t->depth - 2], t->hash[t->depth - 1], t->hash[t->depth - 2]);
		t->size[t->depth - 2] *= 2;
		t->depth--;
	}
	t->n++;
}

/* MTH of the leaves added so far; the empty tree's head is SHA-256(""). */
static void
tree_root(const TreeBuilder *t, uint8_t *out)
{
	if (t->depth == 0)
	{
		sha256_3("", 0, NULL, 0, NULL, 0, out);
		return;
	}
	memcpy(out, t->hash[t->depth - 1], HASH_LEN);
	for (int i = t->depth - 2; i >= 0; i--)
		node_hash(t->hash[i], out, out);
}

/* ------------------------------------------------------------------------
 * RFC 9162 section 2.1.4.2: verifying a consistency proof
 * ------------------------------------------------------------------------
 */

/* Returns NULL if the proof shows that (m, first) is a prefix of (n, second), else why not. */
static const char *
verify_consistency(uint64_t m, const uint8_t *first, uint64_t n, const uint8_t *second,
				   const uint8_t *proof, size_t count)
{
	uint64_t	fn,
				sn;
	uint8_t		fr[HASH_LEN],
				sr[HASH_LEN];
	size_t		i = 0;

	if (m > n)
		return "the first tree is larger than the second";
	if (m == n)
	{
		if (count != 0)
			return "a proof between equal sizes must be empty";
		return memcmp(first, second, HASH_LEN) == 0 ? NULL : "equal sizes but different roots";
	}
	if (m == 0)
		return count == 0 ? NULL : "a proof from the empty tree must be empty";
	if (count == 0)
		return "the proof is empty";
	/* step 1: a power-of-two first tree is itself the first node of the path */
	if ((m & (m - 1)) == 0)
	{
		memcpy(fr, first, HASH_LEN);
		memcpy(sr, first, HASH_LEN);
	}
	else
	{
		memcpy(fr, proof, HASH_LEN);
		memcpy(sr, proof, HASH_LEN);
		i = 1;
	}
	fn = m - 1;
	sn = n - 1;
	while (fn & 1)
	{
		fn >>= 1;
		sn >>= 1;
	}
	for (; i < count; i++)
	{
		const uint8_t *c = proof + i * HASH_LEN;

		if (sn == 0)
			return "the proof has more hashes than the tree sizes allow";
		if ((fn & 1) || fn == sn)
		{
			node_hash(c, fr, fr);
			node_hash(c, sr, sr);
			if (!(fn & 1))
				while (!(fn & 1) && fn != 0)
				{
					fn >>= 1;
					sn >>= 1;
				}
		}
		else
			node_hash(sr, c, sr);
		fn >>= 1;
		sn >>= 1;
	}
	if (sn != 0)
		return "the proof has fewer hashes than the tree sizes need";
	if (memcmp(fr, first, HASH_LEN) != 0)
		return "it does not reproduce the previous checkpoint's root";
	if (memcmp(sr, second, HASH_LEN) != 0)
		return "it does not reproduce the checkpoint's root";
	return NULL;
}

/* Reads a proof file: one hex hash per line ("\x" prefix and blank lines allowed). */
static int
load_proof(const char *path, uint8_t **proof, size_t *count)
{
	size_t		len,
				cap = 0;
	char	   *text = read_file(path, &len);
	char	   *line,
			   *nl;
	int			lineno = 0;

	*proof = NULL;
	*count = 0;
	if (text == NULL)
	{
		report("could not read consistency proof \"%s\": %s", path, strerror(errno));
		return -1;
	}
	for (line = text; line < text + len; line = nl + 1)
	{
		size_t		ll;

		nl = memchr(line, '\n', (size_t) (text + len - line));
		if (nl == NULL)
			nl = text + len;
		ll = (size_t) (nl - line);
		lineno++;
		if (ll > 0 && line[ll - 1] == '\r')
			ll--;
		if (ll == 0)
			continue;
		if (ll >= 2 && line[0] == '\\' && line[1] == 'x')
			line += 2, ll -= 2;
		if (*count == cap)
		{
			uint8_t    *np = realloc(*proof, (cap ? cap * 2 : 64) * HASH_LEN);

			if (np == NULL)
			{
				report("out of memory");
				free(text);
				return -1;
			}
			*proof = np;
			cap = cap ? cap * 2 : 64;
		}
		if (ll != 2 * HASH_LEN || hex_decode(line, HASH_LEN, *proof + *count * HASH_LEN) >= 0)
		{
			report("consistency proof \"%s\": line %d is not a 32-byte hash in hex", path, lineno);
			free(text);
			return -1;
		}
		(*count)++;
	}
	free(text);
	return 0;
}

/* ------------------------------------------------------------------------
 * Entries: canonical bytes (docs/audit-format.md)
 * ------------------------------------------------------------------------
 */

typedef struct Span
{
	const uint8_t *p;
	uint32_t	len;
} Span;

typedef struct Entry
{
	int64_t		entry_id;
	int64_t		recorded_at;	/* microseconds since 1970-01-01 00:00:00 UTC */
	Span		actor,
				session_role,
				action,
				object_type,
				object_id,
				details;
} Entry;

static uint64_t
be64(const uint8_t *p)
{
	uint64_t	v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* JSON in the form PostgreSQL's jsonb output function produces. */
typedef struct Json
{
	const uint8_t *p;
	size_t		len;
	size_t		pos;
	const char *err;
} Json;


static int
json_fail(Json *j, const char *err)
{
	if (j->err == NULL)
		j->err = err;
	return -1;
}

static int
json_lit(Json *j, const char *lit)
{
	size_t		n = strlen(lit);

	if (j->len - j->pos < n || memcmp(j->p + j->pos, lit, n) != 0)
		return json_fail(j, "invalid literal");
	j->pos += n;
	return 0;
}

/*
 * A string as escape_json() writes it: \" \\ \b \f \n \r \t, other characters
 * below 0x20 as \u00xx (lowercase hex), everything else literally. Writes the
 * unescaped bytes to out (room for the escaped length) when out is not NULL.
 */
static int
json_string(Json *j, uint8_t *out, size_t *outlen)
{
	size_t		o = 0;

	j->pos++;					/* opening quote */
	for (;;)
	{
		uint8_t		c;

		if (j->pos >= j->len)
			return json_fail(j, "unterminated string");
		c = j->p[j->pos++];
		if (c == '"')
			break;
		if (c < 0x20)
			return json_fail(j, "unescaped control character in a string");
		if (c == '\\')
		{
			uint8_t		e;

			if (j->pos >= j->len)
				return json_fail(j, "unterminated escape");
			e = j->p[j->pos++];
			switch (e)
			{
				case '"':
				case '\\':
					c = e;
					break;
				case 'b':
					c = '\b';
					break;
				case 'f':
					c = '\f';
					break;
				case 'n':
					c = '\n';
					break;
				case 'r':
					c = '\r';
					break;
				case 't':
					c = '\t';
					break;
				case 'u':
					{
						int			v = 0;

						if (j->len - j->pos < 4)
							return json_fail(j, "short \\u escape");
						for (int k = 0; k < 4; k++)
						{
							uint8_t		h = j->p[j->pos + k];

							if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f')))
								return json_fail(j, "\\u escape is not 4 lowercase hex digits");
							v = v * 16 + hexval(h);
						}
						j->pos += 4;
						if (v == 0 || v >= 0x20 || v == '\b' || v == '\f' || v == '\n' || v == '\r' || v == '\t')
							return json_fail(j, "\\u escape that jsonb output never writes");
						c = (uint8_t) v;
						break;
					}
				default:
					return json_fail(j, "invalid or non-canonical escape in a string");
			}
		}
		if (out)
			out[o++] = c;
	}
	if (outlen)
		*outlen = o;
	return 0;
}

/*
 * A number as numeric_out() writes it: -?(0|[1-9][0-9]*)(\.[0-9]+)?, no
 * exponent, and no negative zero (numeric has none: -0.00 is stored and
 * printed as 0.00).
 */
static int
json_number(Json *j)
{
	size_t		begin = j->pos,
				start;
	int			negative = 0,
				nonzero = 0;

	if (j->p[j->pos] == '-')
	{
		negative = 1;
		j->pos++;
	}
	start = j->pos;
	while (j->pos < j->len && j->p[j->pos] >= '0' && j->p[j->pos] <= '9')
		nonzero |= j->p[j->pos++] != '0';
	if (j->pos == start)
		return json_fail(j, "invalid number");
	if (j->pos - start > 1 && j->p[start] == '0')
		return json_fail(j, "number with a leading zero");
	if (j->pos < j->len && j->p[j->pos] == '.')
	{
		j->pos++;
		start = j->pos;
		while (j->pos < j->len && j->p[j->pos] >= '0' && j->p[j->pos] <= '9')
			nonzero |= j->p[j->pos++] != '0';
		if (j->pos == start)
			return json_fail(j, "invalid number");
	}
	if (j->pos < j->len && (j->p[j->pos] == 'e' || j->p[j->pos] == 'E'))
		return json_fail(j, "number with an exponent (jsonb writes plain decimals)");
	if (negative && !nonzero)
	{
		j->pos = begin;
		return json_fail(j, "negative zero (jsonb writes it without the sign)");
	}
	return 0;
}

static int
json_sep(Json *j, const char *sep)
{
	size_t		n = strlen(sep);

	if (j->len - j->pos < n || memcmp(j->p + j->pos, sep, n) != 0)
		return json_fail(j, sep[0] == ':' ? "expected \": \" after a key" : "expected \", \" or the end of a container");
	j->pos += n;
	return 0;
}

/* An open container while validating: an array, or an object with its last key. */
typedef struct JsonFrame
{
	int			object;
	uint8_t    *prev;			/* the object's last key (unescaped), NULL before the first */
	size_t		prevlen;
} JsonFrame;

/*
 * A scalar at j->pos (a string, a literal or a number); the caller has
 * checked that a byte is there.
 */
static int
json_scalar(Json *j)
{
	switch (j->p[j->pos])
	{
		case '"':
			return json_string(j, NULL, NULL);
		case 't':
			return json_lit(j, "true");
		case 'f':
			return json_lit(j, "false");
		case 'n':
			return json_lit(j, "null");
		default:
			if (j->p[j->pos] == '-' || (j->p[j->pos] >= '0' && j->p[j->pos] <= '9'))
				return json_number(j);
			return json_fail(j, "unexpected character");
	}
}

/*
 * One JSON value as jsonb's output function writes it; object keys unique and
 * sorted by length, then bytewise, as jsonb stores them. Iterative, with the
 * open containers on the heap: jsonb nests as deep as the server's
 * max_stack_depth lets it (tens of thousands of levels), so the verifier
 * must not run out of its own stack on a document the server accepted.
 */
static int
json_value(Json *j)
{
	JsonFrame  *st = NULL;
	size_t		n = 0,
				cap = 0;
	int			ret = -1;

value:
	if (j->pos >= j->len)
	{
		json_fail(j, "unexpected end");
		goto done;
	}
	if (j->p[j->pos] == '{' || j->p[j->pos] == '[')
	{
		int			object = j->p[j->pos] == '{';

		j->pos++;
		if (j->pos < j->len && j->p[j->pos] == (object ? '}' : ']'))
		{
			j->pos++;
			goto after_value;
		}
		if (n == cap)
		{
			size_t		ncap = cap ? cap * 2 : 16;
			JsonFrame  *ns = realloc(st, ncap * sizeof(JsonFrame));

			if (ns == NULL)
			{
				json_fail(j, "out of memory");
				goto done;
			}
			st = ns;
			cap = ncap;
		}
		st[n].object = object;
		st[n].prev = NULL;
		st[n].prevlen = 0;
		n++;
		if (object)
			goto key;
		goto value;
	}
	if (json_scalar(j) != 0)
		goto done;

after_value:
	if (n == 0)
	{
		ret = 0;
		goto done;
	}
	if (j->pos < j->len && j->p[j->pos] == (st[n - 1].object ? '}' : ']'))
	{
		j->pos++;
		free(st[n - 1].prev);
		n--;
		goto after_value;
	}
	if (json_sep(j, ", ") != 0)
		goto done;
	if (!st[n - 1].object)
		goto value;

key:
	{
		JsonFrame  *f = &st[n - 1];
		size_t		start = j->pos,
					curlen;
		uint8_t    *cur;

		if (j->pos >= j->len || j->p[j->pos] != '"')
		{
			json_fail(j, "expected a string key");
			goto done;
		}
		/* the unescaped key is never longer than its escaped form */
		{
			Json		probe = *j;

			if (json_string(&probe, NULL, NULL) != 0)
			{
				j->pos = probe.pos;
				json_fail(j, probe.err);
				goto done;
			}
			cur = malloc(probe.pos - start + 1);
			if (cur == NULL)
			{
				json_fail(j, "out of memory");
				goto done;
			}
		}
		(void) json_string(j, cur, &curlen);
		if (f->prev != NULL)
		{
			/* prev versus cur: must be strictly smaller */
			int			cmp = f->prevlen != curlen ? (f->prevlen < curlen ? -1 : 1) : memcmp(f->prev, cur, curlen);

			if (cmp >= 0)
			{
				free(cur);
				j->pos = start;
				json_fail(j, cmp == 0 ? "duplicate object key"
						  : "object keys not in jsonb order (by length, then bytewise)");
				goto done;
			}
		}
		free(f->prev);
		f->prev = cur;
		f->prevlen = curlen;
		if (json_sep(j, ": ") != 0)
			goto done;
		goto value;
	}

done:
	while (n > 0)
		free(st[--n].prev);
	free(st);
	return ret;
}

/*
 * Decodes canonical bytes into e; on error writes a message to err (errlen
 * bytes) and returns -1.
 */
static int
decode_entry(const uint8_t *b, size_t len, Entry *e, char *err, size_t errlen)
{
	static const char order[] = "itascokd";	/* the field tags, in order */
	static const char *const names[] = {"entry_id", "recorded_at", "actor", "session_role", "action",
	"object_type", "object_id", "details"};
	size_t		pos = strlen(ENTRY_MAGIC);
	Span	   *spans[] = {NULL, NULL, &e->actor, &e->session_role, &e->action, &e->object_type,
	&e->object_id, &e->details};

	if (len < pos || memcmp(b, ENTRY_MAGIC, pos) != 0)
	{
		snprintf(err, errlen, "it does not start with \"%s\"", ENTRY_MAGIC);
		return -1;
	}
	for (int f = 0; f < 8; f++)
	{
		uint32_t	flen;

		if (len - pos < 5)
		{
			snprintf(err, errlen, "it ends at byte %zu, before field '%c' (%s)", pos, order[f], names[f]);
			return -1;
		}
		if (b[pos] != (uint8_t) order[f])
		{
			snprintf(err, errlen, "byte %zu is tag 0x%02x where field '%c' (%s) belongs", pos, b[pos],
					 order[f], names[f]);
			return -1;
		}
		flen = (uint32_t) b[pos + 1] << 24 | (uint32_t) b[pos + 2] << 16 | (uint32_t) b[pos + 3] << 8 | b[pos + 4];
		pos += 5;
		if (flen > len - pos)
		{
			snprintf(err, errlen, "field '%c' (%s) claims %" PRIu32 " bytes but only %zu follow",
					 order[f], names[f], flen, len - pos);
			return -1;
		}
		if (f < 2)
		{
			if (flen != 8)
			{
				snprintf(err, errlen, "field '%c' (%s) is %" PRIu32 " bytes, not 8", order[f], names[f], flen);
				return -1;
			}
			if (f == 0)
				e->entry_id = (int64_t) be64(b + pos);
			else
				e->recorded_at = (int64_t) be64(b + pos);
		}
		else
		{
			long		bad;

			spans[f]->p = b + pos;
			spans[f]->len = flen;
			if (memchr(b + pos, '\0', flen) != NULL)
			{
				snprintf(err, errlen, "field '%c' (%s) holds a NUL byte", order[f], names[f]);
				return -1;
			}
			/* fintx writes text as UTF-8 (docs/audit-format.md): the database must be UTF8 */
			if ((bad = utf8_invalid_at(b + pos, flen)) >= 0)
			{
				snprintf(err, errlen, "field '%c' (%s) is not valid UTF-8: byte %ld (0x%02x) of the field "
						 "starts no valid sequence (overlong, surrogate, above U+10FFFF, truncated or stray)",
						 order[f], names[f], bad, b[pos + (size_t) bad]);
				return -1;
			}
		}
		pos += flen;
	}
	if (pos != len)
	{
		snprintf(err, errlen, "%zu bytes follow the last field", len - pos);
		return -1;
	}
	{
		Json		j = {e->details.p, e->details.len, 0, NULL};

		if (json_value(&j) != 0 || (j.pos != j.len && json_fail(&j, "text after the JSON value")))
		{
			snprintf(err, errlen, "field 'd' (details) is not jsonb output: %s at byte %zu of the details",
					 j.err, j.pos);
			return -1;
		}
	}
	return 0;
}

/* Writes a string field for --print, escaped (fput_escaped). */
static void
print_text(FILE *out, const Span *s)
{
	fput_escaped(out, s->p, s->len, ESC_TEXT);
}

/* Microseconds since the Unix epoch as ISO 8601 UTC. */
static void
format_time(int64_t usec, char *buf, size_t buflen)
{
	int64_t		secs = usec / 1000000;
	int64_t		frac = usec % 1000000;
	time_t		t;
	struct tm	tm;

	if (frac < 0)
	{
		frac += 1000000;
		secs--;
	}
	t = (time_t) secs;
	if (gmtime_r(&t, &tm) == NULL)
	{
		snprintf(buf, buflen, "@%" PRId64 "us", usec);
		return;
	}
	snprintf(buf, buflen, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900, tm.tm_mon + 1,
			 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int) frac);
}

static void
print_entry(FILE *out, uint64_t leaf, const Entry *e)
{
	char		ts[64];

	format_time(e->recorded_at, ts, sizeof(ts));
	fprintf(out, "%" PRIu64 "\t%" PRId64 "\t%s\t", leaf, e->entry_id, ts);
	print_text(out, &e->actor);
	fputc('\t', out);
	print_text(out, &e->session_role);
	fputc('\t', out);
	print_text(out, &e->action);
	fputc('\t', out);
	print_text(out, &e->object_type);
	fputc('\t', out);
	print_text(out, &e->object_id);
	/* details as JSON text: jsonb escapes C0 controls itself but not DEL or C1 controls */
	fputc('\t', out);
	fput_escaped(out, e->details.p, e->details.len, ESC_JSON);
	fputc('\n', out);
}

/* ------------------------------------------------------------------------
 * The export
 * ------------------------------------------------------------------------
 */

typedef struct IdLeaf
{
	int64_t		id;
	uint64_t	leaf;
} IdLeaf;

static int
cmp_idleaf(const void *a, const void *b)
{
	const IdLeaf *x = a,
			   *y = b;

	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return x->leaf < y->leaf ? -1 : (x->leaf > y->leaf);
}

typedef struct ExportResult
{
	uint64_t	leaves;			/* lines read */
	uint8_t		root_at_size[HASH_LEN]; /* MTH of the first cp size leaves */
	uint8_t		root_at_prev[HASH_LEN]; /* MTH of the first previous-size leaves */
} ExportResult;

/*
 * Reads the export, checks every line and entry, and computes the tree heads
 * at the checkpoint's size and (if prev_size >= 0) at the previous size.
 */
static int
read_export(const char *path, uint64_t size, int64_t prev_size, int print, ExportResult *res)
{
	FILE	   *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	char	   *line = NULL;
	size_t		linecap = 0;
	ssize_t		got;
	uint8_t    *bytes = NULL;
	size_t		bytescap = 0;
	TreeBuilder *tree = calloc(1, sizeof(TreeBuilder));
	IdLeaf	   *ids = NULL;
	size_t		idscap = 0;
	uint64_t	n = 0;
	int			ret = -1;
	char		err[256];

	if (f == NULL)
	{
		report("could not read export \"%s\": %s", path, strerror(errno));
		free(tree);
		return -1;
	}
	if (tree == NULL)
	{
		report("out of memory");
		goto done;
	}
	if (prev_size == 0)
		tree_root(tree, res->root_at_prev);
	if (size == 0)
		tree_root(tree, res->root_at_size);
	errno = 0;
	while ((got = getline(&line, &linecap, f)) != -1)
	{
		size_t		ll = (size_t) got;
		char	   *p,
				   *hex;
		size_t		hexlen;
		uint64_t	idx = 0;
		Entry		e;
		uint8_t		h[HASH_LEN];

		/* LF or CR LF ends a line; the last line may end without one (but not in a lone CR) */
		if (ll > 0 && line[ll - 1] == '\n')
		{
			ll--;
			if (ll > 0 && line[ll - 1] == '\r')
				ll--;
		}
		line[ll] = '\0';
		/* leaf index, then a tab (or "\t", as COPY TO writes a tab inside a text column) */
		for (p = line; *p >= '0' && *p <= '9'; p++)
		{
			if (idx > (UINT64_C(0x7fffffffffffffff) - (uint64_t) (*p - '0')) / 10)
				break;
			idx = idx * 10 + (uint64_t) (*p - '0');
		}
		if (p == line || (p > line + 1 && line[0] == '0') || (*p >= '0' && *p <= '9'))
		{
			report("export line %" PRIu64 ": does not start with a leaf index", n + 1);
			goto done;
		}
		if (*p == '\t')
			hex = p + 1;
		else if (p[0] == '\\' && p[1] == 't')
			hex = p + 2;
		else
		{
			report("export line %" PRIu64 ": no tab after the leaf index", n + 1);
			goto done;
		}
		if (idx != n)
		{
			if (idx > n)
				report("export line %" PRIu64 ": leaf %" PRIu64 " is missing (the line holds leaf %" PRIu64
					   "): lines were removed or reordered; leaf indexes must run 0, 1, 2, ... without gaps",
					   n + 1, n, idx);
			else
				report("export line %" PRIu64 ": leaf %" PRIu64 " where leaf %" PRIu64 " belongs: "
					   "lines were repeated or reordered", n + 1, idx, n);
			goto done;
		}
		hexlen = ll - (size_t) (hex - line);
		for (size_t i = 0; i < hexlen; i++)
			if (!isxdigit((unsigned char) hex[i]))
			{
				report("leaf %" PRIu64 ": byte 0x%02x at position %zu of its hex digits is not a hex digit "
					   "(a stray space, carriage return or other byte in the line)", idx, (unsigned char) hex[i], i);
				goto done;
			}
		if (hexlen % 2 != 0)
		{
			report("leaf %" PRIu64 ": odd number of hex digits (%zu)", idx, hexlen);
			goto done;
		}
		if (hexlen / 2 > bytescap)
		{
			uint8_t    *nb = realloc(bytes, hexlen / 2);

			if (nb == NULL)
			{
				report("out of memory");
				goto done;
			}
			bytes = nb;
			bytescap = hexlen / 2;
		}
		(void) hex_decode(hex, hexlen / 2, bytes);	/* every byte is a hex digit (checked above) */
		if (decode_entry(bytes, hexlen / 2, &e, err, sizeof(err)) != 0)
		{
			report("leaf %" PRIu64 ": malformed entry: %s", idx, err);
			goto done;
		}
		if (print && idx < size)	/* only what the checkpoint covers */
			print_entry(stdout, idx, &e);
		if (n == idscap)
		{
			IdLeaf	   *ni = realloc(ids, (idscap ? idscap * 2 : 1024) * sizeof(IdLeaf));

			if (ni == NULL)
			{
				report("out of memory");
				goto done;
			}
			ids = ni;
			idscap = idscap ? idscap * 2 : 1024;
		}
		ids[n].id = e.entry_id;
		ids[n].leaf = idx;
		if (idx < size)
		{
			leaf_hash(bytes, hexlen / 2, h);
			tree_add(tree, h);
			if (idx + 1 == size)
				tree_root(tree, res->root_at_size);
			if (prev_size > 0 && idx + 1 == (uint64_t) prev_size)
				tree_root(tree, res->root_at_prev);
		}
		n++;
		errno = 0;
	}
	/* getline() fails without setting the error flag when memory runs out */
	if (ferror(f) || !feof(f))
	{
		report("could not read export \"%s\": %s", path, strerror(errno ? errno : EIO));
		goto done;
	}
	/* every leaf holds a different entry */
	if (n > 1)
	{
		qsort(ids, n, sizeof(IdLeaf), cmp_idleaf);
		for (uint64_t i = 1; i < n; i++)
			if (ids[i].id == ids[i - 1].id)
			{
				report("leaves %" PRIu64 " and %" PRIu64 " hold the same entry (entry_id %" PRId64 ")",
					   ids[i - 1].leaf, ids[i].leaf, ids[i].id);
				goto done;
			}
	}
	res->leaves = n;
	ret = 0;
done:
	if (f != stdin)
		fclose(f);
	free(line);
	free(bytes);
	free(tree);
	free(ids);
	return ret;
}

/* ------------------------------------------------------------------------
 * main
 * ------------------------------------------------------------------------
 */

typedef struct Options
{
	const char *export_path;
	const char *checkpoint_path;
	const char *key;
	const char *previous_path;
	const char *proof_path;
	int			print;
} Options;

/* Parses argv; returns 0, or EXIT_USAGE after a message, or -1 for --help. */
static int
parse_args(int argc, char **argv, Options *o)
{
	static const struct
	{
		const char *name;
		size_t		offset;
	}			opts[] = {
		{"--export", offsetof(Options, export_path)},
		{"--checkpoint", offsetof(Options, checkpoint_path)},
		{"--key", offsetof(Options, key)},
		{"--previous-checkpoint", offsetof(Options, previous_path)},
		{"--consistency-proof", offsetof(Options, proof_path)},
	};

	memset(o, 0, sizeof(*o));
	for (int i = 1; i < argc; i++)
	{
		const char *a = argv[i];
		int			found = 0;

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
			return -1;
		if (strcmp(a, "--print") == 0)
		{
			o->print = 1;
			continue;
		}
		for (size_t k = 0; k < sizeof(opts) / sizeof(opts[0]); k++)
		{
			size_t		nl = strlen(opts[k].name);
			const char **slot = (const char **) ((char *) o + opts[k].offset);
			const char *val;

			if (strncmp(a, opts[k].name, nl) != 0 || (a[nl] != '\0' && a[nl] != '='))
				continue;
			if (a[nl] == '=')
				val = a + nl + 1;
			else if (i + 1 < argc)
				val = argv[++i];
			else
			{
				fprintf(stderr, "%s: option %s needs a value\n", progname, opts[k].name);
				return EXIT_USAGE;
			}
			if (*slot != NULL)
			{
				fprintf(stderr, "%s: option %s given twice\n", progname, opts[k].name);
				return EXIT_USAGE;
			}
			if (val[0] == '\0')
			{
				fprintf(stderr, "%s: option %s needs a non-empty value\n", progname, opts[k].name);
				return EXIT_USAGE;
			}
			*slot = val;
			found = 1;
			break;
		}
		if (!found)
		{
			fprintf(stderr, "%s: unknown argument \"%s\"\n", progname, a);
			return EXIT_USAGE;
		}
	}
	if (!o->export_path || !o->checkpoint_path || !o->key)
	{
		fprintf(stderr, "%s: --export, --checkpoint and --key are required\n", progname);
		return EXIT_USAGE;
	}
	if (o->proof_path && !o->previous_path)
	{
		fprintf(stderr, "%s: --consistency-proof needs --previous-checkpoint\n", progname);
		return EXIT_USAGE;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	Options		o;
	VerifierKey key = {0};
	Checkpoint	cp = {0},
				prev = {0};
	ExportResult res;
	uint8_t    *proof = NULL;
	size_t		proof_len = 0;
	char		b64[64];
	int			status = EXIT_FAILED;
	int			r;

	r = parse_args(argc, argv, &o);
	if (r == -1)
	{
		usage(stdout);
		return EXIT_VERIFIED;
	}
	if (r != 0)
	{
		fprintf(stderr, "Try \"%s --help\" for more information.\n", progname);
		return r;
	}
	if (crypto_init() != 0)
		goto done;
	memset(&res, 0, sizeof(res));
	if (load_key(o.key, &key) != 0)
		goto done;
	cp.path = o.checkpoint_path;
	if (load_checkpoint(&cp, &key, "checkpoint") != 0)
		goto done;
	if (o.previous_path)
	{
		const char *why;

		prev.path = o.previous_path;
		if (load_checkpoint(&prev, &key, "previous checkpoint") != 0)
			goto done;
		if (strcmp(prev.origin, cp.origin) != 0)
		{
			report("the previous checkpoint is of log \"%s\", the checkpoint of log \"%s\"", prev.origin,
				   cp.origin);
			goto done;
		}
		if (prev.size > cp.size)
		{
			report("the previous checkpoint has tree size %" PRIu64 ", more than the checkpoint's %" PRIu64
				   ": the log lost entries", prev.size, cp.size);
			goto done;
		}
		if (o.proof_path)
		{
			if (load_proof(o.proof_path, &proof, &proof_len) != 0)
				goto done;
			why = verify_consistency(prev.size, prev.root, cp.size, cp.root, proof, proof_len);
			if (why)
			{
				report("the consistency proof from tree size %" PRIu64 " to %" PRIu64 " (%zu hashes) does not "
					   "verify: %s", prev.size, cp.size, proof_len, why);
				goto done;
			}
		}
	}
	if (read_export(o.export_path, cp.size, o.previous_path ? (int64_t) prev.size : -1, o.print, &res) != 0)
		goto done;
	if (res.leaves < cp.size)
	{
		if (cp.size - res.leaves == 1)
			report("the export has %" PRIu64 " leaves but the checkpoint covers %" PRIu64 ": leaf %" PRIu64
				   " is missing", res.leaves, cp.size, res.leaves);
		else
			report("the export has %" PRIu64 " leaves but the checkpoint covers %" PRIu64 ": leaves %" PRIu64
				   " to %" PRIu64 " are missing", res.leaves, cp.size, res.leaves, cp.size - 1);
		goto done;
	}
	if (o.previous_path && memcmp(res.root_at_prev, prev.root, HASH_LEN) != 0)
	{
		base64_encode(res.root_at_prev, HASH_LEN, b64);
		report("the first %" PRIu64 " leaves of the export hash to %s, not to the root of the previous "
			   "checkpoint: an entry before leaf %" PRIu64 " was changed, removed, added or moved",
			   prev.size, b64, prev.size);
		goto done;
	}
	if (memcmp(res.root_at_size, cp.root, HASH_LEN) != 0)
	{
		char		want[64];

		base64_encode(res.root_at_size, HASH_LEN, b64);
		base64_encode(cp.root, HASH_LEN, want);
		if (o.previous_path)
			report("tree head mismatch: the first %" PRIu64 " leaves of the export hash to %s, the checkpoint "
				   "says %s: an entry from leaf %" PRIu64 " on was changed, removed, added or moved "
				   "(the first %" PRIu64 " leaves match the previous checkpoint)",
				   cp.size, b64, want, prev.size, prev.size);
		else
			report("tree head mismatch: the first %" PRIu64 " leaves of the export hash to %s, the checkpoint "
				   "says %s: an entry was changed, removed, added or moved (one tree head cannot tell which; "
				   "--previous-checkpoint with an older checkpoint narrows it down)", cp.size, b64, want);
		goto done;
	}

	base64_encode(cp.root, HASH_LEN, b64);
	{
		char		idhex[2 * KEY_ID_LEN + 1];

		hex_encode(key.id, KEY_ID_LEN, idhex);
		printf("OK: %" PRIu64 " leaves verified against checkpoint %s size %" PRIu64 " root %s signed by %s+%s",
			   cp.size, cp.origin, cp.size, b64, key.name, idhex);
	}
	if (o.previous_path)
		printf("; previous checkpoint size %" PRIu64 " is a prefix%s", prev.size,
			   o.proof_path ? " (consistency proof verified)" : "");
	if (res.leaves > cp.size)
		printf("; %" PRIu64 " more exported leaves decoded but not covered by the checkpoint",
			   res.leaves - cp.size);
	printf("\n");
	status = EXIT_VERIFIED;
done:
	free(key.name);
	free(cp.text);
	free(cp.origin);
	free(prev.text);
	free(prev.origin);
	free(proof);
	crypto_done();
	if (fflush(stdout) != 0)
	{
		report("could not write output: %s", strerror(errno));
		status = EXIT_FAILED;
	}
	return status;
}
