/*-------------------------------------------------------------------------
 * direct.c
 *	  Rows of the hot path written with the table and index access methods
 *	  instead of SQL statements.
 *
 *	  A transfer writes its accounts, its transfer row, its audit entry, its
 *	  outbox event and (for a service) its access-log row. Run as SQL, each of
 *	  those statements pays for plan validation, executor start-up, expression
 *	  set-up and shutdown, which cost more than the rows themselves. Here the
 *	  rows go straight to heap_insert / heap_update and every index of the
 *	  table (ExecInsertIndexTuples: unique checks, partial indexes, all index
 *	  types), NOT NULL and CHECK constraints are checked (ExecConstraints),
 *	  account rows are found through their unique index and locked the way
 *	  SELECT ... FOR UPDATE locks them (following the update chain in READ
 *	  COMMITTED, a serialization failure in REPEATABLE READ and above).
 *
 *	  What is not done, on purpose: triggers. fintx's own tables have no
 *	  INSERT triggers and only fintx writes them; a trigger a user adds to a
 *	  fintx table does not fire for fintx's writes (docs/operations.md). The
 *	  functions run as the extension owner (SECURITY DEFINER), who owns the
 *	  tables, so row security and table privileges do not apply either.
 *
 *	  The callers name each table's columns; the layout is checked when the
 *	  table is opened, so a changed table fails loudly instead of receiving
 *	  values in the wrong columns.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fintx.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "storage/sinval.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/syscache.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

/*
 * What every call looks up again otherwise (a fifth of the relation work of a
 * transfer): the Oid of schema fintx, the Oids of its relations by name, and
 * which relations were found to have the columns fintx writes. Kept until a
 * schema or a relation changes: any relcache invalidation (ALTER TABLE, DROP,
 * a rename, a re-created extension; also VACUUM and ANALYZE) forgets it all,
 * and a relation is looked up after its lock is taken, when the invalidations
 * of every committed change that conflicts with that lock have been received.
 */
#define FINTX_CACHED_RELATIONS 32

typedef struct CachedRelation
{
	char		name[NAMEDATALEN];	/* found by this name ("" if not) */
	Oid			relid;
	const FintxColumn *checked; /* CheckLayout passed with these columns */
	int			nchecked;
} CachedRelation;

static Oid	fintx_namespace = InvalidOid;
static CachedRelation cached[FINTX_CACHED_RELATIONS];
static int	ncached = 0;
static bool callbacks_set = false;

static void
ForgetRelations(void)
{
	fintx_namespace = InvalidOid;
	ncached = 0;
}

static void
ForgetNamespace(Datum arg, int cacheid, uint32 hashvalue)
{
	ForgetRelations();
}

static void
ForgetRelation(Datum arg, Oid relid)
{
	ForgetRelations();
}

/* Registers (once per backend) the callbacks that keep the cache. */
static void
KeepCache(void)
{
	if (!callbacks_set)
	{
		CacheRegisterSyscacheCallback(NAMESPACEOID, ForgetNamespace, (Datum) 0);
		CacheRegisterRelcacheCallback(ForgetRelation, (Datum) 0);
		callbacks_set = true;
	}
}

/* The Oid of schema fintx, kept per backend until the schema changes. */
Oid
fintx_namespace_oid(void)
{
	KeepCache();
	if (!OidIsValid(fintx_namespace))
		fintx_namespace = get_namespace_oid("fintx", false);
	return fintx_namespace;
}

/* The cache entry of relid, a new one if there is room, or NULL. */
static CachedRelation *
CachedEntry(Oid relid)
{
	for (int i = 0; i < ncached; i++)
		if (cached[i].relid == relid)
			return &cached[i];
	if (ncached == FINTX_CACHED_RELATIONS)
		return NULL;			/* LCOV_EXCL_LINE: fintx writes fewer relations */
	cached[ncached].name[0] = '\0';
	cached[ncached].relid = relid;
	cached[ncached].checked = NULL;
	cached[ncached].nchecked = 0;
	return &cached[ncached++];
}

