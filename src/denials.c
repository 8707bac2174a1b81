/*-------------------------------------------------------------------------
 * denials.c
 *	  The durable denial queue. A denied request aborts its transaction, so
 *	  its access-log row cannot be written there. When fintx is preloaded, the
 *	  denying backend puts the denial in a ring in shared memory and wakes the
 *	  background worker, which writes it to fintx.access_log_entries (and an
 *	  'access.denied' audit entry) in its own transaction. The backend waits
 *	  up to fintx.denial_wait for that transaction to commit before it raises
 *	  the error, so a denial the client has seen is on disk.
 *
 *	  Errors with SQLSTATE 42501 that PostgreSQL itself raises (writing a
 *	  fintx table directly, SET ROLE to a role not held, calling a function
 *	  without EXECUTE) are caught by an emit_log_hook and queued the same way
 *	  (without waiting).
 *
 *	  Without preload there is no shared memory: a denial is written to the
 *	  server log (the ERROR line) and, with wal_level = logical, also as a
 *	  non-transactional logical decoding message with prefix
 *	  "fintx.access_denied".
 *-------------------------------------------------------------------------
 */
#include "fintx.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "access/xlog.h"
#include "commands/extension.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/message.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(fintx_denial_queue_stats);

#define DENIAL_QUEUE_SIZE 1024

int			fintx_denial_wait_ms = 1000;

typedef struct DenialRecord
{
	Oid			dbid;
	Oid			roleid;			/* InvalidOid: role given by name */
	Oid			session_roleid;
	int			pid;
	TimestampTz at;
	bool		has_amount;
	int64		amount;
	char		role[NAMEDATALEN];
	char		session_user[NAMEDATALEN];
	char		service[NAMEDATALEN + 16];
	char		operation[32];
	char		object[200];
	char		currency[8];
	char		reason[300];
	char		rule[200];
	char		client_addr[64];
	char		application_name[NAMEDATALEN];
} DenialRecord;

typedef struct DenialQueue
{
	LWLock	   *lock;
	uint64		head;			/* next sequence number to fill */
	uint64		tail;			/* first not yet written */
	uint64		written;		/* all below this are committed (or given up) */
	uint64		dropped;		/* queue full: only in the server log */
	Latch	   *worker_latch;
	PGPROC	   *worker_proc;	/* the worker's, while it runs (its databaseId: the database it seals) */
	pg_atomic_uint32 wake_pending;	/* the worker was woken for the outbox, has not run yet */
	/* sealing passes asked of the worker (fintx_worker_seal): request numbers */
	uint64		seal_requested; /* last request made */
	uint64		seal_answered;	/* all up to here were made before a pass that has ended */
	uint64		seal_served;	/* ... before a pass that committed (the others: could not seal) */
	ConditionVariable seal_done;	/* broadcast when a pass ends */
	DenialRecord ring[DENIAL_QUEUE_SIZE];
} DenialQueue;

static DenialQueue *queue = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static emit_log_hook_type prev_emit_log_hook = NULL;

static SPIPlanPtr write_plan = NULL;

static void
DenialShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();	/* LCOV_EXCL_LINE: another module's hook */
	RequestAddinShmemSpace(MAXALIGN(sizeof(DenialQueue)));
	RequestNamedLWLockTranche("fintx_denials", 1);
}

