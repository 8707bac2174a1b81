/*-------------------------------------------------------------------------
 * verify.c
 *	  fintx.verify_audit(): recompute the audit log from the stored facts
 *	  and check it against what was sealed and signed.
 *
 * For the leaves in [from_leaf, to_leaf] it recomputes each entry's hash from
 * its columns and compares it with the stored entry hash (the leaf hash); it
 * also checks that the runs of fintx.audit_leaf_runs cover every leaf exactly
 * once, that every leaf has its entry and no entry is at two leaves. The
 * range is widened to the 16-leaf tiles that hold it (and the last,
 * incomplete tile). From leaf 0 it rebuilds the tree from the recomputed
 * leaves and checks that every stored subtree (levels 4 and up) within them
 * is there and matches, and the tree heads of the blocks they cover; from a
 * later leaf it checks each tile against its stored level-4 node. A range
 * short of the whole log is then tied to the latest block's tree head,
 * recomputed through every subtree that holds a recomputed leaf. Always: the
 * block hash chain and the block signatures (with the configured key).
 *-------------------------------------------------------------------------
 */
#include "fintx.h"
#include "merkle.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "common/base64.h"
#include "common/int.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(fintx_verify_audit);

#define UNIX_EPOCH_OFFSET_USEC INT64CONST(946684800000000)
#define FETCH_ROWS		10000

typedef struct VerifyState
{
	bool		ok;
	int64		first_bad;		/* smallest bad leaf, or -1 */
	StringInfoData detail;
} VerifyState;

/* Records a problem at leaf (or -1 for one not tied to a leaf). */
static void
Bad(VerifyState *st, int64 leaf, const char *fmt,...) pg_attribute_printf(3, 4);

static void
Bad(VerifyState *st, int64 leaf, const char *fmt,...)
{
	va_list		ap;

	if (st->ok || (leaf >= 0 && (st->first_bad < 0 || leaf < st->first_bad)))
	{
		resetStringInfo(&st->detail);
		for (;;)
		{
			int			needed;

			va_start(ap, fmt);
			needed = appendStringInfoVA(&st->detail, fmt, ap);
			va_end(ap);
			if (needed == 0)
				break;
			enlargeStringInfo(&st->detail, needed);
		}
		if (leaf >= 0)
			st->first_bad = leaf;
	}
	st->ok = false;
}

static bool
ColumnHash(HeapTuple tup, TupleDesc desc, int col, uint8 *out)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);
	bytea	   *b;

	if (isnull)
		return false;
	b = DatumGetByteaPP(d);
	if (VARSIZE_ANY_EXHDR(b) != MERKLE_HASH_LEN)
		return false;
	memcpy(out, VARDATA_ANY(b), MERKLE_HASH_LEN);
	return true;
}

typedef struct LeafRef
{
	int64		entry_id;
	int64		leaf;
} LeafRef;

static int
CompareLeafRef(const void *a, const void *b)
{
	int64		x = ((const LeafRef *) a)->entry_id;
	int64		y = ((const LeafRef *) b)->entry_id;

	if (x == y)					/* an entry at two leaves: the later one is reported */
	{
		x = ((const LeafRef *) a)->leaf;
		y = ((const LeafRef *) b)->leaf;
	}
	return (x > y) - (x < y);
}

/* Reports leaves [lo, hi) as missing from the runs (nothing if the range is empty). */
static void
MissingLeaves(VerifyState *st, int64 lo, int64 hi)
{
	if (lo >= hi)
		return;
	if (hi - lo == 1)
		Bad(st, lo, "leaf %lld is missing from fintx.audit_leaf_runs", (long long) lo);
	else
		Bad(st, lo, "leaves %lld to %lld are missing from fintx.audit_leaf_runs",
			(long long) lo, (long long) (hi - 1));
}

/* Opens a read-only cursor over sql with two bigint parameters. */
static Portal
OpenCursor(const char *sql, int64 a, int64 b)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2];
	SPIPlanPtr	plan = SPI_prepare(sql, 2, types);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed");
	args[0] = Int64GetDatum(a);
	args[1] = Int64GetDatum(b);
	return SPI_cursor_open(NULL, plan, args, NULL, false);
}