/* Oid of relation fintx.name, or InvalidOid if there is none. */
static Oid
FintxRelid(const char *name)
{
	Oid			nsp = fintx_namespace_oid();
	Oid			relid;
	CachedRelation *entry;

	for (int i = 0; i < ncached; i++)
		if (strcmp(cached[i].name, name) == 0)
			return cached[i].relid;
	relid = get_relname_relid(name, nsp);
	if (OidIsValid(relid) && (entry = CachedEntry(relid)) != NULL)
		strlcpy(entry->name, name, NAMEDATALEN);
	return relid;
}

/*
 * Oid of relation fintx.name, locked in mode; 42P01 if there is none. As
 * RangeVarGetRelidExtended does: the name is looked up again until no
 * invalidation arrived between the lookup and the lock (the lock, or for a
 * name not found AcceptInvalidationMessages, takes in those of every
 * committed change). Without it, a transaction open across another
 * session's rename would write into the renamed table, a drop would be
 * XX000, and a table created meanwhile would still be missing.
 */
static Oid
LockedFintxRelid(const char *name, LOCKMODE mode)
{
	Oid			relid;
	Oid			prev = InvalidOid;
	bool		retry = false;

	for (;;)
	{
		uint64		invals = SharedInvalidMessageCounter;

		relid = FintxRelid(name);
		if (retry)
		{
			if (relid == prev)
				break;
			if (OidIsValid(prev))
				UnlockRelationOid(prev, mode);
		}
		if (OidIsValid(relid))
			LockRelationOid(relid, mode);
		else
			AcceptInvalidationMessages();
		if (invals == SharedInvalidMessageCounter)
			break;
		retry = true;
		prev = relid;
	}
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"fintx.%s\" does not exist", name)));
	return relid;
}

/* 55000 unless rel is of the kind fintx writes it as. */
static void
CheckKind(Relation rel, char relkind)
{
	if (rel->rd_rel->relkind != relkind)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"fintx.%s\" is not the kind of table fintx writes", RelationGetRelationName(rel)),
				 errdetail("fintx writes it as %s.", relkind == RELKIND_PARTITIONED_TABLE ? "a partitioned table" : "a plain table"),
				 errhint("Reinstall or upgrade the extension.")));
}

/* Checks that the table's columns are exactly the names the caller writes. */
static void
CheckLayout(Relation rel, const FintxColumn *columns, int ncolumns)
{
	TupleDesc	desc = RelationGetDescr(rel);
	CachedRelation *entry;
	bool		ok;

	KeepCache();
	entry = CachedEntry(RelationGetRelid(rel));
	if (entry != NULL && entry->checked == columns && entry->nchecked == ncolumns)
		return;
	ok = desc->natts == ncolumns;
	for (int i = 0; ok && i < ncolumns; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		ok = !att->attisdropped && att->atttypid == columns[i].type &&
			strcmp(NameStr(att->attname), columns[i].name) == 0;
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"fintx.%s\" does not have the columns fintx writes", RelationGetRelationName(rel)),
				 errdetail("fintx writes the columns its installation script created; reinstall or upgrade the extension.")));
	if (entry != NULL)
	{
		entry->checked = columns;
		entry->nchecked = ncolumns;
	}
}

/*
 * Refuses a table with a deferrable unique or exclusion constraint. For those,
 * ExecInsertIndexTuples returns the indexes whose check must wait for the
 * commit, and the executor queues that check as a trigger, which these writes
 * do not have. fintx's tables have none; one added by hand is refused rather
 * than left unchecked.
 */
static void
RefuseDeferred(FintxLeaf *leaf)
{
	for (int i = 0; i < leaf->rri->ri_NumIndices; i++)
		if (!leaf->rri->ri_IndexRelationDescs[i]->rd_index->indimmediate)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("deferrable constraints on \"fintx.%s\" are not supported",
							RelationGetRelationName(leaf->rel)),
					 errdetail("Index \"%s\" is deferrable.",
							   RelationGetRelationName(leaf->rri->ri_IndexRelationDescs[i]))));
}

