/*-------------------------------------------------------------------------
 * sequencer.c
 *	  Sealing the audit log: commit-ordered leaf indexes, Merkle subtree
 *	  hashes, hash-chained signed blocks; tree heads, proofs, checkpoints
 *	  and verification.
 *
 * Sequencing follows PgQ's snapshot batching. Each block stores the MVCC
 * snapshot it was sealed under; the next pass takes the entries visible in
 * its own snapshot but not in the previous one (txid >= xmin of the previous
 * snapshot narrows the scan through an index). A transaction that commits
 * after a pass is not visible to it and is picked up by the next pass, so
 * nothing is skipped; an aborted one is never visible. Passes are serialized
 * by an advisory lock and only insert into the audit tables, so they never
 * block transfers.
 *-------------------------------------------------------------------------
 */
#include "fintx.h"
#include "merkle.h"

#include "access/xact.h"
#include "utils/fmgrprotos.h"
#include "access/htup_details.h"
#include "commands/trigger.h"
#include "access/transam.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "nodes/parsenodes.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/array.h"
#include "commands/dbcommands.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

PG_FUNCTION_INFO_V1(fintx_seal);
PG_FUNCTION_INFO_V1(fintx_sequence_outbox);
PG_FUNCTION_INFO_V1(fintx_tree_size);
PG_FUNCTION_INFO_V1(fintx_root_hash);
PG_FUNCTION_INFO_V1(fintx_leaf_data);
PG_FUNCTION_INFO_V1(fintx_inclusion_proof);
PG_FUNCTION_INFO_V1(fintx_consistency_proof);
PG_FUNCTION_INFO_V1(fintx_checkpoint);
PG_FUNCTION_INFO_V1(fintx_public_key);
PG_FUNCTION_INFO_V1(fintx_audit_export);
PG_FUNCTION_INFO_V1(fintx_merkle_leaf_hash);
PG_FUNCTION_INFO_V1(fintx_merkle_tree_head);
PG_FUNCTION_INFO_V1(fintx_merkle_inclusion_proof_data);
PG_FUNCTION_INFO_V1(fintx_merkle_consistency_proof_data);
PG_FUNCTION_INFO_V1(fintx_refuse_foreign_snapshot);

int			fintx_seal_interval_ms = 100;
char	   *fintx_signing_key_file = NULL;
char	   *fintx_checkpoint_origin = NULL;
char	   *fintx_trusted_keys = NULL;
/* set when the worker's sealing pass found the sealing lock taken (worker.c reads it) */
bool		fintx_seal_lock_missed = false;

#define SEAL_LOCK_KEY	INT64CONST(0x66696E7478736C)	/* "fintxsl" */
#define BLOCK_MAGIC		"fintx.block.v1"
#define UNIX_EPOCH_OFFSET_USEC INT64CONST(946684800000000)

/*
 * The two sealing scans (first block, later blocks) share their head and tail:
 * "s" is the current snapshot, with the sealing transaction's own xid ($2, if
 * it has one below xmax) added to its in-progress list; the result is one row
 * per new entry, or one row with NULL entry if there is none.
 */
#define SCAN_SNAPSHOT_CTE \
	"WITH cur AS MATERIALIZED (SELECT pg_catalog.pg_current_snapshot() AS snap)," \
	"     s AS (SELECT CASE WHEN $2 IS NULL OR $2 >= pg_catalog.pg_snapshot_xmax(cur.snap)" \
	"             THEN cur.snap ELSE" \
	"             (LEAST(pg_catalog.pg_snapshot_xmin(cur.snap), $2)::text || ':'" \
	"              || pg_catalog.pg_snapshot_xmax(cur.snap)::text || ':'" \
	"              || (SELECT pg_catalog.string_agg(x::text, ',' ORDER BY x)" \
	"                    FROM (SELECT pg_catalog.pg_snapshot_xip(cur.snap) AS x UNION SELECT $2) q)" \
	"             )::pg_catalog.pg_snapshot END AS snap FROM cur),"
#define SCAN_SELECT \
	" SELECT s.snap, e.entry_id, e.entry_hash FROM s LEFT JOIN e ON true ORDER BY e.entry_id"

static SPIPlanPtr last_block_plan = NULL;
static SPIPlanPtr block_before_plan = NULL;
static SPIPlanPtr first_scan_plan = NULL;
static SPIPlanPtr next_scan_plan = NULL;
static SPIPlanPtr node_plan = NULL;
static SPIPlanPtr leaf_hashes_plan = NULL;
static SPIPlanPtr block_plan = NULL;
static SPIPlanPtr outbox_snap_plan = NULL;

static const FintxColumn run_columns[] = {
	{"first_leaf", INT8OID}, {"first_entry", INT8OID}, {"leaf_count", INT4OID}, {"block_id", INT8OID}
};

/*
 * The leaves [$1, $2) with their entries: the runs that overlap the range (from
 * the last one starting at or before $1) joined with the entries of their part
 * of it, through both primary keys. A leaf whose entry is missing has no row.
 * (The offsets are clamped to the run, so that no $1 up to 2^63 - 1 overflows.)
 */
#define LEAF_RANGE_FROM \
	"  FROM fintx.audit_leaf_runs r JOIN fintx.audit_entries e" \
	"    ON e.entry_id >= r.first_entry + LEAST(GREATEST($1 - r.first_leaf, 0), r.leaf_count)" \
	"   AND e.entry_id < r.first_entry + LEAST($2 - r.first_leaf, r.leaf_count)" \
	" WHERE r.first_leaf < $2" \
	"   AND r.first_leaf >= COALESCE((SELECT pg_catalog.max(first_leaf) FROM fintx.audit_leaf_runs" \
	"                                  WHERE first_leaf <= $1), 0)"
#define LEAF_INDEX_COL	"r.first_leaf + (e.entry_id - r.first_entry)"
static const FintxColumn node_columns[] = {
	{"level", INT2OID}, {"idx", INT8OID}, {"hash", BYTEAOID}
};

/* The latest block (tree_size 0 and block_id 0 if none). */
typedef struct BlockInfo
{
	int64		block_id;
	int64		tree_size;
	uint8		root[MERKLE_HASH_LEN];
	uint8		block_hash[MERKLE_HASH_LEN];
	uint8		prev_hash[MERKLE_HASH_LEN];
	TimestampTz sealed_at;
	Datum		snapshot;
	bool		exists;
	char	   *origin;
	char	   *key_name;
	bytea	   *signature;
	bool		own;			/* written by this transaction (or a subtransaction of it) */
} BlockInfo;

/* Whose hash GetHash reads, for its error message. */
typedef enum HashOwner
{
	HASH_OF_BLOCK,				/* a = block id */
	HASH_OF_ENTRY,				/* a = entry id */
	HASH_OF_LEAF,				/* a = leaf index */
	HASH_OF_NODE				/* a = level, b = index */
} HashOwner;

/*
 * Copies a bytea column holding a 32-byte hash; emits XX001 naming the row
 * (owner, a, b) if it is not one.
 */