/*
 * Checks entries of leaves [from, to]; fills leaves[] (recomputed hashes,
 * indexed from 'from') when non-NULL; returns how many of the leaves in
 * [count_from, count_to] had their entry checked. Two ordered scans and no
 * join: the runs by leaf, the entries by id (merged with the leaves sorted by
 * entry id).
 */
static int64
VerifyEntries(VerifyState *st, int64 from, int64 to, uint8 *leaves, int64 count_from, int64 count_to)
{
	int64		n = to - from + 1;
	LeafRef    *refs = palloc_extended(sizeof(LeafRef) * n, MCXT_ALLOC_HUGE);
	uint8	   *computed = leaves ? leaves : palloc_extended(MERKLE_HASH_LEN * n, MCXT_ALLOC_HUGE);
	int64		nrefs = 0;
	int64		expect = from;
	int64		prev_block = -1;	/* the previous run: its block, last leaf and last entry */
	int64		prev_last = -1;
	int64		prev_last_entry = 0;
	int64		checked = 0;
	int64		r;
	Portal		portal;
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "fintx verify row",
												 ALLOCSET_DEFAULT_SIZES);

	/* 1. leaf -> entry, from the runs in leaf order (from the last one starting at or before from) */
	portal = OpenCursor("SELECT first_leaf, first_entry, leaf_count, block_id FROM fintx.audit_leaf_runs"
						" WHERE first_leaf <= $2"
						"   AND first_leaf >= COALESCE((SELECT pg_catalog.max(first_leaf) FROM fintx.audit_leaf_runs"
						"                                WHERE first_leaf <= $1), 0)"
						" ORDER BY first_leaf", from, to);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, FETCH_ROWS);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int64		first = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			int64		entry = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			int64		count = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
			int64		block = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
			int64		last;
			int64		last_entry;

			/* leaves first .. last of this run, as far as they lie in [expect, to] */
			if (count < 1 || pg_add_s64_overflow(first, count - 1, &last) ||
				pg_add_s64_overflow(entry, count - 1, &last_entry))
			{
				Bad(st, Max(first, from), "the run of leaves at %lld in fintx.audit_leaf_runs is malformed",
					(long long) first);
				continue;
			}
			if (last < expect)
			{
				if (first >= from)
					Bad(st, first, "leaf %lld is in more than one run of fintx.audit_leaf_runs",
						(long long) first);
				continue;		/* ends before the range, or inside the previous run */
			}
			/* a pass gives its entries leaves in entry-id order: so must the runs of a block */
			if (block == prev_block && first == prev_last + 1 && entry <= prev_last_entry && prev_last >= from)
				Bad(st, prev_last, "leaves %lld and %lld of block %lld are not in entry-id order",
					(long long) prev_last, (long long) first, (long long) block);
			prev_block = block;
			prev_last = last;
			prev_last_entry = last_entry;
			if (first > expect)
				MissingLeaves(st, expect, Min(first, to + 1));
			else if (first < expect && first >= from)
				Bad(st, first, "leaf %lld is in more than one run of fintx.audit_leaf_runs",
					(long long) first);
			for (int64 leaf = Max(first, expect); leaf <= Min(last, to); leaf++)
			{
				refs[nrefs].leaf = leaf;
				refs[nrefs].entry_id = entry + (leaf - first);
				nrefs++;
			}
			expect = Max(expect, Min(last, to) + 1);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	MissingLeaves(st, expect, to + 1);
	if (nrefs == 0)
		return 0;
	qsort(refs, nrefs, sizeof(LeafRef), CompareLeafRef);

	/* 2. entries in id order, merged with the leaves sorted by entry id */
	r = 0;
	portal = OpenCursor("SELECT entry_id, recorded_at, actor, session_role, action, object_type, object_id,"
						"       details, entry_hash FROM fintx.audit_entries"
						" WHERE entry_id BETWEEN $1 AND $2 ORDER BY entry_id",
						refs[0].entry_id, refs[nrefs - 1].entry_id);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, FETCH_ROWS);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			FintxAuditEntry e;
			uint8		stored[MERKLE_HASH_LEN];
			MemoryContext old;
			int64		leaf;

			CHECK_FOR_INTERRUPTS();
			while (r < nrefs && refs[r].entry_id < id)
			{
				Bad(st, refs[r].leaf, "the entry of leaf %lld is missing from fintx.audit_entries",
					(long long) refs[r].leaf);
				r++;
			}
			if (r >= nrefs || refs[r].entry_id != id)
				continue;		/* not sealed, or outside the range */
			leaf = refs[r].leaf;
			r++;
			if (r < nrefs && refs[r].entry_id == id)
				Bad(st, refs[r].leaf, "entry %lld is at more than one leaf", (long long) id);
			old = MemoryContextSwitchTo(rowcxt);
			fintx_audit_entry_from_row(tup, desc, 1, &e);
			fintx_audit_hash(&e);
			MemoryContextSwitchTo(old);
			MemoryContextReset(rowcxt);
			memcpy(computed + (leaf - from) * MERKLE_HASH_LEN, e.hash, MERKLE_HASH_LEN);
			if (leaf >= count_from && leaf <= count_to)
				checked++;
			if (!ColumnHash(tup, desc, 9, stored) || memcmp(stored, e.hash, MERKLE_HASH_LEN) != 0)
				Bad(st, leaf, "entry %lld at leaf %lld does not match its hash: its stored facts were changed",
					(long long) id, (long long) leaf);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	for (; r < nrefs; r++)
		Bad(st, refs[r].leaf, "the entry of leaf %lld is missing from fintx.audit_entries",
			(long long) refs[r].leaf);

	MemoryContextDelete(rowcxt);
	return checked;
}