/* Opens one leaf relation for writing (speculative: for insert-unless-exists). */
static void
OpenLeaf(FintxLeaf *leaf, Relation rel, const FintxColumn *columns, int ncolumns, bool speculative)
{
	CheckLayout(rel, columns, ncolumns);
	leaf->rel = rel;
	leaf->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(leaf->rri, rel, 0, NULL, 0);
	ExecOpenIndices(leaf->rri, speculative);
	RefuseDeferred(leaf);
	leaf->slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsVirtual);
	leaf->heap_slot = NULL;
	leaf->table_slot = NULL;
	leaf->scan = NULL;
	leaf->buffer = NULL;
	leaf->nbuffered = 0;
	leaf->nslots = 0;
}

/* Ends the leaf's index scan (fintx_direct_find). */
static void
EndScan(FintxLeaf *leaf)
{
	Relation	index = leaf->scan->indexRelation;

	index_endscan(leaf->scan);
	index_close(index, NoLock);
	leaf->scan = NULL;
}

static void FlushLeaf(FintxLeaf *leaf, EState *estate);

static void
CloseLeaf(FintxLeaf *leaf, EState *estate)
{
	if (leaf->rel == NULL)
		return;
	FlushLeaf(leaf, estate);
	for (int i = 0; i < leaf->nslots && leaf->buffer[i] != NULL; i++)
		ExecDropSingleTupleTableSlot(leaf->buffer[i]);
	if (leaf->scan != NULL)
		EndScan(leaf);
	ExecCloseIndices(leaf->rri);
	ExecDropSingleTupleTableSlot(leaf->slot);
	if (leaf->heap_slot)
		ExecDropSingleTupleTableSlot(leaf->heap_slot);
	if (leaf->table_slot)
		ExecDropSingleTupleTableSlot(leaf->table_slot);
	table_close(leaf->rel, NoLock);
	leaf->rel = NULL;
}

/*
 * Starts a group of direct writes: refuses them where SQL would (read-only
 * transaction, parallel mode) and makes earlier changes of this transaction
 * visible. Inserts need no snapshot; the group's statement snapshot is taken
 * when a row is first looked up (GroupSnapshot).
 */
EState *
fintx_direct_begin(void)
{
	EState	   *estate;

	PreventCommandIfReadOnly("INSERT");
	PreventCommandIfParallelMode("INSERT");
	CommandCounterIncrement();
	estate = CreateExecutorState();
	estate->es_output_cid = GetCurrentCommandId(true);
	return estate;
}

/*
 * The group's statement snapshot, taken (and made active) at the first
 * lookup, as SPI takes one per statement: in READ COMMITTED it is newer than
 * anything the group waited for before (a concurrent claim of the same key),
 * so rows committed meanwhile are seen.
 */
static Snapshot
GroupSnapshot(EState *estate)
{
	if (estate->es_snapshot == InvalidSnapshot)
	{
		CommandCounterIncrement();
		PushActiveSnapshot(GetTransactionSnapshot());
		estate->es_snapshot = GetActiveSnapshot();
	}
	return estate->es_snapshot;
}

void
fintx_direct_end(EState *estate)
{
	bool		snapshot = estate->es_snapshot != InvalidSnapshot;

	FreeExecutorState(estate);
	if (snapshot)
		PopActiveSnapshot();
}

/* Opens fintx.name (a table of kind relkind) and resets t for a write group. */
static Relation
OpenTable(FintxTable *t, EState *estate, const char *name, char relkind, const FintxColumn *columns, int ncolumns)
{
	Relation	rel = table_open(LockedFintxRelid(name, RowExclusiveLock), NoLock);

	CheckKind(rel, relkind);
	memset(t, 0, sizeof(*t));
	/* rows get the current command id: SPI statements may have run since the group began */
	estate->es_output_cid = GetCurrentCommandId(true);
	t->estate = estate;
	t->columns = columns;
	t->ncolumns = ncolumns;
	return rel;
}

/* Opens fintx.name, a plain table, for writing rows with exactly the given columns. */
void
fintx_direct_open(FintxTable *t, EState *estate, const char *name,
				  const FintxColumn *columns, int ncolumns)
{
	OpenLeaf(&t->leaf, OpenTable(t, estate, name, RELKIND_RELATION, columns, ncolumns), columns, ncolumns, false);
}