static void
GetHash(HeapTuple tup, TupleDesc desc, int col, uint8 *out, HashOwner owner, int64 a, int64 b)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);
	bytea	   *h = isnull ? NULL : DatumGetByteaPP(d);

	if (h == NULL || VARSIZE_ANY_EXHDR(h) != MERKLE_HASH_LEN)
	{
		const char *what =
			owner == HASH_OF_BLOCK ? psprintf("the hash of audit block %lld", (long long) a) :
			owner == HASH_OF_ENTRY ? psprintf("the hash of audit entry %lld", (long long) a) :
			owner == HASH_OF_LEAF ? psprintf("the leaf hash of audit leaf %lld", (long long) a) :
			psprintf("the hash of audit tree node at level %lld, index %lld", (long long) a, (long long) b);

		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("%s is %s", what, h == NULL ? "missing" : "not 32 bytes"),
				 errhint("Run fintx.verify_audit() to locate the damage.")));
	}
	memcpy(out, VARDATA_ANY(h), MERKLE_HASH_LEN);
}

#define BLOCK_COLUMNS \
	"SELECT block_id, tree_size, root_hash, block_hash, sealed_at, snapshot, origin," \
	"       key_name, signature, xmin, prev_block_hash FROM fintx.audit_blocks "

/*
 * Reads the block the kept plan finds (exists = false if none; SPI connected).
 * Plans are kept for the session and shared by every caller (made under
 * fintx_index_planning() whoever runs them first).
 */
static void
ReadBlockWith(BlockInfo *b, SPIPlanPtr plan, Datum *args)
{
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	int			ret;
	Datum		d;

	memset(b, 0, sizeof(*b));
	ret = fintx_execute_indexed(plan, args, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "reading audit blocks failed");
	if (SPI_processed == 0)
		return;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	b->exists = true;
	b->block_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	b->tree_size = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
	GetHash(tup, desc, 3, b->root, HASH_OF_BLOCK, b->block_id, 0);
	GetHash(tup, desc, 4, b->block_hash, HASH_OF_BLOCK, b->block_id, 0);
	b->sealed_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
	b->snapshot = SPI_datumTransfer(SPI_getbinval(tup, desc, 6, &isnull), false, -1);
	b->origin = fintx_spi_copy_text(tup, desc, 7);
	b->key_name = fintx_spi_copy_text(tup, desc, 8);
	d = SPI_getbinval(tup, desc, 9, &isnull);
	b->signature = isnull ? NULL : (bytea *) DatumGetPointer(SPI_datumTransfer(d, false, -1));
	b->own = TransactionIdIsCurrentTransactionId(DatumGetTransactionId(SPI_getbinval(tup, desc, 10, &isnull)));
	GetHash(tup, desc, 11, b->prev_hash, HASH_OF_BLOCK, b->block_id, 0);
}

/*
 * Reads the latest block (exists = false if there is none; SPI connected):
 * the sealing pass and checkpoint(), public_key() and verify_audit() alike.
 */
static void
ReadBlock(BlockInfo *b)
{
	fintx_keep_plan(&last_block_plan, BLOCK_COLUMNS "ORDER BY block_id DESC LIMIT 1", 0, NULL);
	ReadBlockWith(b, last_block_plan, NULL);
}

/* Reads the latest block before block id (exists = false if there is none; SPI connected). */
static void
ReadBlockBefore(BlockInfo *b, int64 id)
{
	Oid			type = INT8OID;
	Datum		arg = Int64GetDatum(id);

	fintx_keep_plan(&block_before_plan, BLOCK_COLUMNS "WHERE block_id < $1 ORDER BY block_id DESC LIMIT 1",
					1, &type);
	ReadBlockWith(b, block_before_plan, &arg);
}

/*
 * Reads the latest block that a transaction other than this one wrote, the
 * latest committed one in READ COMMITTED (SPI connected; b holds the latest
 * block and is replaced). Blocks written by this transaction's own passes
 * exist only if it commits.
 */
static void
ReadCommittedBlock(BlockInfo *b)
{
	while (b->exists && b->own)
		ReadBlockBefore(b, b->block_id);
}

/* Copies the leaf hashes of leaves [lo, hi) into out (SPI connected); XX001 if one is missing. */
static void
LeafHashes(int64 lo, int64 hi, uint8 *out)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2];

	args[0] = Int64GetDatum(lo);
	args[1] = Int64GetDatum(hi);
	fintx_keep_plan(&leaf_hashes_plan,
					"SELECT " LEAF_INDEX_COL ", e.entry_hash" LEAF_RANGE_FROM
					" ORDER BY r.first_leaf, e.entry_id", 2, types);
	if (SPI_execute_plan(leaf_hashes_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading audit leaves failed");	/* LCOV_EXCL_LINE */
	for (int64 i = 0; i < hi - lo; i++)
	{
		bool		isnull;

		if (i >= (int64) SPI_processed ||
			DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)) != lo + i)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("audit leaf %lld is missing", (long long) (lo + i)),
					 errhint("Run fintx.verify_audit() to locate the damage.")));
		GetHash(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, out + i * MERKLE_HASH_LEN, HASH_OF_LEAF, lo + i, 0);
	}
}

/*
 * Node fetch callback for merkle.c (SPI connected): levels from
 * FINTX_AUDIT_STORED_LEVEL up are read from fintx.audit_nodes, the levels
 * below are recomputed from their (at most 8) leaf hashes.
 */
static void
FetchNode(void *arg, int level, int64 idx, uint8 *out)
{
	Oid			types[2] = {INT2OID, INT8OID};
	Datum		args[2];

	if (level < FINTX_AUDIT_STORED_LEVEL)
	{
		uint8		h[MERKLE_HASH_LEN << (FINTX_AUDIT_STORED_LEVEL - 1)];

		LeafHashes(idx << level, (idx + 1) << level, h);
		merkle_fold(h, (int64) 1 << level);
		memcpy(out, h, MERKLE_HASH_LEN);
		return;
	}
	args[0] = Int16GetDatum((int16) level);
	args[1] = Int64GetDatum(idx);
	fintx_keep_plan(&node_plan,
					"SELECT hash FROM fintx.audit_nodes WHERE level = $1 AND idx = $2", 2, types);
	if (SPI_execute_plan(node_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading audit nodes failed");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit tree node at level %d, index %lld is missing", level, (long long) idx),
				 errhint("Run fintx.verify_audit() to locate the damage.")));
	GetHash(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, out, HASH_OF_NODE, level, idx);
}

/*
 * The nodes a sealing pass computed, level by level: at level L the hashes of
 * nodes from[L] .. from[L] + count[L] - 1 (level 0: leaf hashes).
 */
typedef struct SealLevels
{
	int			nlevels;
	int64		from[64];
	int64		count[64];
	uint8	   *hashes[64];
} SealLevels;

/* Node fetch callback for merkle.c: from the pass's memory, else FetchNode. */
static void
FetchSealed(void *arg, int level, int64 idx, uint8 *out)
{
	SealLevels *s = (SealLevels *) arg;

	if (level < s->nlevels && idx >= s->from[level] && idx < s->from[level] + s->count[level])
		memcpy(out, s->hashes[level] + (idx - s->from[level]) * MERKLE_HASH_LEN, MERKLE_HASH_LEN);
	else
		FetchNode(NULL, level, idx, out);
}

/*
 * Whether byte c may appear in a checkpoint origin. The origin is also the
 * signing key's name, which C2SP signed notes forbid to hold spaces or "+";
 * fintx allows printable ASCII without those (no control characters either:
 * the origin is the first line of the checkpoint).
 */
bool
fintx_origin_char_ok(unsigned char c)
{
	return c > 0x20 && c < 0x7F && c != '+';
}

/*
 * The checkpoint origin: fintx.checkpoint_origin (its GUC check allows only
 * fintx_origin_char_ok bytes) or "fintx.local/<system identifier>/<database>",
 * the database name's other bytes and "%" itself written as %XX (so that two
 * database names never give one origin: "a b" and "a%20b").
 */
