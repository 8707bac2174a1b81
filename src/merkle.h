/*-------------------------------------------------------------------------
 * merkle.h
 *	  RFC 6962 / RFC 9162 Merkle tree hashing and proofs over a store of
 *	  complete-subtree hashes.
 *-------------------------------------------------------------------------
 */
#ifndef FINTX_MERKLE_H
#define FINTX_MERKLE_H

#include "postgres.h"

#define MERKLE_HASH_LEN 32

/*
 * Returns the hash of the complete subtree at (level, index): it covers leaves
 * [index << level, (index + 1) << level). Level 0 is the leaf hashes.
 */
typedef void (*MerkleNodeFetch) (void *arg, int level, int64 index, uint8 *out);

extern void merkle_leaf_hash(const uint8 *data, size_t len, uint8 *out);
extern void merkle_node_hash(const uint8 *left, const uint8 *right, uint8 *out);
extern void merkle_fold(uint8 *hashes, int64 count);
extern void merkle_empty_root(uint8 *out);
extern void merkle_range_hash(MerkleNodeFetch fetch, void *arg, int64 start, int64 size, uint8 *out);
extern void merkle_root(MerkleNodeFetch fetch, void *arg, int64 size, uint8 *out);
extern int	merkle_inclusion_proof(MerkleNodeFetch fetch, void *arg, int64 index, int64 size, uint8 *out);
extern int	merkle_consistency_proof(MerkleNodeFetch fetch, void *arg, int64 m, int64 n, uint8 *out);
extern int64 merkle_largest_pow2_below(int64 n);

/* Upper bound of hashes in a proof for trees below 2^63 leaves. */
#define MERKLE_MAX_PROOF 128

#endif							/* FINTX_MERKLE_H */