/*
 * Opens fintx.name, a partitioned table, as the parent; its partitions are
 * opened when a row is routed to them (fintx_direct_insert_routed).
 */
void
fintx_direct_open_partitioned(FintxTable *t, EState *estate, const char *name,
							  const FintxColumn *columns, int ncolumns)
{
	Relation	rel = OpenTable(t, estate, name, RELKIND_PARTITIONED_TABLE, columns, ncolumns);

	CheckLayout(rel, columns, ncolumns);
	t->parent = rel;
}

/*
 * Opens fintx.name (a plain table) for fintx_direct_insert_unless_exists.
 * Every unique index of the table arbitrates (NIL arbiter list): another
 * unique index on the same key (one added by hand, or the copy REINDEX
 * CONCURRENTLY builds) reports the same existing row instead of raising 23505.
 */
void
fintx_direct_open_speculative(FintxTable *t, EState *estate, const char *name,
							  const FintxColumn *columns, int ncolumns)
{
	OpenLeaf(&t->leaf, OpenTable(t, estate, name, RELKIND_RELATION, columns, ncolumns), columns, ncolumns, true);
}

void
fintx_direct_close(FintxTable *t)
{
	CloseLeaf(&t->leaf, t->estate);
	for (int i = 0; i < t->nparts; i++)
		CloseLeaf(&t->parts[i], t->estate);
	if (t->parent)
		table_close(t->parent, NoLock);
}


/* Puts a row into a slot of the leaf (its virtual slot, or a buffered one) and checks its constraints. */
static TupleTableSlot *
StoreRow(FintxLeaf *leaf, TupleTableSlot *slot, EState *estate, const Datum *values, const bool *nulls)
{
	int			natts = slot->tts_tupleDescriptor->natts;

	ExecClearTuple(slot);
	memcpy(slot->tts_values, values, sizeof(Datum) * natts);
	memcpy(slot->tts_isnull, nulls, sizeof(bool) * natts);
	ExecStoreVirtualTuple(slot);
	if (leaf->rel->rd_att->constr)
		ExecConstraints(leaf->rri, slot, estate);
	return slot;
}

/*
 * Writes the rows buffered in a leaf: to the heap in one call (heap_multi_insert
 * fills a page at a time and logs one WAL record per page instead of one per
 * row), then to every index, row by row, as COPY does.
 */
static void
FlushLeaf(FintxLeaf *leaf, EState *estate)
{
	int			n = leaf->nbuffered;

	if (n == 0)
		return;
	/* one row (a single transfer's): heap_insert, the plain insert record */
	if (n == 1)
		table_tuple_insert(leaf->rel, leaf->buffer[0], estate->es_output_cid, 0, NULL);
	else
		table_multi_insert(leaf->rel, leaf->buffer, n, estate->es_output_cid, 0, NULL);
	for (int i = 0; i < n; i++)
	{
		if (leaf->rri->ri_NumIndices > 0)
			(void) ExecInsertIndexTuples(leaf->rri, leaf->buffer[i], estate, false, false, NULL, NIL);
		ExecClearTuple(leaf->buffer[i]);
		ResetPerTupleExprContext(estate);
	}
	leaf->nbuffered = 0;
}

/*
 * Inserts one row into a leaf: constraints now, heap and indexes when the
 * leaf's buffer is full or the table is closed. Nothing in fintx reads a
 * table it is inserting into before closing it.
 */