static char *
Origin(void)
{
	StringInfoData s;

	if (fintx_checkpoint_origin && fintx_checkpoint_origin[0])
		return pstrdup(fintx_checkpoint_origin);
	initStringInfo(&s);
	appendStringInfo(&s, "fintx.local/%llu/", (unsigned long long) GetSystemIdentifier());
	for (const unsigned char *p = (const unsigned char *) get_database_name(MyDatabaseId); *p; p++)
	{
		if (fintx_origin_char_ok(*p) && *p != '%')
			appendStringInfoChar(&s, (char) *p);
		else
			appendStringInfo(&s, "%%%02X", *p);
	}
	return s.data;
}

/* The C2SP checkpoint body: "origin\nsize\nbase64(root)\n". */
static char *
CheckpointBody(const char *origin, int64 size, const uint8 *root)
{
	return psprintf("%s\n%lld\n%s\n", origin, (long long) size, fintx_base64(root, MERKLE_HASH_LEN));
}

/* block_hash = SHA-256("fintx.block.v1" || id || size || root || prev || sealed_at), integers big-endian. */
void
fintx_block_hash(int64 id, int64 size, const uint8 *root, const uint8 *prev, TimestampTz sealed_at, uint8 *out)
{
	StringInfoData buf;
	uint64		be;

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, BLOCK_MAGIC, strlen(BLOCK_MAGIC));
	be = pg_hton64((uint64) id);
	appendBinaryStringInfo(&buf, (char *) &be, 8);
	be = pg_hton64((uint64) size);
	appendBinaryStringInfo(&buf, (char *) &be, 8);
	appendBinaryStringInfo(&buf, (const char *) root, MERKLE_HASH_LEN);
	appendBinaryStringInfo(&buf, (const char *) prev, MERKLE_HASH_LEN);
	be = pg_hton64((uint64) (sealed_at + UNIX_EPOCH_OFFSET_USEC));
	appendBinaryStringInfo(&buf, (char *) &be, 8);
	fintx_sha256((unsigned char *) buf.data, buf.len, out);
	pfree(buf.data);
}

/*
 * Raises 55000 if snap (a pg_snapshot a block or outbox batch stores; what
 * and id name it, id -1: what alone; formatted only then) reaches
 * transaction ids this cluster has not assigned yet: the row was sealed in
 * another cluster, whose ids ran ahead (a dump restored here). The next pass
 * would take it as its previous snapshot and skip, for good, every entry of
 * this cluster's transactions below its xmin.
 */
void
fintx_require_local_snapshot(Datum snap, const char *what, int64 id)
{
	FullTransactionId xmax = DatumGetFullTransactionId(DirectFunctionCall1(pg_snapshot_xmax, snap));
	FullTransactionId next = ReadNextFullTransactionId();

	if (FullTransactionIdFollows(xmax, next))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 id < 0 ? errmsg("%s was sealed in a cluster whose transaction ids are ahead of this one's", what) :
				 errmsg("%s %lld was sealed in a cluster whose transaction ids are ahead of this one's", what, (long long) id),
				 errdetail("Its snapshot reaches transaction id %llu; this cluster's next one is %llu. "
						   "Entries and events of this cluster's transactions below it would never be sealed.",
						   (unsigned long long) U64FromFullTransactionId(xmax),
						   (unsigned long long) U64FromFullTransactionId(next)),
				 errhint("Restore into a cluster whose transaction ids are past %llu: advance them first "
						 "(docs/operations.md, \"Backup and restore\").",
						 (unsigned long long) U64FromFullTransactionId(xmax))));
}

/*
 * Trigger on fintx.audit_blocks and fintx.outbox_batches (BEFORE INSERT, each
 * row): a restored row whose snapshot is ahead of this cluster is refused,
 * so that a restore fails loudly instead of sealing nothing ever again.
 */
Datum
fintx_refuse_foreign_snapshot(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	int			col;
	bool		isnull;
	Datum		snap;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		elog(ERROR, "fintx_refuse_foreign_snapshot: not called as a row insert trigger");
	rel = trigdata->tg_relation;
	col = SPI_fnumber(RelationGetDescr(rel), "snapshot");
	if (col <= 0)
		elog(ERROR, "table \"%s\" has no column \"snapshot\"", RelationGetRelationName(rel));
	snap = heap_getattr(trigdata->tg_trigtuple, col, RelationGetDescr(rel), &isnull);
	if (!isnull)
		fintx_require_local_snapshot(snap, psprintf("a row of fintx.%s", RelationGetRelationName(rel)), -1);
	return PointerGetDatum(trigdata->tg_trigtuple);
}

/*
 * Seals every committed entry not yet in the log: assigns leaf indexes,
 * stores the new complete subtrees and appends a signed, chained block.
 * Sequences the committed outbox events in the same pass (outbox.c).
 * Returns the tree size. Under REPEATABLE READ or SERIALIZABLE it only
 * reports the current size (its snapshot could be stale).
 */
static int64 SealLog(void);

static bool seal_xact_callback = false;

/* Whether this transaction holds the sealing lock (as pg_advisory_xact_lock(bigint) takes it). */
static bool
SealLockHeld(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (SEAL_LOCK_KEY >> 32), (uint32) SEAL_LOCK_KEY, 1);
	return LockHeldByMe(&tag, ExclusiveLock);
}

/*
 * A transaction that holds the sealing lock must not be prepared: the
 * prepared transaction would keep the lock (stopping every sealing pass and
 * poll() of the database until COMMIT or ROLLBACK PREPARED), and its block
 * and positions would wait for a decision made elsewhere. 0A000, as
 * PostgreSQL answers for LISTEN/NOTIFY.
 */
static void
SealXactCallback(XactEvent event, void *arg)
{
	/* held, not only taken: a subtransaction rolled back since releases it */
	if (event == XACT_EVENT_PRE_PREPARE && SealLockHeld())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot PREPARE a transaction that sealed the audit log or sequenced the outbox"),
				 errdetail("A fintx call in this transaction sealed on its own (no worker seals this database, or fintx.sequence_outbox() was called); the prepared transaction would hold the sealing lock."),
				 errhint("Call fintx.seal() in a transaction of its own before the two-phase transaction, or let the worker seal this database (fintx.database).")));
}

/*
 * Takes the sealing lock until the end of the transaction (SPI connected) and
 * returns true. A session that seals inside a transaction it keeps open holds
 * the lock until that transaction ends; the worker must go on releasing
 * expired holds and writing denials meanwhile, so it only tries, and returns
 * false if the lock is taken: it seals on a later pass.
 */
