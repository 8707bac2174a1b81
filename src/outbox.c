/*-------------------------------------------------------------------------
 * outbox.c
 *	  The transactional outbox: events written in the producer's transaction
 *	  (fintx.emit() and every ledger change), commit-ordered gap-free
 *	  positions assigned by the sealing pass of sequencer.c, consumers with
 *	  committed offsets (poll/ack), filters, groups by hash of aggregateid,
 *	  a retry limit with dead letters, and the inbox (inbox_accept).
 *
 * The producer path only inserts into fintx.outbox. The sealing pass takes
 * the events whose transaction is visible in its snapshot but was not in the
 * previous batch's snapshot (PgQ-style batching, the same snapshot the audit
 * log is sealed with), numbers them after the last position and records
 * positions -> event_nos in fintx.outbox_position_runs, one row per run of
 * consecutive event numbers. A late committer joins the next batch; an
 * aborted transaction is never visible.
 *-------------------------------------------------------------------------
 */
#include "fintx.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "utils/xid8.h"

PG_FUNCTION_INFO_V1(fintx_emit);
PG_FUNCTION_INFO_V1(fintx_create_consumer);
PG_FUNCTION_INFO_V1(fintx_drop_consumer);
PG_FUNCTION_INFO_V1(fintx_poll);
PG_FUNCTION_INFO_V1(fintx_ack);
PG_FUNCTION_INFO_V1(fintx_reject);
PG_FUNCTION_INFO_V1(fintx_inbox_accept);
PG_FUNCTION_INFO_V1(fintx_inbox_prune);
PG_FUNCTION_INFO_V1(fintx_outbox_tail);
PG_FUNCTION_INFO_V1(fintx_relay_checkpoint);
PG_FUNCTION_INFO_V1(fintx_consumer_state);

#define OUTBOX_MAX_NAME		128
#define OUTBOX_MAX_ID		255
#define OUTBOX_MAX_PAYLOAD	(1024 * 1024)
#define OUTBOX_MAX_HEADERS	65536
#define OUTBOX_MAX_POLL		10000
#define OUTBOX_SCAN_FILTERED 10000
#define CONSUMER_MAX_NAME	64

int			fintx_outbox_retention_s = 86400;
int			fintx_outbox_wakeup_ms = 40;

/* waking the worker when a transaction that wrote events commits */
static bool outbox_written = false;
/*
 * The first position a sealing pass in this (caller's) transaction assigned, 0
 * if none: poll() hands out only positions below it, whose passes have
 * committed. A pass runs in the caller's transaction where no worker seals;
 * rolled back, its positions would go to other events, and a consumer that
 * had been given one would hold the wrong event.
 */
static int64 own_first_position = 0;
static bool xact_callback_set = false;

static SPIPlanPtr last_batch_plan = NULL;
static SPIPlanPtr seq_first_plan = NULL;
static SPIPlanPtr seq_next_plan = NULL;
static SPIPlanPtr batch_plan = NULL;
/* How ReadConsumer locks the consumer's row */
typedef enum ConsumerLock
{
	CONSUMER_NO_LOCK,
	CONSUMER_FOR_UPDATE,		/* it moves the consumer */
	CONSUMER_KEY_SHARE			/* it must not be dropped meanwhile */
} ConsumerLock;

static SPIPlanPtr consumer_plans[3];

#define CONSUMER_SELECT \
	"SELECT committed_position, group_size, group_member, aggregatetypes, types, max_retries," \
	"       stream_sequence FROM fintx.outbox_consumers WHERE name OPERATOR(pg_catalog.=) $1"
static SPIPlanPtr poll_plan = NULL;
static SPIPlanPtr window_plan = NULL;
static SPIPlanPtr advance_plan = NULL;
static SPIPlanPtr ack_plan = NULL;
static SPIPlanPtr inbox_plan = NULL;
static SPIPlanPtr first_dead_plan = NULL;

/* One consumer row. */
typedef struct Consumer
{
	int64		committed;
	int32		group_size;
	int32		group_member;
	Datum		aggregatetypes;	/* text[] or 0 */
	Datum		types;			/* text[] or 0 */
	int32		max_retries;
	int64		stream_sequence;
} Consumer;

/* Registers the outbox GUCs (called from _PG_init). */
void
fintx_outbox_init(void)
{
	DefineCustomIntVariable("fintx.outbox_retention",
							"Minimum age of outbox events before fintx.outbox_rotate() may remove them.",
							"Events are removed only after every consumer has acknowledged them.",
							&fintx_outbox_retention_s,
							86400, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("fintx.outbox_wakeup",
							"Shortest time between two sealing passes when committed outbox events wake the worker.",
							"A transaction that wrote outbox events wakes the worker at commit; it seals once this "
							"long has passed since its last pass. 0 disables the wake-up (sealing every "
							"fintx.seal_interval only).",
							&fintx_outbox_wakeup_ms,
							40, 0, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

#define NullArg fintx_null_argument

/*
 * Checks an aggregate type or event type: 1-128 characters from A-Z a-z 0-9
 * and _ . : - (they become NATS subject tokens); emits 22023 otherwise.
 */
static char *
CheckTypeName(const char *what, text *t)
{
	char	   *s = text_to_cstring(t);
	size_t		len = strlen(s);
	bool		ok = len > 0 && len <= OUTBOX_MAX_NAME && s[0] != '.' && s[len - 1] != '.';

	for (size_t i = 0; ok && i < len; i++)
	{
		char		c = s[i];

		ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			c == '_' || c == '.' || c == ':' || c == '-';
		if (c == '.' && i + 1 < len && s[i + 1] == '.')
			ok = false;
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s", what),
				 errdetail("An %s is 1 to %d characters from A-Z, a-z, 0-9 and _ . : -, without empty dot-separated parts.",
						   what, OUTBOX_MAX_NAME)));
	return s;
}

/* Checks a consumer name (1-64 of A-Z a-z 0-9 _ . : -, starting alphanumeric); emits 22023 otherwise. */
static char *
CheckConsumerName(FunctionCallInfo fcinfo, int arg)
{
	char	   *s;
	size_t		len;
	bool		ok;

	if (PG_ARGISNULL(arg))
		NullArg("consumer");
	s = text_to_cstring(PG_GETARG_TEXT_PP(arg));
	len = strlen(s);
	ok = len > 0 && len <= CONSUMER_MAX_NAME &&
		((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9'));
	for (size_t i = 1; ok && i < len; i++)
	{
		char		c = s[i];

		ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			c == '_' || c == '.' || c == ':' || c == '-';
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid consumer name"),
				 errdetail("Consumer names are 1 to %d characters from A-Z, a-z, 0-9 and _ . : -, starting with a letter or digit.",
						   CONSUMER_MAX_NAME)));
	/* a service needs an event.consume grant whose pattern matches the consumer's name */
	fintx_authz_require(FINTX_OP_EVENT_CONSUME, s);
	return s;
}

/*
 * At commit of a transaction that wrote outbox events, wakes the worker so
 * that it sequences the outbox soon instead of at the end of its interval;
 * one signal until the worker has run (fintx_worker_wake). The worker
 * sequences at most once per fintx.outbox_wakeup.
 */
static void
OutboxXactCallback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && outbox_written && fintx_outbox_wakeup_ms > 0)
		fintx_worker_wake();
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		outbox_written = false;
		own_first_position = 0;
	}
}