static void
InsertLeaf(FintxLeaf *leaf, EState *estate, const Datum *values, const bool *nulls)
{
	TupleTableSlot *slot;

	if (leaf->nbuffered == FINTX_INSERT_BUFFER)
		FlushLeaf(leaf, estate);
	/* a single transfer buffers one row per table: the array grows with the rows */
	if (leaf->nbuffered == leaf->nslots)
	{
		int			n = Min(Max(leaf->nslots * 2, 4), FINTX_INSERT_BUFFER);

		if (leaf->buffer == NULL)
			leaf->buffer = palloc0(sizeof(TupleTableSlot *) * n);
		else
		{
			leaf->buffer = repalloc(leaf->buffer, sizeof(TupleTableSlot *) * n);
			memset(leaf->buffer + leaf->nslots, 0, sizeof(TupleTableSlot *) * (n - leaf->nslots));
		}
		leaf->nslots = n;
	}
	if (leaf->buffer[leaf->nbuffered] == NULL)
		leaf->buffer[leaf->nbuffered] = table_slot_create(leaf->rel, NULL);
	slot = StoreRow(leaf, leaf->buffer[leaf->nbuffered], estate, values, nulls);
	/* the values may live in memory the caller reuses: the slot keeps a copy */
	ExecMaterializeSlot(slot);
	leaf->nbuffered++;
	ResetPerTupleExprContext(estate);
}

/* Inserts one row (values and nulls in column order) into a plain table. */
void
fintx_direct_insert(FintxTable *t, const Datum *values, const bool *nulls)
{
	Assert(t->parent == NULL);
	InsertLeaf(&t->leaf, t->estate, values, nulls);
}

/*
 * Under REPEATABLE READ and SERIALIZABLE, a conflicting row this snapshot
 * cannot see (committed after it was taken) is a serialization failure, as
 * for INSERT ... ON CONFLICT DO NOTHING.
 */
static void
CheckConflictVisible(FintxLeaf *leaf, EState *estate, ItemPointer tid)
{
	TupleTableSlot *slot;
	bool		isnull;

	if (!IsolationUsesXactSnapshot())
		return;
	if (leaf->table_slot == NULL)
		leaf->table_slot = table_slot_create(leaf->rel, NULL);
	slot = leaf->table_slot;
	if (!table_tuple_fetch_row_version(leaf->rel, tid, SnapshotAny, slot))
		elog(ERROR, "failed to fetch conflicting row of \"fintx.%s\"", RelationGetRelationName(leaf->rel));	/* LCOV_EXCL_LINE */
	if (!table_tuple_satisfies_snapshot(leaf->rel, slot, GroupSnapshot(estate)) &&
		!TransactionIdIsCurrentTransactionId(DatumGetTransactionId(slot_getsysattr(slot, MinTransactionIdAttributeNumber, &isnull))))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access due to concurrent update")));
	ExecClearTuple(slot);
}

/*
 * Inserts a row unless the arbiter index already holds its key, as INSERT
 * ... ON CONFLICT DO NOTHING does (speculative insertion): a concurrent
 * inserter of the same key is waited for; if it commits, nothing is inserted
 * and false returned, if it aborts, the row is inserted. Returns true if the
 * row was inserted.
 *
 * Unlike the executor, the first attempt skips the pre-check (a second descent
 * of the arbiter index): keys are expected to be new, and the speculative
 * insertion itself reports a conflicting entry, live or in progress, without
 * waiting. Only then is the row killed and the pre-check, which waits, run.
 */
bool
fintx_direct_insert_unless_exists(FintxTable *t, const Datum *values, const bool *nulls)
{
	FintxLeaf  *leaf = &t->leaf;
	EState	   *estate = t->estate;
	bool		precheck = false;

	FlushLeaf(leaf, estate);
	for (;;)
	{
		TupleTableSlot *slot;
		ItemPointerData conflict;
		uint32		token;
		bool		spec_conflict = false;
		List	   *recheck;

		CHECK_FOR_INTERRUPTS();
		slot = StoreRow(leaf, leaf->slot, estate, values, nulls);
		if (precheck && !ExecCheckIndexConstraints(leaf->rri, slot, estate, &conflict, NIL))
		{
			CheckConflictVisible(leaf, estate, &conflict);
			ResetPerTupleExprContext(estate);
			return false;
		}
		token = SpeculativeInsertionLockAcquire(GetCurrentTransactionId());
		table_tuple_insert_speculative(leaf->rel, slot, estate->es_output_cid, 0, NULL, token);
		recheck = ExecInsertIndexTuples(leaf->rri, slot, estate, false, true, &spec_conflict, NIL);
		list_free(recheck);
		table_tuple_complete_speculative(leaf->rel, slot, token, !spec_conflict);
		SpeculativeInsertionLockRelease(GetCurrentTransactionId());
		ResetPerTupleExprContext(estate);
		if (!spec_conflict)
			return true;
		/* the key exists or is being inserted: wait for its inserter, look again */
		precheck = true;
	}
}