static bool
TakeSealLock(void)
{
	bool		isnull;

	if (SPI_execute(psprintf("SELECT pg_catalog.%s(%lld)",
							 fintx_is_worker ? "pg_try_advisory_xact_lock" : "pg_advisory_xact_lock",
							 (long long) SEAL_LOCK_KEY), false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not take the sealing lock");	/* LCOV_EXCL_LINE */
	if (!fintx_is_worker)
	{
		if (!seal_xact_callback)
		{
			RegisterXactCallback(SealXactCallback, NULL);
			seal_xact_callback = true;
		}
		return true;
	}
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		return true;
	ereport(DEBUG1,
			(errmsg("fintx: the sealing lock is held by another transaction; sealing on a later pass")));
	fintx_seal_lock_missed = true;
	return false;
}

/*
 * Runs a sealing pass (see SealLog) under fintx_index_planning(): its queries
 * run against fast-growing tables, with plans kept for the session or made per
 * pass; compiling them would cost more than running them, and a plan made
 * while a table was small must not scan it whole once it has grown.
 */
int64
fintx_seal_log(void)
{
	int			nestlevel = fintx_index_planning();
	int64		size;

	size = SealLog();
	AtEOXact_GUC(true, nestlevel);
	return size;
}

/* The tree size of the latest block, and SPI_finish(): SealLog()'s answer when it does not seal. */
static int64
SizeSealed(void)
{
	BlockInfo	b;

	ReadBlock(&b);
	SPI_finish();
	return b.tree_size;
}

/*
 * fintx_direct_insert_rows of a sealing pass's leaf runs or nodes. A row of
 * the same key there already (a leaf or a node past the latest block, or an
 * entry given a leaf twice) means the log was changed behind fintx, e.g. its
 * latest block deleted: XX001, which verify_audit() reports and seal() and the
 * proofs refuse with, not the unique violation itself.
 */
static void
InsertSealed(const char *table, const FintxColumn *columns, int ncolumns, int nrows,
			 Datum *values, bool *nulls, int64 prev_block)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		fintx_direct_insert_rows(table, columns, ncolumns, nrows, values, nulls);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION)
			PG_RE_THROW();		/* LCOV_EXCL_LINE: any other error of an insert (disk full) */
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("fintx.%s already holds rows that the next block would add after block %lld",
						table, (long long) prev_block),
				 errdetail("%s. The audit log was changed after it was sealed (its latest block removed?); nothing was sealed.",
						   edata->message),
				 errhint("Run fintx.verify_audit() to locate the damage.")));
	}
	PG_END_TRY();
}