static void
EnsureXactCallback(void)
{
	if (!xact_callback_set)
	{
		RegisterXactCallback(OutboxXactCallback, NULL);
		xact_callback_set = true;
	}
}

/* Notes that this transaction writes events. */
static void
NoteOutboxWrite(void)
{
	if (outbox_written)
		return;
	outbox_written = true;
	EnsureXactCallback();
}

/*
 * A new event id: a UUID version 7 (RFC 9562): 48-bit Unix milliseconds, the
 * version, 74 random bits, the variant. The random bits come from the
 * kernel's source as before, but 64 ids' worth per call: one call per event
 * was 2.3 % of all CPU time of single transfers (OpenSSL's RAND_status and
 * RAND_bytes each time). Ids stay unpredictable (they are not derived from one
 * another) and time-ordered.
 */
#define EVENT_ID_POOL	64

static Datum
NewEventId(void)
{
	static uint8 pool[UUID_LEN * EVENT_ID_POOL];
	static int	left = 0;		/* ids' worth of random bytes not yet used */
	pg_uuid_t  *u = palloc(sizeof(pg_uuid_t));
	uint64		ms = (uint64) (GetCurrentTimestamp() / 1000 +
							   (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000);

	if (left == 0)
	{
		/* LCOV_EXCL_START: the kernel's random source does not fail */
		if (!pg_strong_random(pool, sizeof(pool)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random values")));
		/* LCOV_EXCL_STOP */
		left = EVENT_ID_POOL;
	}
	left--;
	memcpy(u->data, pool + left * UUID_LEN, UUID_LEN);
	explicit_bzero(pool + left * UUID_LEN, UUID_LEN);	/* each random byte is used once */
	for (int i = 0; i < 6; i++)
		u->data[i] = (unsigned char) (ms >> (8 * (5 - i)));
	u->data[6] = (u->data[6] & 0x0f) | 0x70;
	u->data[8] = (u->data[8] & 0x3f) | 0x80;
	return UUIDPGetDatum(u);
}


/* Columns of fintx.outbox, as direct.c checks them. */
static const FintxColumn outbox_columns[] = {
	{"id", UUIDOID},
	{"aggregatetype", TEXTOID},
	{"aggregateid", TEXTOID},
	{"type", TEXTOID},
	{"payload", JSONBOID},
	{"headers", JSONBOID},
	{"position", INT8OID},
	{"txid", XID8OID},
	{"created_at", TIMESTAMPTZOID},
	{"event_no", INT8OID}
};

/* Columns of fintx.outbox_position_runs. */
static const FintxColumn position_columns[] = {
	{"first_position", INT8OID}, {"first_event_no", INT8OID}, {"event_count", INT4OID}, {"batch_id", INT8OID}
};

/*
 * The positions after $2, each with its event number: the runs from the one
 * that holds position $2 + 1 on, expanded (at most $3 positions of each).
 * Ordered by (run_position, run_offset), which is position order that the
 * planner can see: it reads the runs in index order and stops at the LIMIT,
 * sorting only within a run, and an outer query ordered the same way needs no
 * sort of its own.
 */
#define POSITIONS_AFTER \
	"SELECT r.first_position OPERATOR(pg_catalog.+) g.i AS position," \
	"       r.first_event_no OPERATOR(pg_catalog.+) g.i AS event_no," \
	"       r.first_position AS run_position, g.i AS run_offset" \
	"  FROM (SELECT * FROM fintx.outbox_position_runs" \
	"         WHERE first_position OPERATOR(pg_catalog.>=) COALESCE((SELECT pg_catalog.max(first_position)" \
	"                 FROM fintx.outbox_position_runs WHERE first_position OPERATOR(pg_catalog.<=) $2), 0)" \
	"         ORDER BY first_position) r" \
	"  CROSS JOIN LATERAL (SELECT GREATEST($2 OPERATOR(pg_catalog.+) 1 OPERATOR(pg_catalog.-) r.first_position, 0) AS lo) b" \
	"  CROSS JOIN LATERAL pg_catalog.generate_series(b.lo," \
	"         LEAST(r.event_count OPERATOR(pg_catalog.-) 1::bigint, b.lo OPERATOR(pg_catalog.+) $3 OPERATOR(pg_catalog.-) 1)) g(i)"

static Datum Poll(FunctionCallInfo fcinfo);

/* {"actor": actor} or {"actor": actor, "audit_entry_id": id} (id >= 0). */
static Jsonb *
ActorHeaders(const char *actor, int64 audit_entry_id)
{
	JsonbParseState *st = NULL;
	JsonbValue	k;
	JsonbValue	v;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	k.type = jbvString;
	k.val.string.val = "actor";
	k.val.string.len = 5;
	pushJsonbValue(&st, WJB_KEY, &k);
	v.type = jbvString;
	v.val.string.val = (char *) actor;
	v.val.string.len = strlen(actor);
	pushJsonbValue(&st, WJB_VALUE, &v);
	if (audit_entry_id >= 0)
	{
		k.val.string.val = "audit_entry_id";
		k.val.string.len = 14;
		pushJsonbValue(&st, WJB_KEY, &k);
		v.type = jbvNumeric;
		v.val.numeric = int64_to_numeric(audit_entry_id);
		pushJsonbValue(&st, WJB_VALUE, &v);
	}
	return JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
}

/*
 * The slot of an event number: the partition key of fintx.outbox and
 * fintx.outbox_positions (outbox.sql).
 */
static inline int64
Slot(int64 event_no)
{
	return (event_no / FINTX_OUTBOX_SLOT_EVENTS) % FINTX_OUTBOX_SLOTS;
}

/* Inserts one event row into the outbox slot of its event number. */
static void
InsertEvent(FintxTable *t, Datum id, const char *aggregatetype, const char *aggregateid,
			const char *type, Jsonb *payload, Jsonb *headers)
{
	Datum		v[lengthof(outbox_columns)];
	bool		nulls[lengthof(outbox_columns)];
	int64		event_no = fintx_direct_nextval("outbox_event_no_seq");

	memset(nulls, 0, sizeof(nulls));
	v[0] = id;
	v[1] = CStringGetTextDatum(aggregatetype);
	v[2] = CStringGetTextDatum(aggregateid);
	v[3] = CStringGetTextDatum(type);
	v[4] = JsonbPGetDatum(payload);
	v[5] = JsonbPGetDatum(headers);
	v[6] = (Datum) 0;
	nulls[6] = true;
	v[7] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	v[8] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	v[9] = Int64GetDatum(event_no);
	fintx_direct_insert_routed(t, Slot(event_no), v, nulls);
}

/*
 * Inserts one event in the current transaction; the actor is added to the
 * headers. Returns the event id.
 */
Datum
fintx_outbox_record(const char *aggregatetype, const char *aggregateid, const char *type,
					Jsonb *payload, Jsonb *headers, const char *actor)
{
	EState	   *estate = fintx_direct_begin();
	FintxTable	t;
	Datum		id;
	Datum		all;

	NoteOutboxWrite();
	id = NewEventId();
	all = DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(headers),
							  JsonbPGetDatum(ActorHeaders(actor, -1)));
	fintx_direct_open_partitioned(&t, estate, "outbox", outbox_columns, lengthof(outbox_columns));
	InsertEvent(&t, id, aggregatetype, aggregateid, type, payload, DatumGetJsonbP(all));
	fintx_direct_close(&t);
	fintx_direct_end(estate);
	return id;
}

/*
 * Inserts one event per audit entry (ledger changes, all of one actor) in
 * the direct write group estate: type = action, aggregate = object, payload
 * = details.
 */
void
fintx_outbox_write_audit(EState *estate, FintxAuditEntry *entries, int n)
{
	FintxTable	t;

	NoteOutboxWrite();
	fintx_direct_open_partitioned(&t, estate, "outbox", outbox_columns, lengthof(outbox_columns));
	for (int i = 0; i < n; i++)
		InsertEvent(&t, NewEventId(), entries[i].object_type, entries[i].object_id,
					entries[i].action, entries[i].details,
					ActorHeaders(entries[i].actor, entries[i].entry_id));
	fintx_direct_close(&t);
}

/* ------------------------------------------------------------------------
 * Sequencing (called by the sealing pass of sequencer.c)
 * ------------------------------------------------------------------------
 */

/*
 * Reads the latest outbox batch into SPI_tuptable (batch_id, snapshot,
 * last_position); false if there is none (SPI connected). The plan is kept for
 * the session and shared by the sequencing pass, poll(), ack(), reject() and
 * outbox_tail(): it is made under fintx_index_planning() whoever runs it first.
 */
static bool
ReadLastBatch(bool read_only)
{
	int			ret;

	fintx_keep_plan(&last_batch_plan,
					"SELECT batch_id, snapshot, last_position FROM fintx.outbox_batches"
					" ORDER BY batch_id DESC LIMIT 1", 0, NULL);
	ret = fintx_execute_indexed(last_batch_plan, NULL, NULL, read_only, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "reading outbox batches failed");	/* LCOV_EXCL_LINE */
	return SPI_processed == 1;
}

/*
 * Before the first batch every committed event is new, numbered by this
 * database's outbox_event_no_seq (no cache), and nothing else of the outbox
 * has moved. Anything else was copied in: pg_restore copies each table in a
 * transaction of its own, the outbox's slots, outbox_batches, the positions,
 * the consumers and the sequence in an order that a parallel restore (-j)
 * varies. Numbering the events now would give them positions of their own,
 * and the restored batches and positions would clash with them (events
 * delivered twice or never): 55000 while an event is numbered beyond the
 * sequence, a position is recorded, or a consumer has moved past position 0
 * (a stream sequence alone is not a move: relay_checkpoint(c, 0, n) records
 * a stream that held n messages before the first event) (SPI connected).
 * It cannot see a restore whose outbox_batches is the only table still
 * loading when the others are done: restore in one transaction (docs).
 */
static void
CheckNoForeignEvents(void)
{
	bool		isnull;
	Datum		d;

	if (SPI_execute("SELECT (SELECT pg_catalog.max(event_no) FROM fintx.outbox)"
					"        OPERATOR(pg_catalog.>) (SELECT CASE WHEN is_called THEN last_value"
					"                                 ELSE last_value OPERATOR(pg_catalog.-) 1 END"
					"                                 FROM fintx.outbox_event_no_seq)"
					"     OR EXISTS (SELECT 1 FROM fintx.outbox_position_runs)"
					"     OR EXISTS (SELECT 1 FROM fintx.outbox_consumers"
					"                 WHERE committed_position OPERATOR(pg_catalog.>) 0)", false, 1) != SPI_OK_SELECT)
		elog(ERROR, "checking outbox event numbers failed");	/* LCOV_EXCL_LINE */
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull && DatumGetBool(d))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the outbox holds restored events or positions but no outbox batch"),
				 errdetail("A restore of the outbox (pg_restore) is in progress or did not finish; its events are sequenced once fintx.outbox_batches is restored."),
				 errhint("Restore with pg_restore --single-transaction, or point fintx.database at another database while restoring (docs/operations.md).")));
}