/*
 * Inserts one row into the partition of a LIST-partitioned table whose bound
 * holds the bigint key (the caller computes the partition key expression).
 */
void
fintx_direct_insert_routed(FintxTable *t, int64 key, const Datum *values, const bool *nulls)
{
	/* as the executor routes: partitions being detached concurrently are skipped in READ COMMITTED */
	PartitionDesc pd = RelationGetPartitionDesc(t->parent, !IsolationUsesXactSnapshot());
	PartitionBoundInfo bi = pd->boundinfo;
	Oid			partoid = InvalidOid;
	FintxLeaf  *leaf = NULL;

	for (int i = 0; bi != NULL && i < bi->ndatums; i++)
		if (DatumGetInt64(bi->datums[i][0]) == key)
			partoid = pd->oids[bi->indexes[i]];
	if (!OidIsValid(partoid))
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("no partition of relation \"fintx.%s\" found for row", RelationGetRelationName(t->parent)),
				 errdetail("Partition key of the failing row contains %lld.", (long long) key)));
	for (int i = 0; i < t->nparts; i++)
		if (RelationGetRelid(t->parts[i].rel) == partoid)
			leaf = &t->parts[i];
	if (leaf == NULL)
	{
		Relation	part;

		if (t->nparts == FINTX_DIRECT_MAX_PARTS)
			elog(ERROR, "too many partitions of \"fintx.%s\" in one write", RelationGetRelationName(t->parent));	/* LCOV_EXCL_LINE */
		part = table_open(partoid, RowExclusiveLock);
		CheckKind(part, RELKIND_RELATION);	/* not a foreign table, nor partitioned again */
		leaf = &t->parts[t->nparts++];
		OpenLeaf(leaf, part, t->columns, t->ncolumns, false);
	}
	InsertLeaf(leaf, t->estate, values, nulls);
}

/*
 * Finds the row with key in the one-column unique index fintx.index_name
 * (equality by eqproc) as the statement snapshot sees it, without locking it.
 * Returns it in a slot owned by t (valid until the next find or lock), or
 * NULL if there is none.
 */
TupleTableSlot *
fintx_direct_find(FintxTable *t, const char *index_name, RegProcedure eqproc, Datum key)
{
	FintxLeaf  *leaf = &t->leaf;
	Oid			indexoid = LockedFintxRelid(index_name, AccessShareLock);
	ScanKeyData skey;

	FlushLeaf(leaf, t->estate);
	if (leaf->table_slot == NULL)
		leaf->table_slot = table_slot_create(leaf->rel, NULL);
	/* one scan per index and write group, rescanned for every key */
	if (leaf->scan != NULL && RelationGetRelid(leaf->scan->indexRelation) != indexoid)
		EndScan(leaf);
	if (leaf->scan == NULL)
	{
		Relation	index = index_open(indexoid, NoLock);

		if (index->rd_index->indrelid != RelationGetRelid(leaf->rel))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("index \"fintx.%s\" is not an index of table \"fintx.%s\"",
							index_name, RelationGetRelationName(leaf->rel)),
					 errhint("Reinstall or upgrade the extension.")));
		leaf->scan = index_beginscan(leaf->rel, index, GroupSnapshot(t->estate), 1, 0);
	}
	ScanKeyInit(&skey, 1, BTEqualStrategyNumber, eqproc, key);
	index_rescan(leaf->scan, &skey, 1, NULL, 0);
	return index_getnext_slot(leaf->scan, ForwardScanDirection, leaf->table_slot) ? leaf->table_slot : NULL;
}

/*
 * Locks the row at tid (found by fintx_direct_find) FOR UPDATE, as SELECT
 * ... FOR UPDATE does: waits for a concurrent writer, then in READ COMMITTED
 * locks the newest version, in REPEATABLE READ and SERIALIZABLE fails with
 * 40001 if the row changed.
 * Returns the locked version in a slot owned by t, or NULL if the row was
 * deleted.
 */