/* Reports stored nodes [lo, hi) of a level as missing (nothing if the range is empty). */
static void
Missing(VerifyState *st, int level, int64 lo, int64 hi)
{
	if (lo >= hi)
		return;
	if (hi - lo == 1)
		Bad(st, lo << level, "the tree node at level %d, index %lld is missing", level, (long long) lo);
	else
		Bad(st, lo << level, "the tree nodes at level %d, indexes %lld to %lld are missing", level,
			(long long) lo, (long long) (hi - 1));
}

/* The tree rebuilt from the leaves level by level, as the ordered node scan climbs it. */
typedef struct Climb
{
	uint8	   *leaves;			/* level 0 */
	uint8	   *cur;			/* the hashes of this level */
	int64		count;
	int			level;
	int64		expect;			/* next stored index expected at this level */
} Climb;

/* Reports the stored nodes still missing at the current level, then builds the next one. */
static void
ClimbUp(VerifyState *st, Climb *c)
{
	uint8	   *up = palloc_extended(MERKLE_HASH_LEN * (c->count / 2 + 1), MCXT_ALLOC_HUGE);

	if (c->level >= FINTX_AUDIT_STORED_LEVEL)
		Missing(st, c->level, c->expect, c->count);
	for (int64 i = 0; i < c->count / 2; i++)
		merkle_node_hash(c->cur + 2 * i * MERKLE_HASH_LEN, c->cur + (2 * i + 1) * MERKLE_HASH_LEN,
						 up + i * MERKLE_HASH_LEN);
	if (c->cur != c->leaves)
		pfree(c->cur);
	c->cur = up;
	c->count /= 2;
	c->level++;
	c->expect = 0;
}

/*
 * The tree of a log of which some leaves were recomputed from their entries:
 * leaves lo .. lo + n - 1 (whole 16-leaf tiles, or up to the end of the log)
 * and, when the range ends before the last, incomplete tile, that tile.
 */
typedef struct RangeTree
{
	uint8	   *leaves;
	int64		lo;
	int64		n;
	uint8	   *tail;			/* NULL: the last tile is in the range, or complete */
	int64		tail_lo;
	int64		tail_n;
	bool		missing;		/* a stored node the tree head needs is missing */
} RangeTree;