/*
 * Assigns positions to the events whose transaction is visible in snap but
 * was not visible in the previous batch's snapshot; own (an xid8 datum, or 0
 * when the sealing transaction has none) is skipped, as snap lists it as in
 * progress. Writes a batch row and notifies channel fintx_outbox with the new
 * tail. The caller holds the sealing lock and is SPI connected. Returns the
 * number of events sequenced.
 */
int64
fintx_outbox_sequence(Datum snap, Datum own, bool own_null)
{
	Oid			types[3] = {PG_SNAPSHOTOID, PG_SNAPSHOTOID, XID8OID};
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	bool		isnull;
	bool		exists;
	int64		batch_id = 0;
	int64		tail = 0;
	int64		count;
	int			ret;

	exists = ReadLastBatch(false);
	if (exists)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		batch_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		args[0] = SPI_datumTransfer(SPI_getbinval(tup, desc, 2, &isnull), false, -1);
		tail = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		fintx_require_local_snapshot(args[0], "outbox batch", batch_id);
	}
	else
	{
		CheckNoForeignEvents();
		args[0] = (Datum) 0;
		nulls[0] = 'n';
	}
	args[1] = snap;
	args[2] = own;
	nulls[2] = own_null ? 'n' : ' ';
#define SEQ_HEAD "SELECT o.event_no FROM fintx.outbox o WHERE "
#define SEQ_TAIL \
	" AND pg_catalog.pg_visible_in_snapshot(o.txid, $2) AND o.txid IS DISTINCT FROM $3" \
	" ORDER BY o.event_no"
	/* custom plans, as for the audit scan: the planner must see the xmin to use the txid index */
	fintx_keep_plan_opts(exists ? &seq_next_plan : &seq_first_plan,
						 exists ?
						 SEQ_HEAD "o.txid >= pg_catalog.pg_snapshot_xmin($1)"
						 " AND NOT pg_catalog.pg_visible_in_snapshot(o.txid, $1)" SEQ_TAIL
						 :
						 SEQ_HEAD "$1 IS NULL" SEQ_TAIL,
						 3, types, CURSOR_OPT_CUSTOM_PLAN);
	ret = SPI_execute_plan(exists ? seq_next_plan : seq_first_plan, args, nulls, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "sequencing outbox events failed: %s", SPI_result_code_string(ret));	/* LCOV_EXCL_LINE */
	count = (int64) SPI_processed;
	if (count == 0)
		return 0;
	if (!IsBackgroundWorker && own_first_position == 0)
	{
		own_first_position = tail + 1;
		EnsureXactCallback();
	}
	{
		/*
		 * positions tail + 1, tail + 2, ... in event_no order: one run per
		 * stretch of consecutive event numbers within one slot, in that slot
		 */
		SPITupleTable *tt = SPI_tuptable;
		EState	   *estate = fintx_direct_begin();
		FintxTable	t;
		Datum		v[4];
		bool		vnulls[4] = {false, false, false, false};
		int64		run_position = 0;	/* the open run: first position, first event, length */
		int64		run_event = 0;
		int64		run_len = 0;

		fintx_direct_open_partitioned(&t, estate, "outbox_position_runs", position_columns, 4);
		v[3] = Int64GetDatum(batch_id + 1);
		for (int64 i = 0; i <= count; i++)
		{
			int64		event_no = i < count ?
				DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull)) : 0;

			if (i < count && run_len > 0 && event_no == run_event + run_len &&
				Slot(event_no) == Slot(run_event) && run_len < PG_INT32_MAX)
			{
				run_len++;
				continue;
			}
			if (run_len > 0)
			{
				v[0] = Int64GetDatum(run_position);
				v[1] = Int64GetDatum(run_event);
				v[2] = Int32GetDatum((int32) run_len);
				fintx_direct_insert_routed(&t, Slot(run_event), v, vnulls);
			}
			run_position = tail + 1 + i;
			run_event = event_no;
			run_len = 1;
		}
		fintx_direct_close(&t);
		fintx_direct_end(estate);
	}
	{
		Oid			btypes[4] = {INT8OID, PG_SNAPSHOTOID, INT8OID, INT8OID};
		Datum		bargs[4];

		bargs[0] = Int64GetDatum(batch_id + 1);
		bargs[1] = snap;
		bargs[2] = Int64GetDatum(tail + 1);
		bargs[3] = Int64GetDatum(tail + count);
		fintx_keep_plan(&batch_plan,
						"INSERT INTO fintx.outbox_batches (batch_id, snapshot, first_position, last_position, sealed_at)"
						" VALUES ($1, $2, $3, $4, pg_catalog.clock_timestamp())",
						4, btypes);
		if (SPI_execute_plan(batch_plan, bargs, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "writing outbox batch failed");	/* LCOV_EXCL_LINE */
	}
	Async_Notify("fintx_outbox", psprintf("%lld", (long long) (tail + count)));

	/*
	 * Durable before visible: once committed, the positions are read by
	 * poll() and relays. With synchronous_commit = off a crash could take them
	 * back (and the events' own commits, which precede this one in the WAL),
	 * and the same positions would go to other events: a consumer that stored
	 * one would skip an event or hold one that never committed.
	 */
	ForceSyncCommit();
	return count;
}