static int64
SealLog(void)
{
	BlockInfo	prev;
	Datum		snap;
	SPITupleTable *scan;
	int			ret;
	int64		n0,
				k,
				m;
	SealLevels	lv;
	int64		tile0;
	Datum	   *nodes;
	int64		nn = 0;
	uint8		root[MERKLE_HASH_LEN];
	uint8		prev_hash[MERKLE_HASH_LEN];
	uint8		block_hash[MERKLE_HASH_LEN];
	TimestampTz sealed_at;
	int64		block_id;
	char	   *origin;
	EVP_PKEY   *key;
	Datum		bargs[10];
	char		bnulls[10];

	fintx_spi_connect();
	/*
	 * Under REPEATABLE READ or SERIALIZABLE the snapshot could be stale:
	 * report the size. Where the worker seals, it runs the pass in its own
	 * transaction (ours would hold the sealing lock until it ends, and
	 * could not write in a read-only transaction); a new snapshot then
	 * sees the block it committed. Without the worker, a read-only
	 * transaction cannot seal: it reports the size sealed so far.
	 */
	if (IsolationUsesXactSnapshot() ? fintx_worker_seals_here() : fintx_worker_seal())
		return SizeSealed();
	if (XactReadOnly || IsolationUsesXactSnapshot())
	{
		int64		size = SizeSealed();

		ereport(NOTICE,
				(errmsg("fintx: a %s transaction cannot seal the audit log or sequence the outbox; the answer covers the %lld entries sealed so far",
						XactReadOnly ? "read-only" : "REPEATABLE READ or SERIALIZABLE", (long long) size),
				 RecoveryInProgress() ?
				 errhint("This server is a standby: the primary seals; the answer covers what it had sealed when this standby replayed it.") :
				 errhint("Entries and events committed since are sealed by the next pass: call fintx.seal() in a read-write READ COMMITTED transaction, or preload fintx so that its worker seals this database.")));
		return size;
	}
	if (!TakeSealLock())
		return SizeSealed();	/* the worker, while another transaction holds the lock */
	ReadBlock(&prev);			/* under the lock: the latest block is ours to extend */
	if (prev.exists)
		fintx_require_local_snapshot(prev.snapshot, "audit block", prev.block_id);
	n0 = prev.tree_size;

	/*
	 * Entries visible now but not under the previous block's snapshot, in one
	 * statement. A transaction that seals after writing audit entries itself
	 * must leave its own entries to a later pass (it could write more after
	 * sealing): they are skipped, and its own xid is added to the in-progress
	 * list of the snapshot the block stores, so the next pass after its
	 * commit takes all of them.
	 */
	{
		Oid			types[2] = {PG_SNAPSHOTOID, XID8OID};
		Datum		args[2];
		char		nulls[2] = {' ', ' '};
		TransactionId own = GetTopTransactionIdIfAny();

		args[0] = prev.exists ? prev.snapshot : (Datum) 0;
		nulls[0] = prev.exists ? ' ' : 'n';
		if (TransactionIdIsValid(own))
			args[1] = FullTransactionIdGetDatum(GetTopFullTransactionId());
		else
		{
			args[1] = (Datum) 0;
			nulls[1] = 'n';
		}
		/*
		 * Custom plans: the planner must see the previous snapshot's xmin to
		 * pick the txid index on a large table (a generic plan guesses a third
		 * of the rows and scans them all). A run's first entry comes from the
		 * txid index scan itself; only the rest of a longer run is read by
		 * entry id, in a subquery per run (OFFSET 0 keeps it a nested loop
		 * over the primary key: as a join, the planner guesses half a percent
		 * of the table per run for the id range and may scan it whole).
		 */
		fintx_keep_plan_opts(prev.exists ? &next_scan_plan : &first_scan_plan,
							 prev.exists ?
							 SCAN_SNAPSHOT_CTE
							 "     r AS MATERIALIZED (SELECT entry_id, entry_hash, run_length, txid FROM fintx.audit_entries"
							 "            WHERE run_length IS NOT NULL"
							 "              AND txid >= pg_catalog.pg_snapshot_xmin($1)"
							 "              AND NOT pg_catalog.pg_visible_in_snapshot(txid, $1)"
							 "              AND txid IS DISTINCT FROM $2),"
							 "     e AS (SELECT entry_id, entry_hash FROM r"
							 "            UNION ALL"
							 "            SELECT a.entry_id, a.entry_hash FROM r CROSS JOIN LATERAL"
							 "             (SELECT entry_id, entry_hash FROM fintx.audit_entries"
							 "               WHERE entry_id > r.entry_id AND entry_id < r.entry_id + r.run_length"
							 "                 AND txid = r.txid OFFSET 0) a"
							 "            WHERE r.run_length > 1)"
							 SCAN_SELECT
							 :
							 SCAN_SNAPSHOT_CTE
							 "     e AS (SELECT entry_id, entry_hash FROM fintx.audit_entries"
							 "            WHERE $1 IS NULL AND txid IS DISTINCT FROM $2)"
							 SCAN_SELECT,
							 2, types, CURSOR_OPT_CUSTOM_PLAN);
		ret = SPI_execute_plan(prev.exists ? next_scan_plan : first_scan_plan, args, nulls, false, 0);
	}
	if (ret != SPI_OK_SELECT || SPI_processed < 1)
		elog(ERROR, "scanning audit entries failed");
	{
		bool		isnull;

		snap = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull),
								 false, -1);
		(void) SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		k = isnull ? 0 : (int64) SPI_processed;
	}
	/* the outbox is sequenced in the same pass, under the same snapshot */
	scan = SPI_tuptable;
	{
		TransactionId own = GetTopTransactionIdIfAny();

		(void) fintx_outbox_sequence(snap,
									 TransactionIdIsValid(own) ? FullTransactionIdGetDatum(GetTopFullTransactionId()) : (Datum) 0,
									 !TransactionIdIsValid(own));
	}
	if (k == 0)
	{
		SPI_finish();
		return n0;
	}
	m = n0 + k;
	block_id = prev.block_id + 1;

	/*
	 * Leaves, with the hashes of the older leaves of the last partial tile (the
	 * 16 leaves under a stored level-4 node) in front: every new node at levels
	 * 1 to 4 is then computed from memory.
	 */
	tile0 = n0 & ~(((int64) 1 << FINTX_AUDIT_STORED_LEVEL) - 1);
	lv.nlevels = 1;
	lv.from[0] = tile0;
	lv.count[0] = n0 - tile0 + k;
	lv.hashes[0] = palloc(MERKLE_HASH_LEN * lv.count[0]);
	if (n0 > tile0)
		LeafHashes(tile0, n0, lv.hashes[0]);
	{
		SPITupleTable *tt = scan;
		Datum	   *runs = palloc(sizeof(Datum) * 4 * k);
		bool	   *nulls = palloc0(sizeof(bool) * 4 * k);
		uint8	   *h = lv.hashes[0] + (n0 - tile0) * MERKLE_HASH_LEN;
		int64		nruns = 0;
		int64		run_start = 0;	/* first entry and length of the open run */
		int64		run_len = 0;

		/* the entries come in entry-id order: one run per stretch of consecutive ids */
		for (int64 i = 0; i < k; i++)
		{
			bool		isnull;
			int64		entry = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &isnull));

			GetHash(tt->vals[i], tt->tupdesc, 3, h + i * MERKLE_HASH_LEN, HASH_OF_ENTRY, entry, 0);
			if (run_len > 0 && entry == run_start + run_len && run_len < PG_INT32_MAX)
			{
				run_len++;
				runs[4 * (nruns - 1) + 2] = Int32GetDatum((int32) run_len);
				continue;
			}
			run_start = entry;
			run_len = 1;
			runs[4 * nruns] = Int64GetDatum(n0 + i);
			runs[4 * nruns + 1] = Int64GetDatum(entry);
			runs[4 * nruns + 2] = Int32GetDatum(1);
			runs[4 * nruns + 3] = Int64GetDatum(block_id);
			nruns++;
		}
		InsertSealed("audit_leaf_runs", run_columns, 4, (int) nruns, runs, nulls, prev.block_id);
	}

	/*
	 * Complete subtrees that exist now but did not before, level by level; up
	 * to level 4 the older nodes of the partial tile are recomputed too, as
	 * left children of the new ones (older left children above come from
	 * audit_nodes). Only levels 4 and up are stored.
	 */
	nodes = palloc(sizeof(Datum) * 3 * (k / 8 + 64));
	for (int level = 1; level < 63; level++)
	{
		int64		lo = n0 >> level;
		int64		hi = (m >> level) - 1;
		int64		from = level <= FINTX_AUDIT_STORED_LEVEL ? tile0 >> level : lo;
		uint8	   *next;

		if (hi < lo)
			break;
		next = palloc(MERKLE_HASH_LEN * (hi - from + 1));
		for (int64 idx = from; idx <= hi; idx++)
		{
			uint8		left[MERKLE_HASH_LEN];
			uint8		right[MERKLE_HASH_LEN];
			uint8	   *h = next + (idx - from) * MERKLE_HASH_LEN;

			CHECK_FOR_INTERRUPTS();
			FetchSealed(&lv, level - 1, 2 * idx, left);
			FetchSealed(&lv, level - 1, 2 * idx + 1, right);
			merkle_node_hash(left, right, h);
			if (level < FINTX_AUDIT_STORED_LEVEL || idx < lo)
				continue;
			nodes[3 * nn] = Int16GetDatum((int16) level);
			nodes[3 * nn + 1] = Int64GetDatum(idx);
			nodes[3 * nn + 2] = fintx_hash_datum(h);
			nn++;
		}
		lv.from[level] = from;
		lv.count[level] = hi - from + 1;
		lv.hashes[level] = next;
		lv.nlevels = level + 1;
	}
	if (nn > 0)
		InsertSealed("audit_nodes", node_columns, 3, (int) nn, nodes, palloc0(sizeof(bool) * 3 * nn), prev.block_id);

	/*
	 * The log so far must still produce the previous block's tree head, or
	 * this block would extend (and sign over) something else: the older
	 * leaves of the partial tile were read back from audit_entries above, not
	 * from a stored node, and may have been rewritten together with their
	 * hashes; the previous block may have been added or changed by hand.
	 */
	if (prev.exists)
	{
		uint8		old_root[MERKLE_HASH_LEN];

		merkle_root(FetchSealed, &lv, n0, old_root);
		if (memcmp(old_root, prev.root, MERKLE_HASH_LEN) != 0 && n0 > tile0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("audit leaves %lld to %lld no longer produce the tree head of block %lld",
							(long long) tile0, (long long) (n0 - 1), (long long) prev.block_id),
					 errdetail("An audit entry of those leaves, or the block, was changed after it was sealed; nothing was sealed."),
					 errhint("Run fintx.verify_audit() to locate the damage.")));
		else if (memcmp(old_root, prev.root, MERKLE_HASH_LEN) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("the audit log does not produce the tree head of block %lld", (long long) prev.block_id),
					 errdetail("The block or the stored tree was changed after it was sealed; nothing was sealed."),
					 errhint("Run fintx.verify_audit() to locate the damage.")));
	}

	/* the block: tree head (its subtrees mostly from this pass's memory), hash chain, signature */
	merkle_root(FetchSealed, &lv, m, root);
	if (prev.exists)
		memcpy(prev_hash, prev.block_hash, MERKLE_HASH_LEN);
	else
		memset(prev_hash, 0, MERKLE_HASH_LEN);
	/* never before the previous block: a clock stepped back must not make an honest chain fail verification */
	sealed_at = GetCurrentTimestamp();
	if (prev.exists && sealed_at < prev.sealed_at)
		sealed_at = prev.sealed_at;
	fintx_block_hash(block_id, m, root, prev_hash, sealed_at, block_hash);
	origin = Origin();
	/* allowed (a deliberate rename), but checkpoints of the two origins do not link: say so */
	if (prev.exists && prev.origin != NULL && strcmp(prev.origin, origin) != 0)
		ereport(WARNING,
				(errmsg("audit block %lld is signed under origin \"%s\", block %lld under \"%s\"",
						(long long) block_id, origin, (long long) prev.block_id, prev.origin),
				 errdetail("Checkpoints of the two origins cannot be linked (fintx-verify --previous-checkpoint)."),
				 errhint("Keep fintx.checkpoint_origin unchanged; after a restore into a new database, set it again with ALTER DATABASE ... SET before the first pass seals.")));
	key = fintx_signing_key(fintx_signing_key_file);
	/* a key set to '' by mistake: an unsigned block after signed ones would fail verify_audit() for good */
	if (key == NULL && prev.exists && prev.signature != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot seal audit block %lld without a signing key: block %lld is signed",
						(long long) block_id, (long long) prev.block_id),
				 errdetail("fintx.signing_key_file is not set; a block left unsigned after signed ones would make verify_audit() report it as forged."),
				 errhint("Set fintx.signing_key_file again; the outbox is still sequenced meanwhile.")));
	memset(bnulls, ' ', sizeof(bnulls));
	bargs[0] = Int64GetDatum(block_id);
	bargs[1] = Int64GetDatum(m);
	bargs[2] = fintx_hash_datum(root);
	bargs[3] = fintx_hash_datum(prev_hash);
	bargs[4] = fintx_hash_datum(block_hash);
	bargs[5] = snap;
	bargs[6] = TimestampTzGetDatum(sealed_at);
	bargs[7] = CStringGetTextDatum(origin);
	if (key)
	{
		char	   *body = CheckpointBody(origin, m, root);
		bytea	   *sig = palloc(VARHDRSZ + 64);

		SET_VARSIZE(sig, VARHDRSZ + 64);
		fintx_ed25519_sign(key, (uint8 *) body, strlen(body), (uint8 *) VARDATA(sig));
		bargs[8] = CStringGetTextDatum(fintx_key_label(origin, key));
		bargs[9] = PointerGetDatum(sig);
	}
	else
	{
		bnulls[8] = 'n';
		bnulls[9] = 'n';
		bargs[8] = bargs[9] = (Datum) 0;
	}
	{
		Oid			types[10] = {INT8OID, INT8OID, BYTEAOID, BYTEAOID, BYTEAOID, PG_SNAPSHOTOID,
			TIMESTAMPTZOID, TEXTOID, TEXTOID, BYTEAOID};

		fintx_keep_plan(&block_plan,
						"INSERT INTO fintx.audit_blocks (block_id, tree_size, root_hash, prev_block_hash,"
						"       block_hash, snapshot, sealed_at, origin, key_name, signature)"
						" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
						10, types);
		if (SPI_execute_plan(block_plan, bargs, bnulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "writing audit block failed");
	}
	/*
	 * Durable before visible: the block's signature signs its tree head (as
	 * a checkpoint does), so it must not be seen, and signed again by
	 * checkpoint(), before its commit record is flushed. With
	 * synchronous_commit = off a crash could otherwise take back a signed
	 * head, and the transfers under it (their commits precede this one in
	 * the WAL), and the log would grow again under another head.
	 */
	ForceSyncCommit();
	SPI_finish();
	return m;
}