/* A stored node (levels from FINTX_AUDIT_STORED_LEVEL up); t->missing if there is none. */
static void
StoredNode(RangeTree *t, int level, int64 idx, uint8 *out)
{
	Oid			types[2] = {INT2OID, INT8OID};
	Datum		args[2];

	args[0] = Int16GetDatum((int16) level);
	args[1] = Int64GetDatum(idx);
	/*
	 * read_only = false: a new snapshot, as the leaf cursors take. The
	 * statement's own snapshot predates the sealing pass verify_audit() just
	 * made, and would miss the nodes and the block it wrote.
	 */
	if (SPI_execute_with_args("SELECT hash FROM fintx.audit_nodes WHERE level = $1 AND idx = $2",
							  2, types, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading audit nodes failed");	/* LCOV_EXCL_LINE */
	if (SPI_processed != 1 || !ColumnHash(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, out))
	{
		t->missing = true;
		memset(out, 0, MERKLE_HASH_LEN);
	}
}

/* The recomputed hashes of leaves [first, first + count), or NULL if they were not all recomputed. */
static const uint8 *
Recomputed(const RangeTree *t, int64 first, int64 count)
{
	if (first >= t->lo && first + count <= t->lo + t->n)
		return t->leaves + (first - t->lo) * MERKLE_HASH_LEN;
	if (t->tail && first >= t->tail_lo && first + count <= t->tail_lo + t->tail_n)
		return t->tail + (first - t->tail_lo) * MERKLE_HASH_LEN;
	return NULL;
}

/*
 * Node fetch callback for merkle.c over a RangeTree: a subtree that holds a
 * recomputed leaf is rebuilt from its children down to the recomputed leaves,
 * never read from the store, so that a tree head computed through it tests
 * every recomputed leaf; subtrees apart from them are stored nodes.
 */
static void
RangeFetch(void *arg, int level, int64 idx, uint8 *out)
{
	RangeTree  *t = (RangeTree *) arg;
	int64		first = idx << level;
	int64		count = (int64) 1 << level;
	const uint8 *have = Recomputed(t, first, count);
	uint8		left[MERKLE_HASH_LEN];
	uint8		right[MERKLE_HASH_LEN];

	check_stack_depth();
	if (have != NULL && level <= FINTX_AUDIT_STORED_LEVEL)
	{
		uint8		h[MERKLE_HASH_LEN << FINTX_AUDIT_STORED_LEVEL];

		memcpy(h, have, MERKLE_HASH_LEN * count);
		merkle_fold(h, count);
		memcpy(out, h, MERKLE_HASH_LEN);
		return;
	}
	if (have == NULL && (first + count <= t->lo || first >= t->lo + t->n))
	{
		/* apart from the range: whole stored subtrees (the last tile, if apart, is recomputed) */
		Assert(level >= FINTX_AUDIT_STORED_LEVEL);
		StoredNode(t, level, idx, out);
		return;
	}
	RangeFetch(arg, level - 1, 2 * idx, left);
	RangeFetch(arg, level - 1, 2 * idx + 1, right);
	merkle_node_hash(left, right, out);
}

/*
 * For a range verification (from_leaf > 0), which rebuilt the leaf hashes of
 * leaves lo .. lo + n - 1 (whole 16-leaf tiles, lo a multiple of 16): checks
 * each complete tile against its stored level-4 node, which locates an entry
 * rewritten together with its entry_hash to its tile. (VerifyHead then ties
 * the range to the signed tree head.)
 */
static void
VerifyTiles(VerifyState *st, RangeTree *t)
{
	int64		tile = (int64) 1 << FINTX_AUDIT_STORED_LEVEL;

	for (int64 first = t->lo; first + tile <= t->lo + t->n; first += tile)
	{
		uint8		h[MERKLE_HASH_LEN << FINTX_AUDIT_STORED_LEVEL];
		uint8		stored[MERKLE_HASH_LEN];
		int64		idx = first >> FINTX_AUDIT_STORED_LEVEL;

		memcpy(h, t->leaves + (first - t->lo) * MERKLE_HASH_LEN, sizeof(h));
		merkle_fold(h, tile);
		t->missing = false;
		StoredNode(t, FINTX_AUDIT_STORED_LEVEL, idx, stored);
		if (t->missing)
			Bad(st, first, "the tree node at level %d, index %lld is missing", FINTX_AUDIT_STORED_LEVEL,
				(long long) idx);
		else if (memcmp(h, stored, MERKLE_HASH_LEN) != 0)
			Bad(st, st->first_bad >= 0 ? -1 : first,
				"the tree node at level %d, index %lld does not match its leaves", FINTX_AUDIT_STORED_LEVEL,
				(long long) idx);
	}
	t->missing = false;
}

/*
 * For any verification that does not rebuild the whole log: computes the
 * tree head of the latest block (size leaves) from the recomputed leaves and
 * the stored subtrees apart from them, and compares it with the head the
 * block records (and VerifyBlocks checks its signature). Without this a
 * leaf rewritten together with its entry_hash and the stored nodes above it
 * up to the first one outside the range would pass a range check.
 */
static void
VerifyHead(VerifyState *st, RangeTree *t, int64 size)
{
	uint8		root[MERKLE_HASH_LEN];
	uint8		stored[MERKLE_HASH_LEN];
	Datum		arg = Int64GetDatum(size);
	Oid			type = INT8OID;
	bool		isnull;
	int64		tile = (int64) 1 << FINTX_AUDIT_STORED_LEVEL;
	int64		leaf;

	t->missing = false;
	merkle_root(RangeFetch, t, size, root);
	if (SPI_execute_with_args("SELECT block_id, root_hash FROM fintx.audit_blocks WHERE tree_size = $1"
							  " ORDER BY block_id DESC LIMIT 1", 1, &type, &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading audit blocks failed");	/* LCOV_EXCL_LINE */
	if (SPI_processed != 1 || !ColumnHash(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, stored))
		return;					/* VerifyBlocks reports a missing or malformed block */
	/*
	 * Not tied to a leaf (the leaves may be right and a stored node apart from
	 * them wrong), except for a range holding the last, incomplete tile: no
	 * stored node covers its leaves, only the head; the range's complete tiles
	 * matched their nodes (VerifyTiles), so that tile is named.
	 */
	leaf = t->lo + t->n == size && size % tile != 0 ? size & ~(tile - 1) : -1;
	if (t->missing)
		Bad(st, -1, "a tree node needed to check leaves %lld to %lld against the tree head of size %lld is missing",
			(long long) t->lo, (long long) (t->lo + t->n - 1), (long long) size);
	else if (memcmp(root, stored, MERKLE_HASH_LEN) != 0)
		Bad(st, leaf,
			"block %lld records a tree head for size %lld that leaves %lld to %lld and the stored tree apart from them do not produce",
			(long long) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
			(long long) size, (long long) t->lo, (long long) (t->lo + t->n - 1));
}

/*
 * Checks the stored subtrees against the tree rebuilt from leaves[0..n) of a
 * log of size leaves: every complete subtree of the first n leaves from
 * FINTX_AUDIT_STORED_LEVEL up is stored and matches; subtrees that reach
 * beyond leaf n - 1 (when only a prefix is verified) are not checked; nothing
 * else is stored.
 */
static void
VerifyNodes(VerifyState *st, uint8 *leaves, int64 n, int64 size)
{
	Climb		c = {leaves, leaves, n, 0, 0};
	Portal		portal;
	SPIPlanPtr	plan;

	plan = SPI_prepare("SELECT level, idx, hash FROM fintx.audit_nodes ORDER BY level, idx", 0, NULL);
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, false);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, FETCH_ROWS);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int			lv = DatumGetInt16(SPI_getbinval(tup, desc, 1, &isnull));
			int64		idx = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			uint8		h[MERKLE_HASH_LEN];

			CHECK_FOR_INTERRUPTS();
			if (lv < FINTX_AUDIT_STORED_LEVEL || lv > 62)
			{
				Bad(st, -1, "the tree holds a node at level %d, index %lld, a level fintx does not store",
					lv, (long long) idx);
				continue;
			}
			while (c.level < lv)
				ClimbUp(st, &c);
			if (idx < c.expect || idx >= (size >> lv))
			{
				Bad(st, -1, "the tree holds a node at level %d, index %lld that no sealed leaves support",
					lv, (long long) idx);
				continue;
			}
			Missing(st, lv, c.expect, Min(idx, c.count));
			if (idx >= c.count)
			{
				c.expect = c.count;
				continue;		/* beyond the verified leaves */
			}
			c.expect = idx + 1;
			/* a damaged leaf already named is the first bad leaf, not the subtree above it */
			if (!ColumnHash(tup, desc, 3, h) || memcmp(h, c.cur + idx * MERKLE_HASH_LEN, MERKLE_HASH_LEN) != 0)
				Bad(st, st->first_bad >= 0 ? -1 : idx << lv,
					"the tree node at level %d, index %lld does not match its leaves", lv, (long long) idx);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	/* complete subtrees above the last stored one */
	while (c.count > 0)
		ClimbUp(st, &c);
}

/* Incremental RFC 6962 tree head over leaf hashes: a stack of complete subtrees. */
typedef struct HeadBuilder
{
	uint8		hash[64][MERKLE_HASH_LEN];
	int64		size[64];
	int			depth;
	int64		n;
} HeadBuilder;

static void
HeadAdd(HeadBuilder *hb, const uint8 *leaf)
{
	memcpy(hb->hash[hb->depth], leaf, MERKLE_HASH_LEN);
	hb->size[hb->depth] = 1;
	hb->depth++;
	while (hb->depth >= 2 && hb->size[hb->depth - 1] == hb->size[hb->depth - 2])
	{
		merkle_node_hash(hb->hash[hb->depth - 2], hb->hash[hb->depth - 1], hb->hash[hb->depth - 2]);
		hb->size[hb->depth - 2] *= 2;
		hb->depth--;
	}
	hb->n++;
}

static void
HeadRoot(HeadBuilder *hb, uint8 *out)
{
	if (hb->depth == 0)
	{
		merkle_empty_root(out);
		return;
	}
	memcpy(out, hb->hash[hb->depth - 1], MERKLE_HASH_LEN);
	for (int i = hb->depth - 2; i >= 0; i--)
		merkle_node_hash(hb->hash[i], out, out);
}

/*
 * Returns the public key of the fintx.trusted_keys entry (C2SP verifier keys
 * "name+hexid+base64(0x01 || key)", separated by commas or white space) whose
 * "name+hexid" is label, or NULL.
 */
static const uint8 *
TrustedKey(const char *label)
{
	char	   *list = pstrdup(fintx_trusted_keys ? fintx_trusted_keys : "");
	char	   *save = NULL;
	size_t		llen = strlen(label);

	for (char *tok = strtok_r(list, ", \t\n", &save); tok; tok = strtok_r(NULL, ", \t\n", &save))
	{
		char		raw[64];
		int			n;

		if (strncmp(tok, label, llen) != 0 || tok[llen] != '+')
			continue;
		n = pg_b64_decode(tok + llen + 1, strlen(tok + llen + 1), raw, sizeof(raw));
		if (n == 33 && raw[0] == 0x01)
		{
			uint8	   *pub = palloc(32);

			memcpy(pub, raw + 1, 32);
			return pub;
		}
	}
	return NULL;
}

/* Checks the block chain, tree heads (leaves[0..nleaves) known) and signatures. */
static void
VerifyBlocks(VerifyState *st, uint8 *leaves, int64 nleaves, int64 *blocks_checked,
			 int64 *other_key, int64 *unsigned_blocks)
{
	Portal		portal;
	SPIPlanPtr	plan;
	HeadBuilder *hb = palloc0(sizeof(HeadBuilder));
	uint8		prev_hash[MERKLE_HASH_LEN];
	int64		prev_id = 0,
				prev_size = 0;
	TimestampTz prev_sealed = DT_NOBEGIN;
	EVP_PKEY   *key = fintx_signing_key(fintx_signing_key_file);
	uint8		pub[32];
	bool		seen_signed = false;

	if (key)
		fintx_ed25519_public(key, pub);
	memset(prev_hash, 0, MERKLE_HASH_LEN);
	plan = SPI_prepare("SELECT block_id, tree_size, root_hash, prev_block_hash, block_hash, sealed_at,"
					   "       origin, key_name, signature FROM fintx.audit_blocks ORDER BY block_id", 0, NULL);
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, false);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			int64		size = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			TimestampTz sealed = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
			uint8		root[MERKLE_HASH_LEN],
						prev[MERKLE_HASH_LEN],
						bh[MERKLE_HASH_LEN],
						expect[MERKLE_HASH_LEN];
			Datum		sigd;

			CHECK_FOR_INTERRUPTS();
			(*blocks_checked)++;
			if (id != prev_id + 1)
				Bad(st, prev_size, "block %lld follows block %lld: blocks are missing", (long long) id, (long long) prev_id);
			if (size <= prev_size)
				Bad(st, size, "block %lld has tree size %lld, not more than block %lld", (long long) id,
					(long long) size, (long long) prev_id);
			if (!ColumnHash(tup, desc, 3, root) || !ColumnHash(tup, desc, 4, prev) || !ColumnHash(tup, desc, 5, bh))
			{
				Bad(st, prev_size, "block %lld has a malformed hash", (long long) id);
				continue;
			}
			if (memcmp(prev, prev_hash, MERKLE_HASH_LEN) != 0)
				Bad(st, prev_size, "block %lld does not chain to block %lld", (long long) id, (long long) prev_id);
			/* the signatures do not cover the times: at least they must not run backwards */
			if (sealed < prev_sealed)
				Bad(st, prev_size, "block %lld was sealed at %s, before block %lld (%s)", (long long) id,
					timestamptz_to_str(sealed), (long long) prev_id, timestamptz_to_str(prev_sealed));
			fintx_block_hash(id, size, root, prev, sealed, expect);
			if (memcmp(expect, bh, MERKLE_HASH_LEN) != 0)
				Bad(st, prev_size, "block %lld does not match its block hash", (long long) id);
			if (leaves && size <= nleaves)
			{
				while (hb->n < size)
					HeadAdd(hb, leaves + hb->n * MERKLE_HASH_LEN);
				HeadRoot(hb, expect);
				if (memcmp(expect, root, MERKLE_HASH_LEN) != 0)
					Bad(st, st->first_bad >= 0 ? -1 : prev_size,
						"block %lld records a tree head for size %lld that the entries do not produce",
						(long long) id, (long long) size);
			}
			sigd = SPI_getbinval(tup, desc, 9, &isnull);
			if (!isnull)
			{
				bytea	   *sig = DatumGetByteaPP(sigd);
				char	   *origin = SPI_getvalue(tup, desc, 7);
				char	   *label = SPI_getvalue(tup, desc, 8);
				char	   *body = psprintf("%s\n%lld\n%s\n", origin, (long long) size,
											fintx_base64(root, MERKLE_HASH_LEN));
				const uint8 *with = NULL;

				seen_signed = true;
				if (key && label && strcmp(label, fintx_key_label(origin, key)) == 0)
					with = pub;
				else if (label)
					with = TrustedKey(label);
				if (with == NULL)
				{
					if (key || fintx_trusted_keys[0])
						Bad(st, st->first_bad >= 0 ? -1 : prev_size,
							"block %lld is signed by key \"%s\", which is neither the configured key nor in fintx.trusted_keys",
							(long long) id, label ? label : "");
					else
						(*other_key)++;
				}
				else if (VARSIZE_ANY_EXHDR(sig) != 64 ||
						 !fintx_ed25519_verify(with, (uint8 *) body, strlen(body), (uint8 *) VARDATA_ANY(sig)))
					Bad(st, st->first_bad >= 0 ? -1 : prev_size,
						"the signature of block %lld does not verify", (long long) id);
				else if (with != pub)
					(*other_key)++;
			}
			else
			{
				/* once the log is signed, it stays signed: an unsigned block after a signed one is forged */
				if (seen_signed)
					Bad(st, st->first_bad >= 0 ? -1 : prev_size,
						"block %lld is unsigned although earlier blocks are signed", (long long) id);
				(*unsigned_blocks)++;
			}
			memcpy(prev_hash, bh, MERKLE_HASH_LEN);
			prev_id = id;
			prev_size = size;
			prev_sealed = sealed;
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
}

/* fintx_subtransaction step: seals, leaving the tree size in *arg. */
static void
SealStep(void *arg)
{
	*(int64 *) arg = fintx_seal_log();
}

/*
 * Seals before verifying, in a subtransaction: damage that stops sealing
 * (XX001, e.g. a leaf of the last partial tile removed) must not stop the
 * function that locates it. Then the log as sealed so far is verified and
 * *failure holds the sealing error. Other errors propagate.
 */
static int64
SealForVerify(char **failure)
{
	int64		size = 0;
	ErrorData  *edata;

	*failure = NULL;
	edata = fintx_subtransaction(SealStep, &size);
	if (edata == NULL)
		return size;
	if (edata->sqlerrcode != ERRCODE_DATA_CORRUPTED)
		ReThrowError(edata);
	*failure = edata->message;
	return fintx_sealed_size();
}

/*
 * fintx.verify_audit(from_leaf, to_leaf) → (ok, entries_checked, first_bad_leaf, detail)
 * Seals first; to_leaf NULL means the last sealed leaf.
 */
Datum
fintx_verify_audit(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	VerifyState st;
	int64		size,
				from,
				to,
				checked = 0,
				blocks = 0,
				other_key = 0,
				unsigned_blocks = 0,
				nleaves = 0;
	uint8	   *leaves = NULL;
	char	   *seal_failure = NULL;
	int			nestlevel;

	fintx_authz_require(FINTX_OP_AUDIT_READ, "audit log");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	size = SealForVerify(&seal_failure);
	from = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	to = PG_ARGISNULL(1) ? size - 1 : PG_GETARG_INT64(1);
	if (from < 0 || (size > 0 && (to >= size || to < from)) ||
		(size == 0 && (from > 0 || (!PG_ARGISNULL(1) && to >= 0))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("leaf range %lld to %lld is out of range", (long long) from, (long long) to),
				 errdetail("The audit log has %lld sealed entries.", (long long) size)));
	st.ok = true;
	st.first_bad = -1;
	initStringInfo(&st.detail);
	nestlevel = fintx_jit_off();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (size > 0)
	{
		/*
		 * The range, widened to the 16-leaf tiles that hold it; when it does
		 * not reach the end of the log, the last, incomplete tile too: a tree
		 * head needs its leaf hashes, and they are checked on the way.
		 */
		int64		tile = (int64) 1 << FINTX_AUDIT_STORED_LEVEL;
		int64		lo = from & ~(tile - 1);
		int64		hi = Min(to | (tile - 1), size - 1);
		RangeTree	t = {NULL, lo, hi - lo + 1, NULL, size & ~(tile - 1), size % tile, false};

		t.leaves = palloc_extended(MERKLE_HASH_LEN * t.n, MCXT_ALLOC_HUGE);
		checked = VerifyEntries(&st, lo, hi, t.leaves, from, to);
		if (hi < size - 1 && t.tail_n > 0)
		{
			t.tail = palloc(MERKLE_HASH_LEN * t.tail_n);
			VerifyEntries(&st, t.tail_lo, size - 1, t.tail, 1, 0);
		}
		if (lo == 0)
		{
			leaves = t.leaves;
			VerifyNodes(&st, leaves, t.n, size);
		}
		else if (st.ok)
			VerifyTiles(&st, &t);
		if ((lo > 0 || hi < size - 1) && st.ok)
			VerifyHead(&st, &t, size);
		nleaves = lo == 0 ? t.n : 0;
	}
	VerifyBlocks(&st, leaves, nleaves, &blocks, &other_key, &unsigned_blocks);
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	if (seal_failure)
		Bad(&st, -1, "sealing the entries committed since the last block failed: %s", seal_failure);

	if (st.ok)
	{
		appendStringInfo(&st.detail, "verified %lld entr%s and %lld block%s", (long long) checked,
						 checked == 1 ? "y" : "ies", (long long) blocks, blocks == 1 ? "" : "s");
		if (!(fintx_signing_key_file && fintx_signing_key_file[0]))
			appendStringInfoString(&st.detail, "; no signing key configured, signatures not checked");
		else
		{
			appendStringInfo(&st.detail, "; %lld signature%s checked", (long long) (blocks - unsigned_blocks),
							 blocks - unsigned_blocks == 1 ? "" : "s");
			if (other_key > 0)
				appendStringInfo(&st.detail, " (%lld with keys from fintx.trusted_keys)", (long long) other_key);
			if (unsigned_blocks > 0)
				appendStringInfo(&st.detail, ", %lld block%s sealed before a key was configured",
								 (long long) unsigned_blocks, unsigned_blocks == 1 ? "" : "s");
		}
	}
	values[0] = BoolGetDatum(st.ok);
	values[1] = Int64GetDatum(checked);
	values[2] = Int64GetDatum(st.first_bad);
	nulls[2] = st.first_bad < 0;
	values[3] = CStringGetTextDatum(st.detail.data);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