/* ------------------------------------------------------------------------
 * Consumers
 * ------------------------------------------------------------------------
 */

/* Seals lazily when no worker does (SPI connected; seal connects on its own). */
static void
SealIfNoWorker(void)
{
	if (!fintx_worker_seals_here())
		(void) fintx_seal_log();
}

/* The sequenced tail: last assigned position, 0 if none (SPI connected). */
static int64
Tail(void)
{
	bool		isnull;
	int64		tail;

	/* not read-only: a new snapshot, which sees a batch SealIfNoWorker() wrote in this statement */
	if (!ReadLastBatch(false))
		return 0;
	tail = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	return tail;
}

/* Reads a consumer (FOR UPDATE if lock); emits 22023 if it does not exist (SPI connected). */
static void
ReadConsumer(const char *name, ConsumerLock lock, Consumer *c)
{
	static const char *const sql[3] = {
		CONSUMER_SELECT, CONSUMER_SELECT " FOR UPDATE", CONSUMER_SELECT " FOR KEY SHARE"
	};
	Oid			types[1] = {TEXTOID};
	Datum		arg = CStringGetTextDatum(name);
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;

	fintx_keep_plan(&consumer_plans[lock], sql[lock], 1, types);
	if (SPI_execute_plan(consumer_plans[lock], &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading outbox consumer failed");	/* LCOV_EXCL_LINE */
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("consumer \"%s\" does not exist", name),
				 errhint("Create it with fintx.create_consumer().")));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	c->committed = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	c->group_size = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
	c->group_member = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	c->aggregatetypes = SPI_getbinval(tup, desc, 4, &isnull);
	c->aggregatetypes = isnull ? (Datum) 0 : SPI_datumTransfer(c->aggregatetypes, false, -1);
	c->types = SPI_getbinval(tup, desc, 5, &isnull);
	c->types = isnull ? (Datum) 0 : SPI_datumTransfer(c->types, false, -1);
	c->max_retries = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
	c->stream_sequence = DatumGetInt64(SPI_getbinval(tup, desc, 7, &isnull));
}

/* Sets a consumer's offset (and stream sequence if given) (SPI connected). */
static void
SetOffset(const char *name, int64 position, int64 stream_sequence, bool set_sequence)
{
	Oid			types[4] = {TEXTOID, INT8OID, INT8OID, BOOLOID};
	Datum		args[4];

	args[0] = CStringGetTextDatum(name);
	args[1] = Int64GetDatum(position);
	args[2] = Int64GetDatum(stream_sequence);
	args[3] = BoolGetDatum(set_sequence);
	fintx_keep_plan(&ack_plan,
					"WITH c AS (UPDATE fintx.outbox_consumers"
					"              SET committed_position = $2, acked_at = pg_catalog.now(),"
					"                  stream_sequence = CASE WHEN $4 THEN $3 ELSE stream_sequence END"
					"            WHERE name OPERATOR(pg_catalog.=) $1 RETURNING name)"
					" DELETE FROM fintx.outbox_attempts a USING c"
					"  WHERE a.consumer OPERATOR(pg_catalog.=) c.name AND a.position OPERATOR(pg_catalog.<=) $2",
					4, types);
	if (SPI_execute_plan(ack_plan, args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "updating outbox consumer failed");	/* LCOV_EXCL_LINE */
}

/*
 * A consumer that fintx-relay feeds to a stream (it has published for it:
 * stream_sequence > 0) moves only by what a role that sees every event does:
 * another role's ack() or reject(), or its poll() that finds nothing it may
 * see in a window, would move the offset past events it cannot see and the
 * relay has not published, and the relay would never publish them.
 */
static bool
MayMoveOffset(Consumer *c)
{
	return c->stream_sequence == 0 || fintx_authz_sees_every_event();
}

static void
CheckMayMoveOffset(const char *name, Consumer *c)
{
	if (!MayMoveOffset(c))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("consumer \"%s\" feeds a stream (fintx-relay): only a role that sees every event may move it", name),
				 errdetail("It would skip events this role cannot see that the relay has not published.")));
}

/* Checks an acknowledged position against offset and tail: 55000 backwards, 22023 beyond the tail. */
static void
CheckAckPosition(const char *name, Consumer *c, int64 up_to)
{
	int64		tail;

	if (up_to < c->committed)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot move consumer \"%s\" back to position %lld", name, (long long) up_to),
				 errdetail("Its committed offset is %lld.", (long long) c->committed)));
	tail = Tail();
	if (up_to > tail)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("position %lld is beyond the sequenced tail", (long long) up_to),
				 errdetail("The last sequenced position is %lld.", (long long) tail)));
}

