/*-------------------------------------------------------------------------
 * crypto.c
 *	  Thin wrappers over OpenSSL libcrypto.
 *-------------------------------------------------------------------------
 */
#include "fintx.h"

#include <openssl/evp.h>

/* Computes SHA-256 of data into out (32 bytes); emits an error if libcrypto fails. */
void
fintx_sha256(const unsigned char *data, size_t len, uint8 *out)
{
	unsigned int outlen = 0;

	if (EVP_Digest(data, len, out, &outlen, EVP_sha256(), NULL) != 1 || outlen != 32)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute SHA-256 digest")));
}