TupleTableSlot *
fintx_direct_lock(FintxTable *t, ItemPointer tid)
{
	FintxLeaf  *leaf = &t->leaf;
	TM_FailureData tmfd;
	TM_Result	res;
	int			flags = TUPLE_LOCK_FLAG_LOCK_UPDATE_IN_PROGRESS;
	ItemPointerData target = *tid;

	Assert(leaf->table_slot != NULL);	/* rows are found before they are locked */
	if (!IsolationUsesXactSnapshot())
		flags |= TUPLE_LOCK_FLAG_FIND_LAST_VERSION;
	res = table_tuple_lock(leaf->rel, &target, GroupSnapshot(t->estate), leaf->table_slot,
						   t->estate->es_output_cid, LockTupleExclusive, LockWaitBlock, flags, &tmfd);
	switch (res)
	{
		case TM_Ok:
			return leaf->table_slot;
		case TM_Deleted:
			if (IsolationUsesXactSnapshot())
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to concurrent delete")));
			return NULL;
		case TM_Updated:
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent update")));
			break;
			/* LCOV_EXCL_START: the row was changed by this very statement */
		default:
			elog(ERROR, "unexpected result %d locking a row of \"fintx.%s\"", (int) res,
				 RelationGetRelationName(leaf->rel));
			/* LCOV_EXCL_STOP */
	}
	return NULL;				/* LCOV_EXCL_LINE: keep compiler quiet */
}

/*
 * Replaces the row at tid (locked by this transaction) by one with the given
 * columns replaced; new index entries only where the update is not HOT.
 */
void
fintx_direct_update(FintxTable *t, ItemPointer tid, HeapTuple old,
					const Datum *values, const bool *nulls, const bool *replace)
{
	FintxLeaf  *leaf = &t->leaf;
	HeapTuple	tup = heap_modify_tuple(old, RelationGetDescr(leaf->rel), (Datum *) values,
										(bool *) nulls, (bool *) replace);

	if (leaf->heap_slot == NULL)
		leaf->heap_slot = MakeSingleTupleTableSlot(RelationGetDescr(leaf->rel), &TTSOpsHeapTuple);
	ExecStoreHeapTuple(tup, leaf->heap_slot, false);
	if (leaf->rel->rd_att->constr)
		ExecConstraints(leaf->rri, leaf->heap_slot, t->estate);
	simple_heap_update(leaf->rel, tid, tup);
	if (!HeapTupleIsHeapOnly(tup) && leaf->rri->ri_NumIndices > 0)
	{
		/* the slot holds tup, whose t_self is now the new version */
		leaf->heap_slot->tts_tid = tup->t_self;
		(void) ExecInsertIndexTuples(leaf->rri, leaf->heap_slot, t->estate, true, false, NULL, NIL);
	}
	ExecClearTuple(leaf->heap_slot);
	ResetPerTupleExprContext(t->estate);
	heap_freetuple(tup);
}

/* Inserts rows (values and nulls row after row) into plain table fintx.name in write group estate. */
void
fintx_direct_write_rows(EState *estate, const char *name, const FintxColumn *columns, int ncolumns,
						int nrows, const Datum *values, const bool *nulls)
{
	FintxTable	t;

	fintx_direct_open(&t, estate, name, columns, ncolumns);
	for (int r = 0; r < nrows; r++)
		fintx_direct_insert(&t, values + (size_t) r * ncolumns, nulls + (size_t) r * ncolumns);
	fintx_direct_close(&t);
}

/* Inserts rows into plain table fintx.name in a write group of their own. */
void
fintx_direct_insert_rows(const char *name, const FintxColumn *columns, int ncolumns,
						 int nrows, const Datum *values, const bool *nulls)
{
	EState	   *estate = fintx_direct_begin();

	fintx_direct_write_rows(estate, name, columns, ncolumns, nrows, values, nulls);
	fintx_direct_end(estate);
}

/* nextval() of sequence fintx.name. */
int64
fintx_direct_nextval(const char *name)
{
	return nextval_internal(LockedFintxRelid(name, RowExclusiveLock), false);
}