/*
 * fintx.emit(aggregatetype, aggregateid, type, payload, headers) → uuid
 * Writes an application event into the outbox in the caller's transaction;
 * emits 22023 for invalid input and 42501 for aggregate types reserved for
 * fintx's own events.
 */
Datum
fintx_emit(PG_FUNCTION_ARGS)
{
	char	   *aggtype;
	char	   *aggid;
	char	   *type;
	Jsonb	   *payload;
	Jsonb	   *headers;
	Datum		id;

	if (PG_ARGISNULL(0))
		NullArg("aggregatetype");
	if (PG_ARGISNULL(1))
		NullArg("aggregateid");
	if (PG_ARGISNULL(2))
		NullArg("type");
	if (PG_ARGISNULL(3))
		NullArg("payload");
	aggtype = CheckTypeName("aggregate type", PG_GETARG_TEXT_PP(0));
	type = CheckTypeName("event type", PG_GETARG_TEXT_PP(2));
	aggid = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (aggid[0] == '\0' || strlen(aggid) > OUTBOX_MAX_ID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("aggregate id must be 1 to %d bytes long", OUTBOX_MAX_ID)));
	/* it travels as a message header (fintx-relay's Fintx-Aggregate-Id), which cannot hold them */
	for (const unsigned char *p = (const unsigned char *) aggid; *p; p++)
		if (*p < 0x20 || *p == 0x7F)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("aggregate id must not contain control characters")));
	/* a service needs an event.emit grant whose pattern matches the aggregate type */
	fintx_authz_require(FINTX_OP_EVENT_EMIT, aggtype);
	/* fintx's own events, in any letter case, under their aggregate types or event types */
	if (pg_strcasecmp(aggtype, "transfer") == 0 || pg_strcasecmp(aggtype, "account") == 0 ||
		pg_strncasecmp(aggtype, "fintx", 5) == 0 || pg_strncasecmp(type, "transfer.", 9) == 0 ||
		pg_strncasecmp(type, "account.", 8) == 0 || pg_strncasecmp(type, "fintx", 5) == 0)
	{
		char	   *msg = psprintf("aggregate type \"%s\" or event type \"%s\" is reserved for fintx's own events",
								   aggtype, type);

		/* recorded first: a forged ledger event is an attempt to see in the log even if caught */
		fintx_authz_record_refusal(FINTX_OP_EVENT_EMIT, aggtype, msg);
		fintx_raise_recorded(errmsg("%s", msg));
	}
	payload = PG_GETARG_JSONB_P(3);
	if (VARSIZE(payload) > OUTBOX_MAX_PAYLOAD)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("payload is too large"),
				 errdetail("The payload is %zu bytes in binary form; the limit is %d bytes.",
						   (size_t) VARSIZE(payload), OUTBOX_MAX_PAYLOAD)));
	headers = PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4);
	if (headers && !JB_ROOT_IS_OBJECT(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object")));
	if (headers && VARSIZE(headers) > OUTBOX_MAX_HEADERS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers are too large"),
				 errdetail("The limit is %d bytes in binary form.", OUTBOX_MAX_HEADERS)));
	if (headers == NULL)
		headers = fintx_jsonb_from_text("{}");
	fintx_spi_connect();
	id = fintx_outbox_record(aggtype, aggid, type, payload, headers, fintx_principal());
	{
		pg_uuid_t  *u = SPI_palloc(sizeof(pg_uuid_t));

		memcpy(u, DatumGetUUIDP(id), sizeof(pg_uuid_t));
		id = UUIDPGetDatum(u);
	}
	SPI_finish();
	PG_RETURN_DATUM(id);
}

/* Checks a text[] filter argument: no NULL elements, each a valid type name. */
static void
CheckFilter(const char *what, ArrayType *arr)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a one-dimensional array", what)));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what),
				 errhint("Pass NULL to receive every %s.", what)));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must not contain null elements", what)));
		(void) CheckTypeName(what, DatumGetTextPP(elems[i]));
	}
}

/*
 * fintx.create_consumer(name [, group_size, group_member, aggregatetypes,
 * types, max_retries]) → boolean
 * Creates a consumer at offset 0 (it reads every retained event); returns
 * false if it exists already (its settings are left as they are). Members of
 * a group receive the events whose aggregateid hashes to their number.
 */
Datum
fintx_create_consumer(PG_FUNCTION_ARGS)
{
	char	   *name = CheckConsumerName(fcinfo, 0);
	int32		group_size = 1;
	int32		group_member = 0;
	int32		max_retries = 5;
	Datum		args[7];
	char		nulls[7] = {' ', ' ', ' ', 'n', 'n', ' ', ' '};
	Oid			types[7] = {TEXTOID, INT4OID, INT4OID, TEXTARRAYOID, TEXTARRAYOID, INT4OID, INT8OID};
	int			ret;
	bool		created;

	if (PG_NARGS() > 1)
	{
		if (PG_ARGISNULL(1))
			NullArg("group_size");
		if (PG_ARGISNULL(2))
			NullArg("group_member");
		group_size = PG_GETARG_INT32(1);
		group_member = PG_GETARG_INT32(2);
		if (group_size < 1 || group_size > 1024)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("group_size must be between 1 and 1024")));
		if (group_member < 0 || group_member >= group_size)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("group_member must be between 0 and group_size - 1")));
		if (!PG_ARGISNULL(3))
		{
			CheckFilter("aggregate type", PG_GETARG_ARRAYTYPE_P(3));
			args[3] = PG_GETARG_DATUM(3);
			nulls[3] = ' ';
		}
		if (!PG_ARGISNULL(4))
		{
			CheckFilter("event type", PG_GETARG_ARRAYTYPE_P(4));
			args[4] = PG_GETARG_DATUM(4);
			nulls[4] = ' ';
		}
		if (PG_ARGISNULL(5))
			NullArg("max_retries");
		max_retries = PG_GETARG_INT32(5);
		if (max_retries < 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_retries must be at least 1")));
	}
	args[0] = CStringGetTextDatum(name);
	args[1] = Int32GetDatum(group_size);
	args[2] = Int32GetDatum(group_member);
	args[5] = Int32GetDatum(max_retries);
	fintx_authz_log_admin_call(FINTX_OP_EVENT_CONSUME, "create_consumer", name);
	fintx_spi_connect();
	/*
	 * At offset 0, or just before the oldest retained position if older
	 * slots were rotated away: the consumer's first event is then right
	 * after its offset, as for any later one (fintx-relay checks that); at
	 * the tail if a rotation left no position.
	 */
	args[6] = Int64GetDatum(Tail());
	ret = SPI_execute_with_args("INSERT INTO fintx.outbox_consumers (name, group_size, group_member,"
								"       aggregatetypes, types, max_retries, committed_position)"
								" VALUES ($1, $2, $3, $4, $5, $6,"
								"   COALESCE((SELECT pg_catalog.min(first_position) FROM fintx.outbox_position_runs)"
								"              OPERATOR(pg_catalog.-) 1, $7))"
								" ON CONFLICT (name) DO NOTHING",
								7, types, args, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "creating consumer failed: %s", SPI_result_code_string(ret));	/* LCOV_EXCL_LINE */
	created = SPI_processed == 1;
	SPI_finish();
	PG_RETURN_BOOL(created);
}