/* The tree size of the latest block, without sealing. */
int64
fintx_sealed_size(void)
{
	fintx_spi_connect();
	return SizeSealed();
}

/*
 * Sequences committed outbox events only, without sealing the audit log
 * (the worker's pass when committed events woke it; outbox.c). Same lock and
 * same snapshot rule as fintx_seal_log(). Returns the number of events
 * sequenced; 0 under REPEATABLE READ or SERIALIZABLE.
 */
int64
fintx_sequence_outbox_only(void)
{
	Oid			types[2] = {INT8OID, XID8OID};
	Datum		args[2];
	char		nulls[2] = {'n', ' '};
	TransactionId own = GetTopTransactionIdIfAny();
	Datum		snap;
	bool		isnull;
	int64		n;

	if (IsolationUsesXactSnapshot())
	{
		if (!fintx_is_worker && !fintx_worker_seals_here())
			ereport(NOTICE,
					(errmsg("fintx: a REPEATABLE READ or SERIALIZABLE transaction cannot sequence the outbox"),
					 errhint("Call fintx.sequence_outbox() in a READ COMMITTED transaction, or preload fintx so that its worker sequences this database.")));
		return 0;
	}
	fintx_spi_connect();
	if (!TakeSealLock())
	{
		SPI_finish();
		return 0;
	}
	args[0] = (Datum) 0;
	if (TransactionIdIsValid(own))
		args[1] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	else
	{
		args[1] = (Datum) 0;
		nulls[1] = 'n';
	}
	fintx_keep_plan(&outbox_snap_plan, SCAN_SNAPSHOT_CTE " x AS (SELECT $1) SELECT s.snap FROM s",
					2, types);
	if (SPI_execute_plan(outbox_snap_plan, args, nulls, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reading the snapshot failed");
	snap = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull), false, -1);
	n = fintx_outbox_sequence(snap, args[1], nulls[1] == 'n');
	SPI_finish();
	return n;
}

/* fintx.seal() → bigint: seals committed entries now; returns the tree size. */
Datum
fintx_seal(PG_FUNCTION_ARGS)
{
	/* no audit.read needed: sealing reveals nothing but the tree size (the relay seals) */
	PG_RETURN_INT64(fintx_seal_log());
}

/* fintx.sequence_outbox() → bigint: sequences committed outbox events now; returns their number. */
Datum
fintx_sequence_outbox(PG_FUNCTION_ARGS)
{
	int			nestlevel = fintx_index_planning();
	int64		n = fintx_sequence_outbox_only();

	AtEOXact_GUC(true, nestlevel);
	PG_RETURN_INT64(n);
}

/* fintx.tree_size() → bigint: seals, then returns the number of leaves. */
Datum
fintx_tree_size(PG_FUNCTION_ARGS)
{
	fintx_authz_require(FINTX_OP_AUDIT_READ, "audit log");
	PG_RETURN_INT64(fintx_seal_log());
}

/* Seals and emits 22023 unless 0 <= n <= tree size; returns the tree size. */
static int64
CheckSize(int64 n, const char *what)
{
	int64		size = fintx_seal_log();

	if (n < 0 || n > size)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s %lld is out of range", what, (long long) n),
				 errdetail("The audit log has %lld sealed entries.", (long long) size)));
	return size;
}

#define NullArg fintx_null_argument

/* bytea[] of count hashes. */
static Datum
HashArray(const uint8 *hashes, int count)
{
	Datum	   *d = palloc(sizeof(Datum) * (count + 1));

	for (int i = 0; i < count; i++)
		d[i] = fintx_hash_datum(hashes + i * MERKLE_HASH_LEN);
	return PointerGetDatum(construct_array(d, count, BYTEAOID, -1, false, TYPALIGN_INT));
}

/* fintx.root_hash(tree_size) → bytea: RFC 6962 tree head of the first tree_size leaves. */
Datum
fintx_root_hash(PG_FUNCTION_ARGS)
{
	uint8		root[MERKLE_HASH_LEN];
	int64		n;
	int			nestlevel;

	fintx_authz_require(FINTX_OP_AUDIT_READ, "audit log");
	if (PG_ARGISNULL(0))
		NullArg("tree_size");
	n = PG_GETARG_INT64(0);
	CheckSize(n, "tree size");
	nestlevel = fintx_index_planning();
	fintx_spi_connect();
	merkle_root(FetchNode, NULL, n, root);
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	PG_RETURN_DATUM(fintx_hash_datum(root));
}

/*
 * Shared body of inclusion_proof and consistency_proof: checks the arguments
 * (a, n) and returns the RFC 9162 proof as bytea[]. For an inclusion proof a
 * is the leaf index (0 <= a < n), for a consistency proof the first size
 * (0 < a <= n); n must not exceed the sealed tree size.
 */
static Datum
Proof(FunctionCallInfo fcinfo, bool inclusion)
{
	uint8		proof[MERKLE_MAX_PROOF * MERKLE_HASH_LEN];
	int64		a,
				n;
	int			count;
	int			nestlevel;

	if (PG_ARGISNULL(0))
		NullArg(inclusion ? "leaf_index" : "first_size");
	if (PG_ARGISNULL(1))
		NullArg(inclusion ? "tree_size" : "second_size");
	a = PG_GETARG_INT64(0);
	n = PG_GETARG_INT64(1);
	CheckSize(n, inclusion ? "tree size" : "second size");
	if (inclusion && (a < 0 || a >= n))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("leaf index %lld is out of range for tree size %lld", (long long) a, (long long) n)));
	if (!inclusion && (a < 1 || a > n))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("first size %lld is out of range", (long long) a),
				 errdetail("A consistency proof needs 0 < first_size <= second_size (%lld).", (long long) n)));
	nestlevel = fintx_index_planning();
	fintx_spi_connect();
	count = inclusion ? merkle_inclusion_proof(FetchNode, NULL, a, n, proof)
		: merkle_consistency_proof(FetchNode, NULL, a, n, proof);
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	return HashArray(proof, count);
}