static void
DenialShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();	/* LCOV_EXCL_LINE: another module's hook */
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	queue = ShmemInitStruct("fintx denial queue", sizeof(DenialQueue), &found);
	if (!found)
	{
		memset(queue, 0, sizeof(DenialQueue));
		queue->lock = &(GetNamedLWLockTranche("fintx_denials"))->lock;
		pg_atomic_init_u32(&queue->wake_pending, 0);
		ConditionVariableInit(&queue->seal_done);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Client address of this backend as text ("" for a Unix socket or none). */
static void
ClientAddr(char *out, size_t len)
{
	LOCAL_FCINFO(fcinfo, 0);
	Datum		addr;

	out[0] = '\0';
	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	addr = inet_client_addr(fcinfo);
	if (!fcinfo->isnull)
		strlcpy(out, DatumGetCString(DirectFunctionCall1(inet_out, addr)), len);
}

/* Puts a record in the ring; returns its sequence number, or 0 if the ring is full. */
static uint64
Enqueue(DenialRecord *rec)
{
	uint64		seq = 0;
	Latch	   *latch;

	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	if (queue->head - queue->tail < DENIAL_QUEUE_SIZE)
	{
		memcpy(&queue->ring[queue->head % DENIAL_QUEUE_SIZE], rec, sizeof(DenialRecord));
		seq = ++queue->head;
	}
	else
		queue->dropped++;
	latch = queue->worker_latch;
	LWLockRelease(queue->lock);
	if (latch)
		SetLatch(latch);
	return seq;
}

/*
 * Copies src into a fixed-size field, cut at a character boundary: a
 * multibyte character cut in half would make the record unwritable (invalid
 * text) and block the queue.
 */
static void
CopyField(char *dst, const char *src, size_t size)
{
	int			len = pg_mbcliplen(src, strlen(src), (int) size - 1);

	memcpy(dst, src, len);
	dst[len] = '\0';
}

/* Fills the fields every record has. */
static void
InitRecord(DenialRecord *rec)
{
	memset(rec, 0, sizeof(DenialRecord));
	rec->dbid = MyDatabaseId;
	rec->pid = MyProcPid;
	rec->at = GetCurrentTimestamp();
	ClientAddr(rec->client_addr, sizeof(rec->client_addr));
	if (application_name)
		CopyField(rec->application_name, application_name, sizeof(rec->application_name));
}

/*
 * Records a denial decided by fintx, before the error is raised. With the
 * queue, waits up to fintx.denial_wait for the worker to commit it; the
 * caller raises the 42501 error afterwards with fintx_raise_recorded (its
 * mark keeps the log hook from queueing it a second time, also when user code
 * catches and re-raises it).
 */
void
fintx_denial_enqueue(const char *role, const char *session_user, const char *service,
					 const char *operation, const char *object, const char *currency,
					 int64 amount, bool has_amount, const char *reason, const char *rule)
{
	DenialRecord rec;
	uint64		seq;

	InitRecord(&rec);
	CopyField(rec.role, role, sizeof(rec.role));
	CopyField(rec.session_user, session_user, sizeof(rec.session_user));
	if (service)
		CopyField(rec.service, service, sizeof(rec.service));
	CopyField(rec.operation, operation, sizeof(rec.operation));
	if (object)
		CopyField(rec.object, object, sizeof(rec.object));
	if (currency)
		CopyField(rec.currency, currency, sizeof(rec.currency));
	rec.amount = amount;
	rec.has_amount = has_amount;
	CopyField(rec.reason, reason, sizeof(rec.reason));
	if (rule)
		CopyField(rec.rule, rule, sizeof(rec.rule));

	if (queue == NULL)
	{
		/*
		 * fallback without preload: a WAL message that outlives the abort, if
		 * decodable; a hot standby writes no WAL (the server log keeps it)
		 */
		if (XLogLogicalInfoActive() && !RecoveryInProgress())
		{
			StringInfoData buf;

			initStringInfo(&buf);
			appendStringInfoString(&buf, "{\"role\": ");
			escape_json(&buf, rec.role);
			appendStringInfoString(&buf, ", \"service\": ");
			escape_json(&buf, rec.service);
			appendStringInfoString(&buf, ", \"operation\": ");
			escape_json(&buf, rec.operation);
			appendStringInfoString(&buf, ", \"object\": ");
			escape_json(&buf, rec.object);
			appendStringInfoString(&buf, ", \"reason\": ");
			escape_json(&buf, rec.reason);
			appendStringInfoChar(&buf, '}');
			/* flushed now: the denied transaction's abort will not flush it */
			XLogFlush(LogLogicalMessage("fintx.access_denied", buf.data, buf.len, false));
		}
		return;
	}

	seq = Enqueue(&rec);
	if (seq == 0)
	{
		ereport(LOG,
				(errmsg("fintx denial queue is full; denial recorded only in the server log")));
		return;
	}
	if (fintx_denial_wait_ms > 0 && queue->worker_latch != NULL)
	{
		TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), fintx_denial_wait_ms);

		for (;;)
		{
			uint64		written;

			LWLockAcquire(queue->lock, LW_SHARED);
			written = queue->written;
			LWLockRelease(queue->lock);
			if (written >= seq || GetCurrentTimestamp() >= deadline)
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 1,
							 PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
}

/*
 * Whether an error was raised by user code in a procedural language (PL/pgSQL
 * RAISE, plpy.error, elog in PL/Perl or PL/Tcl): any role may raise 42501
 * with any message, and the access log and the audit log would keep it for
 * ever as if PostgreSQL had refused something.
 */
static bool
RaisedByUserCode(const ErrorData *edata)
{
	static const char *const pl_files[] = {"pl_exec.c", "plpy_elog.c", "plpy_plpymodule.c", "plperl.c", "pltcl.c"};
	const char *f = edata->filename;
	const char *slash;

	if (f == NULL)
		return false;			/* LCOV_EXCL_LINE: ereport always records its file */
	slash = strrchr(f, '/');	/* (__FILE__ may hold a path) */
	f = slash ? slash + 1 : f;
	for (int i = 0; i < (int) lengthof(pl_files); i++)
		if (strcmp(f, pl_files[i]) == 0)
			return true;
	return false;
}

/* Whether the error is a refusal fintx recorded before raising it (fintx_raise_recorded). */
static bool
RecordedByFintx(const ErrorData *edata)
{
	return edata->domain != NULL && strcmp(edata->domain, FINTX_RECORDED_DOMAIN) == 0;
}

/* emit_log_hook: queues permission errors that PostgreSQL raised on its own. */
static void
DenialLogHook(ErrorData *edata)
{
	if (edata->elevel >= ERROR && edata->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE &&
		!RaisedByUserCode(edata) && !RecordedByFintx(edata))
	{
		if (queue != NULL && MyBackendType == B_BACKEND && OidIsValid(MyDatabaseId) &&
			MyProc != NULL)
		{
			DenialRecord rec;

			InitRecord(&rec);
			rec.roleid = GetOuterUserId();
			rec.session_roleid = GetSessionUserId();
			CopyField(rec.operation, "sql", sizeof(rec.operation));
			if (edata->message)
				CopyField(rec.object, edata->message, sizeof(rec.object));
			{
				char		reason[2 * sizeof(rec.reason)];	/* no palloc while reporting an error */

				/*
				 * fintx's caller checks raise 42501 with a plain ereport (no
				 * decision recorded first): name them as fintx's, not as
				 * PostgreSQL's privilege checks
				 */
				bool		by_fintx = edata->funcname != NULL && strncmp(edata->funcname, "fintx_", 6) == 0;

				snprintf(reason, sizeof(reason), "%s: %s", by_fintx ? "refused by fintx" : "denied by PostgreSQL",
						 edata->message ? edata->message : "permission denied");
				CopyField(rec.reason, reason, sizeof(rec.reason));
				CopyField(rec.rule, by_fintx ? "fintx" : "PostgreSQL privileges", sizeof(rec.rule));
			}
			(void) Enqueue(&rec);
		}
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);	/* LCOV_EXCL_LINE: another module's hook */
}

/* Called from _PG_init when preloaded. */
void
fintx_denials_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = DenialShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = DenialShmemStartup;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = DenialLogHook;
}