/* fintx.drop_consumer(name) → boolean: removes a consumer, its inbox and dead letters. */
Datum
fintx_drop_consumer(PG_FUNCTION_ARGS)
{
	char	   *name = CheckConsumerName(fcinfo, 0);
	Oid			types[1] = {TEXTOID};
	Datum		arg = CStringGetTextDatum(name);
	bool		dropped;

	fintx_authz_log_admin_call(FINTX_OP_EVENT_CONSUME, "drop_consumer", name);
	fintx_spi_connect();
	if (SPI_execute_with_args("DELETE FROM fintx.outbox_consumers WHERE name OPERATOR(pg_catalog.=) $1",
							  1, types, &arg, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "dropping consumer failed");	/* LCOV_EXCL_LINE */
	dropped = SPI_processed == 1;
	SPI_finish();
	PG_RETURN_BOOL(dropped);
}

/*
 * fintx.poll(consumer, max_events) → SETOF fintx.outbox
 * Returns up to max_events events after the consumer's committed offset, in
 * position order, with position set; applies the consumer's filters and
 * group and skips its dead letters. Seals first when no worker does. When a
 * whole scanned window holds nothing for the consumer, its offset moves past
 * the window. Emits 22023 for invalid input or an unknown consumer. Every
 * query it runs is planned under fintx_index_planning(): a slot that was
 * empty when a kept plan was made must not be read by a sequential scan per
 * position once it fills up.
 */
Datum
fintx_poll(PG_FUNCTION_ARGS)
{
	int			nestlevel = fintx_index_planning();
	Datum		result = Poll(fcinfo);

	AtEOXact_GUC(true, nestlevel);
	return result;
}

/* fintx_poll's body. */
static Datum
Poll(FunctionCallInfo fcinfo)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name = CheckConsumerName(fcinfo, 0);
	int32		max_events;
	Consumer	c;
	int64		scan;
	Oid			types[10] = {TEXTOID, INT8OID, INT8OID, INT4OID, INT4OID, TEXTARRAYOID, TEXTARRAYOID, INT4OID,
		BOOLOID, INT8OID};
	Datum		args[10];
	char		nulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	uint64		nrows;
	Snapshot	snap;

	if (PG_ARGISNULL(1))
		NullArg("max_events");
	max_events = PG_GETARG_INT32(1);
	if (max_events < 0 || max_events > OUTBOX_MAX_POLL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_events must be between 0 and %d", OUTBOX_MAX_POLL)));
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	fintx_spi_connect();
	ReadConsumer(name, CONSUMER_NO_LOCK, &c);	/* 22023 before sealing */
	if (max_events == 0)
	{
		SPI_finish();
		return (Datum) 0;
	}
	SealIfNoWorker();

	/*
	 * The poll and the window query below read the positions under one
	 * snapshot. Under READ COMMITTED each would otherwise take its own, and a
	 * sealing pass committing between them would let the window cover
	 * positions the poll never saw: the offset would skip them.
	 */
	snap = RegisterSnapshot(GetTransactionSnapshot());
	scan = Max(OUTBOX_SCAN_FILTERED, max_events);	/* rows are pulled lazily */
	args[0] = CStringGetTextDatum(name);
	args[1] = Int64GetDatum(c.committed);
	args[2] = Int64GetDatum(scan);
	args[3] = Int32GetDatum(c.group_size);
	args[4] = Int32GetDatum(c.group_member);
	args[5] = c.aggregatetypes;
	nulls[5] = c.aggregatetypes ? ' ' : 'n';
	args[6] = c.types;
	nulls[6] = c.types ? ' ' : 'n';
	args[7] = Int32GetDatum(max_events);
	/* a service sees only the ledger events of accounts its grants cover */
	args[8] = BoolGetDatum(fintx_authz_sees_all());
	/*
	 * Only positions whose sealing pass has committed (see
	 * own_first_position), also for a poll that looks like a transaction of
	 * its own: the first statement of a pipeline, or one in a procedure that
	 * rolls back later, cannot tell that its transaction goes on.
	 */
	args[9] = Int64GetDatum(own_first_position > 0 ? own_first_position : PG_INT64_MAX);
	fintx_keep_plan(&poll_plan,
					"SELECT o.id, o.aggregatetype, o.aggregateid, o.type, o.payload, o.headers, p.position,"
					"       o.txid, o.created_at, o.event_no"
					"  FROM (" POSITIONS_AFTER " ORDER BY r.first_position, g.i LIMIT $3) p"
					/*
					 * a LATERAL subquery that cannot be pulled up: always an index probe
					 * per position, whatever the (generic, possibly stale) estimates say
					 */
					"  CROSS JOIN LATERAL (SELECT * FROM fintx.outbox o1"
					"                       WHERE o1.event_no OPERATOR(pg_catalog.=) p.event_no OFFSET 0) o"
					" WHERE ($4 OPERATOR(pg_catalog.=) 1 OR"
					"        ((pg_catalog.hashtextextended(o.aggregateid, 0) OPERATOR(pg_catalog.&) 9223372036854775807)"
					"          OPERATOR(pg_catalog.%) $4) OPERATOR(pg_catalog.=) $5)"
					"   AND ($6 IS NULL OR o.aggregatetype OPERATOR(pg_catalog.=) ANY ($6))"
					"   AND ($7 IS NULL OR o.type OPERATOR(pg_catalog.=) ANY ($7))"
					"   AND NOT EXISTS (SELECT 1 FROM fintx.outbox_dead_letters d"
					"                    WHERE d.consumer OPERATOR(pg_catalog.=) $1"
					"                      AND d.position OPERATOR(pg_catalog.=) p.position)"
					"   AND ($9 OR fintx.event_visible(o.aggregatetype, o.aggregateid, o.payload))"
					"   AND p.position OPERATOR(pg_catalog.<) $10"
					" ORDER BY p.run_position, p.run_offset LIMIT $8",
					10, types);
	if (SPI_execute_snapshot(poll_plan, args, nulls, snap, InvalidSnapshot, false, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "polling outbox failed");	/* LCOV_EXCL_LINE */
	nrows = SPI_processed;
	for (uint64 r = 0; r < nrows; r++)
	{
		Datum		values[10];
		bool		isnull[10];

		CHECK_FOR_INTERRUPTS();
		heap_deform_tuple(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, values, isnull);
		/* a service reads the counterparty's balance as null, as everywhere else */
		if (!DatumGetBool(args[8]) && !isnull[4] &&
			strcmp(TextDatumGetCString(values[1]), "transfer") == 0)
			values[4] = JsonbPGetDatum(fintx_authz_redact_transfer(DatumGetJsonbP(values[4])));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, isnull);
	}
	if (nrows == 0)
	{
		/* nothing for this consumer in the window: move past it (see MayMoveOffset) */
		bool		isnull;
		Datum		wmax;
		Oid			wtypes[4] = {TEXTOID, INT8OID, INT8OID, INT8OID};
		Datum		wargs[4] = {args[0], args[1], args[2], args[9]};

		fintx_keep_plan(&window_plan,
						"SELECT pg_catalog.max(position) FROM (" POSITIONS_AFTER " ORDER BY r.first_position, g.i LIMIT $3) w"
						" WHERE w.position OPERATOR(pg_catalog.<) $4",
						4, wtypes);
		if (SPI_execute_snapshot(window_plan, wargs, NULL, snap, InvalidSnapshot, false, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "scanning outbox window failed");	/* LCOV_EXCL_LINE */
		wmax = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		/*
		 * (not in a read-only transaction or on a standby: the next poll()
		 * elsewhere moves it; this one returns the empty window)
		 */
		if (!isnull && MayMoveOffset(&c) && !XactReadOnly)
		{
			Oid			atypes[3] = {TEXTOID, INT8OID, INT8OID};
			Datum		aargs[3];

			aargs[0] = args[0];
			aargs[1] = wmax;
			aargs[2] = args[1];
			fintx_keep_plan(&advance_plan,
							"UPDATE fintx.outbox_consumers SET committed_position = $2"
							" WHERE name OPERATOR(pg_catalog.=) $1 AND committed_position OPERATOR(pg_catalog.=) $3",
							3, atypes);
			if (SPI_execute_plan(advance_plan, aargs, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "advancing consumer failed");	/* LCOV_EXCL_LINE */
		}
	}
	UnregisterSnapshot(snap);
	SPI_finish();
	return (Datum) 0;
}

/*
 * fintx.ack(consumer, up_to_position) → void
 * Commits the consumer's offset: poll() returns events after it from now on.
 * Acknowledging the current offset again is a no-op. Emits 22023 for invalid
 * input, an unknown consumer or a position beyond the sequenced tail, and
 * 55000 for a position before the committed offset.
 */
Datum
fintx_ack(PG_FUNCTION_ARGS)
{
	char	   *name = CheckConsumerName(fcinfo, 0);
	int64		up_to;
	Consumer	c;

	if (PG_ARGISNULL(1))
		NullArg("up_to_position");
	up_to = PG_GETARG_INT64(1);
	if (up_to < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("up_to_position must not be negative")));
	fintx_spi_connect();
	ReadConsumer(name, CONSUMER_FOR_UPDATE, &c);
	CheckAckPosition(name, &c, up_to);
	if (up_to > c.committed)
	{
		CheckMayMoveOffset(name, &c);
		SetOffset(name, up_to, 0, false);
	}
	SPI_finish();
	PG_RETURN_VOID();
}


/* The position of consumer name's first dead letter, 0 if it has none (SPI connected). */
static int64
FirstDeadLetter(const char *name)
{
	Oid			types[1] = {TEXTOID};
	Datum		arg = CStringGetTextDatum(name);
	bool		isnull;
	Datum		first;

	fintx_keep_plan(&first_dead_plan,
					"SELECT pg_catalog.min(position) FROM fintx.outbox_dead_letters"
					" WHERE consumer OPERATOR(pg_catalog.=) $1", 1, types);
	if (SPI_execute_plan(first_dead_plan, &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading dead letters failed");	/* LCOV_EXCL_LINE */
	first = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt64(first);
}

/*
 * fintx.relay_checkpoint(consumer, up_to_position, stream_sequence) → void
 * As ack(), and stores the broker's sequence of the last event published
 * (fintx-relay); emits 55000 if the stream sequence would go back.
 */
Datum
fintx_relay_checkpoint(PG_FUNCTION_ARGS)
{
	char	   *name = CheckConsumerName(fcinfo, 0);
	int64		up_to;
	int64		seq;
	int64		first_dead;
	Consumer	c;

	if (PG_ARGISNULL(1))
		NullArg("up_to_position");
	if (PG_ARGISNULL(2))
		NullArg("stream_sequence");
	up_to = PG_GETARG_INT64(1);
	seq = PG_GETARG_INT64(2);
	if (up_to < 0 || seq < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("positions and sequences must not be negative")));
	fintx_spi_connect();
	ReadConsumer(name, CONSUMER_FOR_UPDATE, &c);

	/*
	 * A relay publishes what poll() returns and checkpoints past it: events a
	 * filter, a group or the caller's grants keep from it would be skipped
	 * without a trace. Its consumer must receive every event.
	 */
	if (c.group_size > 1 || c.aggregatetypes != (Datum) 0 || c.types != (Datum) 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("consumer \"%s\" does not receive every event", name),
				 errdetail("It was created with a group or with aggregate type or event type filters."),
				 errhint("A relay needs a consumer of its own, created with fintx.create_consumer(name).")));
	first_dead = FirstDeadLetter(name);
	if (first_dead > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("consumer \"%s\" has dead letters", name),
				 errdetail("The first is at position %lld; poll() skips dead letters, so a relay would never "
						   "publish them.", (long long) first_dead),
				 errhint("Give the relay a new consumer, moved with fintx.relay_checkpoint() to the position "
						 "and sequence of the stream's last message (fintx-relay --dump-stream shows both).")));
	if (!fintx_authz_sees_every_event())
	{
		char	   *msg = psprintf("role \"%s\" does not see every event of the outbox",
								   GetUserNameFromId(fintx_calling_user(), false));

		fintx_authz_record_refusal(FINTX_OP_EVENT_CONSUME, name, msg);
		fintx_raise_recorded(errmsg("%s", msg),
							 errdetail("poll() returns a service only the ledger events of the accounts its grants cover."),
							 errhint("Grant the relay's service audit.read on '%%'."));
	}
	CheckAckPosition(name, &c, up_to);
	if (seq < c.stream_sequence)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot move the stream sequence of consumer \"%s\" back to %lld", name, (long long) seq),
				 errdetail("The stored stream sequence is %lld.", (long long) c.stream_sequence)));
	/* unchanged: no write (acked_at keeps telling when the relay last moved) */
	if (up_to != c.committed || seq != c.stream_sequence)
		SetOffset(name, up_to, seq, true);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * fintx.consumer_state(consumer) → (committed_position, stream_sequence, tail_position)
 * Seals first when no worker does; emits 22023 for an unknown consumer.
 */