/* fintx.inclusion_proof(leaf_index, tree_size) → bytea[] (RFC 9162 audit path). */
Datum
fintx_inclusion_proof(PG_FUNCTION_ARGS)
{
	fintx_authz_require(FINTX_OP_AUDIT_READ, "audit log");
	PG_RETURN_DATUM(Proof(fcinfo, true));
}

/* fintx.consistency_proof(first_size, second_size) → bytea[] (RFC 9162). */
Datum
fintx_consistency_proof(PG_FUNCTION_ARGS)
{
	fintx_authz_require(FINTX_OP_AUDIT_READ, "audit log");
	PG_RETURN_DATUM(Proof(fcinfo, false));
}

/* Reads one entry by leaf index into e (SPI connected); false if there is none. */
static bool
fintx_read_leaf_entry(int64 leaf, FintxAuditEntry *e)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2];
	HeapTuple	tup;
	TupleDesc	desc;

	if (leaf == PG_INT64_MAX)
		return false;
	args[0] = Int64GetDatum(leaf);
	args[1] = Int64GetDatum(leaf + 1);
	if (SPI_execute_with_args("SELECT e.entry_id, e.recorded_at, e.actor, e.session_role, e.action,"
							  "       e.object_type, e.object_id, e.details" LEAF_RANGE_FROM,
							  2, types, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading audit entry failed");
	if (SPI_processed != 1)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	fintx_audit_entry_from_row(tup, desc, 1, e);
	return true;
}

/* fintx.leaf_data(leaf_index) → bytea: the canonical bytes of the entry at that leaf. */
Datum
fintx_leaf_data(PG_FUNCTION_ARGS)
{
	FintxAuditEntry e;
	StringInfoData buf;
	int64		i;
	bytea	   *out;
	int			nestlevel;

	fintx_authz_require(FINTX_OP_AUDIT_READ, "audit log");
	if (PG_ARGISNULL(0))
		NullArg("leaf_index");
	i = PG_GETARG_INT64(0);
	CheckSize(0, "tree size");
	nestlevel = fintx_index_planning();
	fintx_spi_connect();
	if (i < 0 || !fintx_read_leaf_entry(i, &e))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("leaf index %lld is out of range", (long long) i)));
	initStringInfo(&buf);
	fintx_audit_canonical(&buf, &e);
	out = SPI_palloc(VARHDRSZ + buf.len);
	SET_VARSIZE(out, VARHDRSZ + buf.len);
	memcpy(VARDATA(out), buf.data, buf.len);
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	PG_RETURN_BYTEA_P(out);
}

/* "name+hex(key id)": which key signed a block, stored in fintx.audit_blocks.key_name. */
char *
fintx_key_label(const char *name, EVP_PKEY *key)
{
	uint8		pub[32];
	uint8		id[4];

	fintx_ed25519_public(key, pub);
	fintx_note_key_id(name, pub, id);
	return psprintf("%s+%02x%02x%02x%02x", name, id[0], id[1], id[2], id[3]);
}

/*
 * Refuses (XX001) to sign a block the log does not back: one that does not
 * chain to the block before it, does not match its own block hash, or whose
 * tree head the stored tree and leaves do not produce (SPI connected). The
 * key signs whatever head it is given; a block row added or changed by hand
 * must not become a signed checkpoint, which would fork the log for every
 * auditor holding an earlier one.
 */
static void
CheckSignable(BlockInfo *b)
{
	BlockInfo	prev;
	uint8		expect[MERKLE_HASH_LEN];
	const char *what = NULL;

	ReadBlockBefore(&prev, b->block_id);
	if (!prev.exists)
		memset(prev.block_hash, 0, MERKLE_HASH_LEN);
	if (b->block_id != prev.block_id + 1 || b->tree_size <= prev.tree_size ||
		memcmp(b->prev_hash, prev.block_hash, MERKLE_HASH_LEN) != 0)
		what = "it does not extend the block before it";
	else
	{
		fintx_block_hash(b->block_id, b->tree_size, b->root, b->prev_hash, b->sealed_at, expect);
		if (memcmp(expect, b->block_hash, MERKLE_HASH_LEN) != 0)
			what = "it does not match its block hash";
		else
		{
			merkle_root(FetchNode, NULL, b->tree_size, expect);
			if (memcmp(expect, b->root, MERKLE_HASH_LEN) != 0)
				what = "the audit log does not produce its tree head";
		}
	}
	if (what)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit block %lld cannot be signed: %s", (long long) b->block_id, what),
				 errdetail("The block or the log under it was changed after it was sealed."),
				 errhint("Run fintx.verify_audit() to locate the damage.")));
}

/* Emits 55000 unless a signing key is configured; returns it. */
static EVP_PKEY *
RequireKey(void)
{
	if (fintx_signing_key_file == NULL || fintx_signing_key_file[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no signing key is configured"),
				 errhint("Set fintx.signing_key_file to a PEM file holding an Ed25519 private key.")));
	return fintx_signing_key(fintx_signing_key_file);
}

/* The key name in use: the origin of the latest block, or the configured origin (SPI connected). */
static char *
CurrentName(BlockInfo *b)
{
	return b->exists ? b->origin : Origin();
}

/*
 * fintx.checkpoint() → text: seals, then returns the latest tree head as a
 * C2SP checkpoint, signed now with the configured key as a C2SP signed note.
 * Emits 55000 without a key.
 */
Datum
fintx_checkpoint(PG_FUNCTION_ARGS)
{
	BlockInfo	b;
	EVP_PKEY   *key;
	char	   *name;
	char	   *body;
	uint8		pub[32];
	uint8		blob[68];
	char	   *note;

	fintx_authz_require(FINTX_OP_AUDIT_READ, "audit log");
	(void) RequireKey();		/* 55000 without a key, before sealing */
	fintx_seal_log();
	/*
	 * Again after sealing: a pass that signs a block reloads the key when its
	 * file has changed (it may have waited for the sealing lock meanwhile),
	 * freeing the one returned before.
	 */
	key = RequireKey();
	fintx_spi_connect();
	ReadBlock(&b);
	if (b.own)
	{
		/*
		 * This transaction sealed on its own: its blocks exist only if it
		 * commits, and nothing here can tell whether it will (an exception
		 * block, a procedure's ROLLBACK, a failing statement later in a
		 * pipeline). Had it signed its own pass and then rolled back, a later
		 * pass could sign another head for the same size: a fork to an
		 * auditor. Sign the last committed head; every committed block was
		 * flushed before it became visible (SealLog).
		 */
		int64		sealed = b.tree_size;

		ReadCommittedBlock(&b); /* tree_size 0 if there is none */
		ereport(NOTICE,
				(errmsg("the checkpoint signs the %lld entries sealed before this transaction; the %lld sealed in it are signed by a checkpoint() after it commits",
						(long long) b.tree_size, (long long) (sealed - b.tree_size)),
				 errhint("Without a worker sealing this database, call fintx.seal() in a transaction of its own first.")));
	}
	if (b.exists)
		CheckSignable(&b);
	name = CurrentName(&b);
	if (!b.exists)
		merkle_empty_root(b.root);
	body = CheckpointBody(name, b.exists ? b.tree_size : 0, b.root);
	fintx_ed25519_public(key, pub);
	fintx_note_key_id(name, pub, blob);
	fintx_ed25519_sign(key, (uint8 *) body, strlen(body), blob + 4);
	note = psprintf("%s\n\u2014 %s %s\n", body, name, fintx_base64(blob, 68));
	note = fintx_spi_strdup(note);	/* outlive SPI_finish */
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(note));
}