/* ------------------------------------------------------------------------
 * Worker side
 * ------------------------------------------------------------------------
 */

static void
DetachWorker(int code, Datum arg)
{
	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	queue->worker_latch = NULL;
	queue->worker_proc = NULL;
	LWLockRelease(queue->lock);
	/* sessions waiting for a sealing pass seal on their own */
	ConditionVariableBroadcast(&queue->seal_done);
}

/* The worker announces itself so that backends wake it and wait for it. */
void
fintx_denials_worker_attach(void)
{
	if (queue == NULL)
		return;					/* LCOV_EXCL_LINE: the worker only runs when preloaded */
	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	queue->worker_latch = MyLatch;
	queue->worker_proc = MyProc;
	/* requests made before a restart were answered (not served) when the previous worker left */
	queue->seal_answered = queue->seal_requested;
	LWLockRelease(queue->lock);
	pg_atomic_write_u32(&queue->wake_pending, 0);
	before_shmem_exit(DetachWorker, (Datum) 0);
}

/*
 * Wakes the worker (a transaction that wrote outbox events committed), at
 * most once until the worker has run: later committers see the pending flag
 * and send no signal, so a busy system does not signal the worker per commit.
 */
void
fintx_worker_wake(void)
{
	Latch	   *latch;

	if (queue == NULL || pg_atomic_read_u32(&queue->wake_pending) != 0)
		return;
	if (pg_atomic_exchange_u32(&queue->wake_pending, 1) != 0)
		return;					/* LCOV_EXCL_LINE: another committer won the race */
	latch = queue->worker_latch;
	if (latch)
		SetLatch(latch);
}

