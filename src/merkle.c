/*-------------------------------------------------------------------------
 * merkle.c
 *	  RFC 6962 Merkle tree hashes and RFC 9162 proofs.
 *
 * Trees are never materialised: every hash is computed from complete
 * subtrees (perfect, aligned ranges of 2^level leaves), which the audit log
 * stores once all their leaves exist. Any range [start, start + size) that
 * occurs in RFC 9162's recursive definitions decomposes into O(log n) such
 * subtrees, so roots and proofs cost O(log n) fetches (O(log^2 n) worst).
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fintx.h"
#include "merkle.h"
#include "miscadmin.h"


/* Leaf hash: SHA-256(0x00 || data). */
void
merkle_leaf_hash(const uint8 *data, size_t len, uint8 *out)
{
	static const uint8 prefix = 0x00;

	fintx_sha256_2(&prefix, 1, data, len, out);
}

/* Interior node hash: SHA-256(0x01 || left || right). */
void
merkle_node_hash(const uint8 *left, const uint8 *right, uint8 *out)
{
	uint8		buf[1 + 2 * MERKLE_HASH_LEN];

	buf[0] = 0x01;
	memcpy(buf + 1, left, MERKLE_HASH_LEN);
	memcpy(buf + 1 + MERKLE_HASH_LEN, right, MERKLE_HASH_LEN);
	fintx_sha256(buf, sizeof(buf), out);
}

/*
 * Folds count (a power of two) consecutive hashes into the hash of the
 * complete subtree they are the leaves of, in place: the result is hashes[0].
 */
void
merkle_fold(uint8 *hashes, int64 count)
{
	for (int64 n = count; n > 1; n /= 2)
		for (int64 i = 0; i < n / 2; i++)
			merkle_node_hash(hashes + 2 * i * MERKLE_HASH_LEN, hashes + (2 * i + 1) * MERKLE_HASH_LEN,
							 hashes + i * MERKLE_HASH_LEN);
}

/* Root of the empty tree: SHA-256 of the empty string. */
void
merkle_empty_root(uint8 *out)
{
	fintx_sha256((const unsigned char *) "", 0, out);
}

/* Largest power of two strictly below n (n >= 2). */
int64
merkle_largest_pow2_below(int64 n)
{
	int64		k = 1;

	Assert(n >= 2);
	while ((k << 1) < n)
		k <<= 1;
	return k;
}

/* True if size is a power of two and start is aligned to it. */
static bool
IsCompleteSubtree(int64 start, int64 size, int *level)
{
	int			l = 0;

	if (size <= 0 || (size & (size - 1)) != 0 || start % size != 0)
		return false;
	while (((int64) 1 << l) < size)
		l++;
	*level = l;
	return true;
}

/*
 * MTH(D[start : start + size]) for a range of the shapes RFC 9162 recurses
 * on: split at the largest power of two below size, as the RFC does.
 */
void
merkle_range_hash(MerkleNodeFetch fetch, void *arg, int64 start, int64 size, uint8 *out)
{
	int			level;
	int64		k;
	uint8		left[MERKLE_HASH_LEN];
	uint8		right[MERKLE_HASH_LEN];

	check_stack_depth();
	if (IsCompleteSubtree(start, size, &level))
	{
		fetch(arg, level, start >> level, out);
		return;
	}
	k = merkle_largest_pow2_below(size);
	merkle_range_hash(fetch, arg, start, k, left);
	merkle_range_hash(fetch, arg, start + k, size - k, right);
	merkle_node_hash(left, right, out);
}

/* Tree head of the first size leaves (empty tree: SHA-256("")). */
void
merkle_root(MerkleNodeFetch fetch, void *arg, int64 size, uint8 *out)
{
	if (size == 0)
		merkle_empty_root(out);
	else
		merkle_range_hash(fetch, arg, 0, size, out);
}

/* PATH(m, D[start : start + n]) appended to out; returns the number of hashes. */
static int
InclusionPath(MerkleNodeFetch fetch, void *arg, int64 m, int64 start, int64 n, uint8 *out)
{
	int64		k;
	int			count;

	if (n <= 1)
		return 0;
	k = merkle_largest_pow2_below(n);
	if (m < k)
	{
		count = InclusionPath(fetch, arg, m, start, k, out);
		merkle_range_hash(fetch, arg, start + k, n - k, out + count * MERKLE_HASH_LEN);
	}
	else
	{
		count = InclusionPath(fetch, arg, m - k, start + k, n - k, out);
		merkle_range_hash(fetch, arg, start, k, out + count * MERKLE_HASH_LEN);
	}
	return count + 1;
}

/*
 * RFC 9162 inclusion proof of leaf index in a tree of size leaves, written to
 * out (MERKLE_MAX_PROOF hashes of room); returns the number of hashes.
 * The caller checks 0 <= index < size.
 */
int
merkle_inclusion_proof(MerkleNodeFetch fetch, void *arg, int64 index, int64 size, uint8 *out)
{
	return InclusionPath(fetch, arg, index, 0, size, out);
}

/* SUBPROOF(m, D[start : start + n], b) appended to out; returns the number of hashes. */
static int
SubProof(MerkleNodeFetch fetch, void *arg, int64 m, int64 start, int64 n, bool b, uint8 *out)
{
	int64		k;
	int			count;

	if (m == n)
	{
		if (b)
			return 0;
		merkle_range_hash(fetch, arg, start, n, out);
		return 1;
	}
	k = merkle_largest_pow2_below(n);
	if (m <= k)
	{
		count = SubProof(fetch, arg, m, start, k, b, out);
		merkle_range_hash(fetch, arg, start + k, n - k, out + count * MERKLE_HASH_LEN);
	}
	else
	{
		count = SubProof(fetch, arg, m - k, start + k, n - k, false, out);
		merkle_range_hash(fetch, arg, start, k, out + count * MERKLE_HASH_LEN);
	}
	return count + 1;
}

/*
 * RFC 9162 consistency proof between tree sizes m and n (0 < m <= n); returns
 * the number of hashes written to out. An empty proof for m == n.
 */
int
merkle_consistency_proof(MerkleNodeFetch fetch, void *arg, int64 m, int64 n, uint8 *out)
{
	return SubProof(fetch, arg, m, 0, n, true, out);
}