/* fintx.public_key() → text: the C2SP verifier key "name+hex(id)+base64(0x01 || key)". */
Datum
fintx_public_key(PG_FUNCTION_ARGS)
{
	EVP_PKEY   *key;
	BlockInfo	b;
	uint8		pub[33];
	char	   *label;
	char	   *out;

	fintx_authz_require(FINTX_OP_AUDIT_READ, "audit log");
	key = RequireKey();
	fintx_spi_connect();
	ReadBlock(&b);
	label = fintx_key_label(CurrentName(&b), key);
	pub[0] = 0x01;
	fintx_ed25519_public(key, pub + 1);
	out = psprintf("%s+%s", label, fintx_base64(pub, 33));
	out = fintx_spi_strdup(out);
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(out));
}

/* ------------------------------------------------------------------------
 * RFC 6962 over caller-supplied data (known-answer tests, auditors' checks)
 * ------------------------------------------------------------------------
 */

typedef struct DataTree
{
	uint8	   *leaves;			/* leaf hashes */
	int64		n;
} DataTree;

/* Fetch callback over in-memory leaf hashes: computes complete subtrees directly. */
static void
FetchData(void *arg, int level, int64 idx, uint8 *out)
{
	DataTree   *t = (DataTree *) arg;
	int64		start = idx << level;
	uint8		l[MERKLE_HASH_LEN],
				r[MERKLE_HASH_LEN];

	if (level == 0)
	{
		memcpy(out, t->leaves + start * MERKLE_HASH_LEN, MERKLE_HASH_LEN);
		return;
	}
	FetchData(arg, level - 1, 2 * idx, l);
	FetchData(arg, level - 1, 2 * idx + 1, r);
	merkle_node_hash(l, r, out);
}

/* Leaf hashes of a bytea[] argument. */
static DataTree *
DataTreeFromArray(ArrayType *arr)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	DataTree   *t = palloc(sizeof(DataTree));

	deconstruct_array(arr, BYTEAOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	t->n = n;
	t->leaves = palloc(MERKLE_HASH_LEN * (n + 1));
	for (int i = 0; i < n; i++)
	{
		bytea	   *b;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("leaves must not contain null elements")));
		b = DatumGetByteaPP(elems[i]);
		merkle_leaf_hash((uint8 *) VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b), t->leaves + i * MERKLE_HASH_LEN);
	}
	return t;
}

/* fintx.merkle_leaf_hash(data) → bytea: SHA-256(0x00 || data). */
Datum
fintx_merkle_leaf_hash(PG_FUNCTION_ARGS)
{
	bytea	   *b = PG_GETARG_BYTEA_PP(0);
	uint8		h[MERKLE_HASH_LEN];

	merkle_leaf_hash((uint8 *) VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b), h);
	PG_RETURN_DATUM(fintx_hash_datum(h));
}

/* fintx.merkle_tree_head(leaves) → bytea: RFC 6962 MTH of the given leaf data. */
Datum
fintx_merkle_tree_head(PG_FUNCTION_ARGS)
{
	DataTree   *t = DataTreeFromArray(PG_GETARG_ARRAYTYPE_P(0));
	uint8		root[MERKLE_HASH_LEN];

	merkle_root(FetchData, t, t->n, root);
	PG_RETURN_DATUM(fintx_hash_datum(root));
}

/* fintx.merkle_inclusion_proof(leaves, leaf_index, tree_size) → bytea[]. */
Datum
fintx_merkle_inclusion_proof_data(PG_FUNCTION_ARGS)
{
	DataTree   *t = DataTreeFromArray(PG_GETARG_ARRAYTYPE_P(0));
	int64		i = PG_GETARG_INT64(1);
	int64		n = PG_GETARG_INT64(2);
	uint8		proof[MERKLE_MAX_PROOF * MERKLE_HASH_LEN];

	if (n < 1 || n > t->n || i < 0 || i >= n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("need 0 <= leaf_index < tree_size <= %lld", (long long) t->n)));
	PG_RETURN_DATUM(HashArray(proof, merkle_inclusion_proof(FetchData, t, i, n, proof)));
}

/* fintx.merkle_consistency_proof(leaves, first_size, second_size) → bytea[]. */
Datum
fintx_merkle_consistency_proof_data(PG_FUNCTION_ARGS)
{
	DataTree   *t = DataTreeFromArray(PG_GETARG_ARRAYTYPE_P(0));
	int64		m = PG_GETARG_INT64(1);
	int64		n = PG_GETARG_INT64(2);
	uint8		proof[MERKLE_MAX_PROOF * MERKLE_HASH_LEN];

	if (m < 1 || m > n || n > t->n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("need 0 < first_size <= second_size <= %lld", (long long) t->n)));
	PG_RETURN_DATUM(HashArray(proof, merkle_consistency_proof(FetchData, t, m, n, proof)));
}

/*
 * fintx.audit_export(from_leaf, to_leaf) → SETOF text: seals once, then one
 * line per sealed leaf, "leaf_index<TAB>hex(canonical bytes)", in leaf order
 * (the input of fintx-verify).
 */
Datum
fintx_audit_export(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		size;
	int64		from;
	int64		to;
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2];
	SPIPlanPtr	plan;
	Portal		portal;
	StringInfoData buf;
	StringInfoData line;
	MemoryContext rowcxt;
	int			nestlevel;

	fintx_authz_require(FINTX_OP_AUDIT_READ, "audit log");
	size = fintx_seal_log();
	from = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	to = PG_ARGISNULL(1) ? size - 1 : PG_GETARG_INT64(1);
	if (from < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_leaf must not be negative")));
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	nestlevel = fintx_jit_off();
	fintx_spi_connect();
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "fintx export row", ALLOCSET_DEFAULT_SIZES);
	/* leaves [from, to] of the sealed ones, [from, to + 1) below */
	to = Min(to, size - 1);
	args[0] = Int64GetDatum(from);
	args[1] = Int64GetDatum(Max(to + 1, from));
	plan = SPI_prepare("SELECT " LEAF_INDEX_COL ", e.entry_id, e.recorded_at, e.actor, e.session_role,"
					   "       e.action, e.object_type, e.object_id, e.details" LEAF_RANGE_FROM
					   " ORDER BY r.first_leaf, e.entry_id", 2, types);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed");
	portal = SPI_cursor_open(NULL, plan, args, NULL, false);
	initStringInfo(&buf);
	initStringInfo(&line);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			FintxAuditEntry e;
			MemoryContext old;
			Datum		value;
			bool		vnull = false;

			CHECK_FOR_INTERRUPTS();
			old = MemoryContextSwitchTo(rowcxt);
			fintx_audit_entry_from_row(tup, desc, 2, &e);
			fintx_audit_canonical(&buf, &e);
			resetStringInfo(&line);
			appendStringInfo(&line, "%lld\t", (long long) DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull)));
			enlargeStringInfo(&line, buf.len * 2 + 1);
			line.len += hex_encode(buf.data, buf.len, line.data + line.len);
			line.data[line.len] = '\0';
			MemoryContextSwitchTo(old);
			value = CStringGetTextDatum(line.data);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &vnull);
			MemoryContextReset(rowcxt);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	return (Datum) 0;
}