/* The worker: true if a committed transaction's wake-up is pending (not a seal request's). */
bool
fintx_worker_wake_pending(void)
{
	return queue != NULL && pg_atomic_read_u32(&queue->wake_pending) != 0;
}

/* The worker: the pass that a wake-up asked for is running. */
void
fintx_worker_woken(void)
{
	if (queue != NULL)
		pg_atomic_write_u32(&queue->wake_pending, 0);
}

/* ------------------------------------------------------------------------
 * Sealing passes on request
 *
 * A session that would seal inside its own transaction holds the sealing
 * lock until that transaction ends: left open, it would stop every sealing
 * pass, and with them the outbox positions every consumer waits for. Where
 * the worker seals, a session asks it for a pass instead and waits for its
 * commit; the session's transaction takes no lock and writes nothing.
 * ------------------------------------------------------------------------
 */

/* True if the worker runs in this database (queue->lock held). */
static bool
SealsHere(void)
{
	return queue->worker_latch != NULL && queue->worker_proc->databaseId == MyDatabaseId;
}

/* True if the fintx worker runs and seals this database (it seals; callers need not). */
bool
fintx_worker_seals_here(void)
{
	bool		here;

	if (queue == NULL)
		return false;
	LWLockAcquire(queue->lock, LW_SHARED);
	here = SealsHere();
	LWLockRelease(queue->lock);
	return here;
}

/* How long the worker may wait for one lock before a session that waits for it seals on its own. */
#define SEAL_LOCK_WAIT_MS	1000
/* How many sessions BlocksWorker() follows through the lock graph. */
#define SEAL_BLOCKER_WALK	32

/*
 * True if this session blocks the worker's lock wait, directly or through
 * sessions that wait for it (a lock request queued behind one this session
 * holds): the waits PostgreSQL's pg_blocking_pids() reports, followed.
 */
static bool
BlocksWorker(int worker_pid)
{
	int			pids[SEAL_BLOCKER_WALK];
	int			n = 1,
				next = 0;

	pids[0] = worker_pid;
	while (next < n)
	{
		ArrayType  *a = DatumGetArrayTypeP(DirectFunctionCall1(pg_blocking_pids, Int32GetDatum(pids[next++])));
		Datum	   *elems;
		bool	   *nulls;
		int			ne;

		deconstruct_array(a, INT4OID, sizeof(int32), true, TYPALIGN_INT, &elems, &nulls, &ne);
		for (int i = 0; i < ne; i++)
		{
			int			pid = DatumGetInt32(elems[i]);
			bool		seen = false;

			if (pid == MyProcPid)
				return true;
			for (int j = 0; j < n; j++)
				seen |= pids[j] == pid;
			if (!seen && n < SEAL_BLOCKER_WALK)
				pids[n++] = pid;
		}
		pfree(elems);
		pfree(nulls);
		pfree(a);
	}
	return false;
}