Datum
fintx_consumer_state(PG_FUNCTION_ARGS)
{
	char	   *name = CheckConsumerName(fcinfo, 0);
	Consumer	c;
	TupleDesc	desc;
	Datum		values[3];
	bool		isnull[3] = {false, false, false};
	HeapTuple	tup;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");	/* LCOV_EXCL_LINE */
	fintx_spi_connect();
	ReadConsumer(name, CONSUMER_NO_LOCK, &c);
	SealIfNoWorker();
	values[0] = Int64GetDatum(c.committed);
	values[1] = Int64GetDatum(c.stream_sequence);
	values[2] = Int64GetDatum(Tail());
	SPI_finish();
	tup = heap_form_tuple(BlessTupleDesc(desc), values, isnull);
	PG_RETURN_DATUM(HeapTupleGetDatum(tup));
}

/* fintx.outbox_tail() → bigint: seals when no worker does; the last sequenced position. */
Datum
fintx_outbox_tail(PG_FUNCTION_ARGS)
{
	int64		tail;

	fintx_spi_connect();
	SealIfNoWorker();
	tail = Tail();
	SPI_finish();
	PG_RETURN_INT64(tail);
}

/*
 * fintx.reject(consumer, event_position, error) → boolean
 * Records a failed delivery of one event; once the consumer's max_retries is
 * reached the event becomes a dead letter that poll() skips, and true is
 * returned. Call it in its own transaction (the failed one rolled back).
 */