/*
 * Asks the worker for a sealing pass that begins after this call and waits
 * until it has committed. Returns false, at once or after waiting, if the
 * worker does not seal this database, could not seal (another transaction
 * holds the sealing lock, or the pass failed) or left: the caller then seals
 * on its own. While the worker works (a pass, or releasing holds before it),
 * the session waits as long as it takes (a cancel or statement_timeout ends
 * the wait). It also seals on its own when the worker waits for a lock
 * (heavyweight: a row, a table, a transaction) that this session holds or
 * that waits for this session (a wait the deadlock detector cannot see
 * through a condition variable; its wait for the sealing lock, if the
 * worker's pass holds it, is one the detector sees), or has waited for the
 * same lock for SEAL_LOCK_WAIT_MS (stuck on another session: it cannot seal
 * for this one meanwhile).
 */
bool
fintx_worker_seal(void)
{
	Latch	   *latch;
	uint64		req;
	TimestampTz lock_wait_since = 0;
	void	   *waited_lock = NULL;
	bool		served = false;

	if (queue == NULL || fintx_is_worker)
		return false;
	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	if (!SealsHere())
	{
		LWLockRelease(queue->lock);
		return false;
	}
	latch = queue->worker_latch;
	req = ++queue->seal_requested;
	LWLockRelease(queue->lock);
	SetLatch(latch);

	ConditionVariablePrepareToSleep(&queue->seal_done);
	for (;;)
	{
		bool		gone,
					refused;
		void	   *wait_lock = NULL;
		int			worker_pid = 0;

		LWLockAcquire(queue->lock, LW_SHARED);
		served = queue->seal_served >= req;
		refused = queue->seal_answered >= req && !served;
		gone = queue->worker_latch == NULL;
		if (!gone)
		{
			/* read without the lock manager's locks: a hint, rechecked every 100 ms */
			wait_lock = (void *) queue->worker_proc->waitLock;
			worker_pid = queue->worker_proc->pid;
		}
		LWLockRelease(queue->lock);
		if (served || refused || gone)
			break;
		if (wait_lock != NULL)
		{
			if (wait_lock != waited_lock)
				lock_wait_since = GetCurrentTimestamp();
			if (BlocksWorker(worker_pid) ||
				TimestampDifferenceExceeds(lock_wait_since, GetCurrentTimestamp(), SEAL_LOCK_WAIT_MS))
				break;
		}
		waited_lock = wait_lock;
		/* wakes on the broadcast at the end of a pass; the timeout rechecks the worker */
		(void) ConditionVariableTimedSleep(&queue->seal_done, 100, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	return served;
}

/*
 * The worker: the last sealing request made so far; *asked is true if a
 * session waits for a pass. A pass that starts now (before it takes its
 * snapshot) answers every request up to the one returned, for
 * fintx_worker_seal_end().
 */
uint64
fintx_worker_seal_begin(bool *asked)
{
	uint64		req;

	*asked = false;
	if (queue == NULL)
		return 0;				/* LCOV_EXCL_LINE: the worker only runs when preloaded */
	LWLockAcquire(queue->lock, LW_SHARED);
	req = queue->seal_requested;
	*asked = req > queue->seal_answered;
	LWLockRelease(queue->lock);
	return req;
}

/* The worker, after the pass: it committed a pass (sealed) or not; wakes the waiting sessions. */
void
fintx_worker_seal_end(uint64 req, bool sealed)
{
	if (queue == NULL)
		return;					/* LCOV_EXCL_LINE: the worker only runs when preloaded */
	LWLockAcquire(queue->lock, LW_EXCLUSIVE);
	queue->seal_answered = Max(queue->seal_answered, req);
	if (sealed)
		queue->seal_served = Max(queue->seal_served, req);
	LWLockRelease(queue->lock);
	ConditionVariableBroadcast(&queue->seal_done);
}

bool
fintx_denials_pending(void)
{
	bool		pending;

	if (queue == NULL)
		return false;			/* LCOV_EXCL_LINE: the worker only runs when preloaded */
	LWLockAcquire(queue->lock, LW_SHARED);
	pending = queue->head != queue->tail;
	LWLockRelease(queue->lock);
	return pending;
}

static Datum
TextOrNull(const char *s, char *null)
{
	*null = (s == NULL || s[0] == '\0') ? 'n' : ' ';
	return *null == 'n' ? (Datum) 0 : CStringGetTextDatum(s);
}

/* A role's name, or "role <oid>" if it was dropped since the denial. */
static char *
RoleName(Oid roleid)
{
	char	   *name = GetUserNameFromId(roleid, true);

	return name ? name : psprintf("role %u", roleid);
}

/* Writes one record (SPI connected): its access-log row and its audit entry. */
static void
WriteRecord(DenialRecord *r)
{
	Datum		args[13];
	char		nulls[13];
	Oid			types[13] = {TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID,
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, TEXTOID};
	char	   *role = r->role;
	char	   *session_user = r->session_user;
	StringInfoData buf;
	FintxAuditEntry e;

	if (OidIsValid(r->roleid))
	{
		role = RoleName(r->roleid);
		session_user = RoleName(r->session_roleid);
	}
	memset(nulls, ' ', sizeof(nulls));
	args[0] = TimestampTzGetDatum(r->at);
	args[1] = TextOrNull(r->service, &nulls[1]);
	args[2] = CStringGetTextDatum(role);
	args[3] = CStringGetTextDatum(session_user);
	args[4] = CStringGetTextDatum(r->operation);
	args[5] = TextOrNull(r->object, &nulls[5]);
	args[6] = Int64GetDatum(r->amount);
	nulls[6] = r->has_amount ? ' ' : 'n';
	args[7] = TextOrNull(r->currency, &nulls[7]);
	args[8] = CStringGetTextDatum(r->reason);
	args[9] = TextOrNull(r->rule, &nulls[9]);
	args[10] = TextOrNull(r->client_addr, &nulls[10]);
	args[11] = Int32GetDatum(r->pid);
	args[12] = TextOrNull(r->application_name, &nulls[12]);
	/* the service of a PostgreSQL-decided denial is looked up from the role */
	fintx_keep_plan(&write_plan,
					"INSERT INTO fintx.access_log_entries (at, service, role, session_user_name, operation,"
					"       object, amount, currency, allowed, reason, rule, client_addr, application_name,"
					"       backend_pid, recorded_by)"
					" SELECT $1, COALESCE($2, (SELECT s.name FROM fintx.services s"
					"                           WHERE s.role_name OPERATOR(pg_catalog.=) $3)),"
					"        $3, $4, $5, $6, $7, $8, false, $9, $10, $11::pg_catalog.inet, $13, $12, 'denial queue'",
					13, types);
	fintx_spi_expect(SPI_execute_plan(write_plan, args, nulls, false, 0), SPI_OK_INSERT, "writing a denial failed");

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"at\": ");
	escape_json(&buf, fintx_timestamptz_utc(r->at));
	appendStringInfoString(&buf, ", \"service\": ");
	if (r->service[0])
		escape_json(&buf, r->service);
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoString(&buf, ", \"role\": ");
	escape_json(&buf, role);
	appendStringInfoString(&buf, ", \"operation\": ");
	escape_json(&buf, r->operation);
	appendStringInfoString(&buf, ", \"object\": ");
	escape_json(&buf, r->object);
	if (r->has_amount)
		appendStringInfo(&buf, ", \"amount\": %lld", (long long) r->amount);
	if (r->currency[0])
	{
		appendStringInfoString(&buf, ", \"currency\": ");
		escape_json(&buf, r->currency);
	}
	appendStringInfoString(&buf, ", \"reason\": ");
	escape_json(&buf, r->reason);
	appendStringInfoString(&buf, ", \"client_addr\": ");
	escape_json(&buf, r->client_addr);
	appendStringInfoString(&buf, ", \"application_name\": ");
	escape_json(&buf, r->application_name);
	appendStringInfo(&buf, ", \"backend_pid\": %d}", r->pid);
	fintx_audit_init(&e, role, "access.denied", "access", r->operation, fintx_jsonb_from_text(buf.data));
	e.session_role = session_user;
	fintx_audit_hash(&e);
	fintx_audit_insert(&e, 1);
}

typedef struct DenialBatch
{
	DenialRecord *records;
	int			n;
} DenialBatch;

/* Writes a batch of denials (in the worker's transaction). */
static void
WriteBatch(void *arg)
{
	DenialBatch *wb = arg;
	bool		installed = OidIsValid(get_extension_oid("fintx", true));

	if (installed)
		fintx_spi_connect();
	for (int i = 0; i < wb->n; i++)
	{
		DenialRecord *r = &wb->records[i];

		if (installed && r->dbid == MyDatabaseId)
			WriteRecord(r);
		else
			ereport(LOG,
					(errmsg("fintx: access denied to role \"%s\" for %s on \"%s\" in database %u: %s",
							r->role, r->operation, r->object, r->dbid, r->reason),
					 errdetail("The fintx worker runs in database \"%s\" (fintx.database); denials of other databases are only logged.",
							   fintx_database)));
	}
	if (installed)
		SPI_finish();
}

/*
 * Worker: writes the queued denials of its database in one transaction and,
 * once it has committed, releases them from the ring. Denials of other
 * databases cannot be written here: they go to the server log.
 */
void
fintx_denials_worker_flush(void)
{
	uint64		from;
	uint64		to;
	DenialBatch wb;

	Assert(queue != NULL);		/* called by the worker when fintx_denials_pending() */
	LWLockAcquire(queue->lock, LW_SHARED);
	from = queue->tail;
	to = queue->head;
	LWLockRelease(queue->lock);
	wb.n = (int) (to - from);
	wb.records = palloc(sizeof(DenialRecord) * wb.n);
	/* slots in [tail, head) are not overwritten until tail moves */
	for (int i = 0; i < wb.n; i++)
		memcpy(&wb.records[i], &queue->ring[(from + i) % DENIAL_QUEUE_SIZE], sizeof(DenialRecord));

	if (fintx_worker_transaction("fintx: writing access denials", WriteBatch, &wb))
	{
		LWLockAcquire(queue->lock, LW_EXCLUSIVE);
		queue->tail = to;
		queue->written = to;
		LWLockRelease(queue->lock);
	}
	/* else: retried on the next pass; waiting backends fall back after fintx.denial_wait */
	pfree(wb.records);
}

/* fintx.denial_queue_stats() → (queued, written, dropped, pending) */
Datum
fintx_denial_queue_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	if (queue == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the fintx denial queue needs shared memory"),
				 errhint("Add fintx to shared_preload_libraries and restart the server.")));
	fintx_spi_expect(get_call_result_type(fcinfo, NULL, &tupdesc) == TYPEFUNC_COMPOSITE ? 1 : 0, 1,
					 "return type must be a row type");
	LWLockAcquire(queue->lock, LW_SHARED);
	values[0] = Int64GetDatum((int64) queue->head);
	values[1] = Int64GetDatum((int64) queue->written);
	values[2] = Int64GetDatum((int64) queue->dropped);
	values[3] = Int32GetDatum((int32) (queue->head - queue->tail));
	LWLockRelease(queue->lock);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