Datum
fintx_reject(PG_FUNCTION_ARGS)
{
	char	   *name = CheckConsumerName(fcinfo, 0);
	int64		pos;
	Consumer	c;
	Oid			types[4] = {TEXTOID, INT8OID, TEXTOID, INT4OID};
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	bool		isnull;
	bool		dead;
	int			ret;
	int			nestlevel;

	if (PG_ARGISNULL(1))
		NullArg("event_position");
	pos = PG_GETARG_INT64(1);
	fintx_spi_connect();
	ReadConsumer(name, CONSUMER_FOR_UPDATE, &c);
	if (pos <= c.committed || pos > Tail())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("position %lld is not an unacknowledged event of consumer \"%s\"", (long long) pos, name)));
	CheckMayMoveOffset(name, &c);	/* a dead letter is skipped */
	args[0] = CStringGetTextDatum(name);
	args[1] = Int64GetDatum(pos);
	/* already a dead letter of this consumer: it stays one, not counted again */
	if (SPI_execute_with_args("SELECT 1 FROM fintx.outbox_dead_letters"
							  " WHERE consumer OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $2",
							  2, types, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading dead letters failed");	/* LCOV_EXCL_LINE */
	if (SPI_processed == 1)
	{
		SPI_finish();
		PG_RETURN_BOOL(true);
	}
	args[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
	args[3] = Int32GetDatum(c.max_retries);
	nestlevel = fintx_jit_off();
	ret = SPI_execute_with_args(
		"WITH a AS (INSERT INTO fintx.outbox_attempts AS t (consumer, position, attempts, last_error)"
		"           VALUES ($1, $2, 1, pg_catalog.left($3, 1000))"
		"           ON CONFLICT (consumer, position) DO UPDATE"
		"             SET attempts = t.attempts OPERATOR(pg_catalog.+) 1, last_error = EXCLUDED.last_error"
		"           RETURNING attempts, last_error),"
		"     d AS (INSERT INTO fintx.outbox_dead_letters (consumer, position, event_id, attempts, last_error,"
		"                                                 aggregatetype, aggregateid, type, payload, headers)"
		"           SELECT $1, $2, o.id, a.attempts, a.last_error,"
		"                  o.aggregatetype, o.aggregateid, o.type, o.payload, o.headers"
		"             FROM a, (SELECT first_position, first_event_no, event_count FROM fintx.outbox_position_runs"
		"                       WHERE first_position OPERATOR(pg_catalog.<=) $2"
		"                       ORDER BY first_position DESC LIMIT 1) p"
		"             JOIN fintx.outbox o ON o.event_no OPERATOR(pg_catalog.=)"
		"                  (p.first_event_no OPERATOR(pg_catalog.+) ($2 OPERATOR(pg_catalog.-) p.first_position))"
		"            WHERE $2 OPERATOR(pg_catalog.<) (p.first_position OPERATOR(pg_catalog.+) p.event_count)"
		"              AND a.attempts OPERATOR(pg_catalog.>=) $4"
		"           ON CONFLICT DO NOTHING RETURNING 1)"
		" SELECT EXISTS (SELECT 1 FROM d)",
		4, types, args, nulls, false, 0);
	AtEOXact_GUC(true, nestlevel);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "recording rejection failed: %s", SPI_result_code_string(ret));	/* LCOV_EXCL_LINE */
	dead = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	PG_RETURN_BOOL(dead);
}

/*
 * fintx.inbox_accept(consumer, event_id) → boolean
 * Records the event as processed by the consumer in the caller's transaction:
 * true the first time, false afterwards (a concurrent accept waits for the
 * first one's transaction; if it rolls back, the event was never accepted).
 * Emits 22023 for invalid input or an unknown consumer.
 */
Datum
fintx_inbox_accept(PG_FUNCTION_ARGS)
{
	char	   *name = CheckConsumerName(fcinfo, 0);
	Consumer	c;
	Oid			types[2] = {TEXTOID, UUIDOID};
	Datum		args[2];
	bool		accepted;

	if (PG_ARGISNULL(1))
		NullArg("event_id");
	fintx_spi_connect();
	/* locked against a concurrent drop_consumer(): it then does not exist (22023), not a 23503 */
	ReadConsumer(name, CONSUMER_KEY_SHARE, &c);
	args[0] = CStringGetTextDatum(name);
	args[1] = PG_GETARG_DATUM(1);
	fintx_keep_plan(&inbox_plan,
					"INSERT INTO fintx.inbox (consumer, event_id) VALUES ($1, $2)"
					" ON CONFLICT (consumer, event_id) DO NOTHING",
					2, types);
	if (SPI_execute_plan(inbox_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "inbox insert failed");	/* LCOV_EXCL_LINE */
	accepted = SPI_processed == 1;
	SPI_finish();
	PG_RETURN_BOOL(accepted);
}

/*
 * fintx.inbox_prune(consumer, older_than) → bigint
 * Deletes the consumer's inbox rows accepted more than older_than ago and
 * returns how many. Safe once older_than exceeds the longest time an event
 * can be redelivered to the consumer (its poll/ack cycle, or the redelivery
 * window of the source of foreign event ids).
 */
Datum
fintx_inbox_prune(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr prune_plan = NULL;
	char	   *name = CheckConsumerName(fcinfo, 0);
	Consumer	c;
	Oid			types[2] = {TEXTOID, INTERVALOID};
	Datum		args[2];
	Interval	zero;
	uint64		n;

	if (PG_ARGISNULL(1))
		NullArg("older_than");
	memset(&zero, 0, sizeof(zero));
	if (DatumGetBool(DirectFunctionCall2(interval_lt, PG_GETARG_DATUM(1), IntervalPGetDatum(&zero))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("older_than must not be negative")));
	fintx_spi_connect();
	ReadConsumer(name, CONSUMER_NO_LOCK, &c);
	args[0] = CStringGetTextDatum(name);
	args[1] = PG_GETARG_DATUM(1);
	fintx_keep_plan(&prune_plan,
					"DELETE FROM fintx.inbox WHERE consumer = $1"
					"   AND accepted_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $2)",
					2, types);
	fintx_spi_expect(SPI_execute_plan(prune_plan, args, NULL, false, 0), SPI_OK_DELETE, "pruning the inbox failed");
	n = SPI_processed;
	SPI_finish();
	PG_RETURN_INT64((int64) n);
}
