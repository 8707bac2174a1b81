/*-------------------------------------------------------------------------
 * worker.c
 *	  Background worker started when fintx is in shared_preload_libraries.
 *	  In the database named by fintx.database (if fintx is installed there) it
 *	  seals the audit log every fintx.seal_interval and releases expired holds
 *	  every fintx.expire_interval (the sealing pass also sequences the outbox),
 *	  rotates the outbox every minute, each pass in its own transaction, and
 *	  writes queued access denials as soon as a backend queues one.
 *-------------------------------------------------------------------------
 */
#include "fintx.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PGDLLEXPORT void fintx_worker_main(Datum arg);

/* True in the fintx background worker (sequencer.c: it only tries the sealing lock). */
bool		fintx_is_worker = false;

/* Registers the fintx background worker (called from _PG_init when preloaded). */
void
fintx_register_worker(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "fintx");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "fintx_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "fintx worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "fintx worker");
	RegisterBackgroundWorker(&worker);
}

/*
 * Runs body(arg) in a transaction of its own with a snapshot; an error is
 * logged and rolled back, and the loop goes on. Returns whether it committed.
 */
bool
fintx_worker_transaction(const char *activity, void (*body) (void *), void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
	PG_TRY();
	{
		body(arg);
		PopActiveSnapshot();
		CommitTransactionCommand();
		ok = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	pgstat_report_stat(true);
	pgstat_report_activity(STATE_IDLE, NULL);
	return ok;
}

/* Runs the SQL statement arg if fintx is installed in this database. */
static void
RunIfInstalled(void *arg)
{
	const char *sql = arg;

	if (!OidIsValid(get_extension_oid("fintx", true)))
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* through the SQL functions, so search_path is pinned */
	if (SPI_execute(sql, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "%s failed", sql);
	SPI_finish();
}

static bool
WorkerPass(const char *activity, const char *sql)
{
	return fintx_worker_transaction(activity, RunIfInstalled, (void *) sql);
}

/*
 * The settings PostgreSQL applies to the worker's session when it connects
 * (ALTER DATABASE ... SET, ALTER ROLE ... SET for its role, in its database
 * or all), as one string in *(char **) arg ("" if there are none). A
 * reload does not apply changed ones to a running session: the worker
 * restarts when they change, so that a per-database fintx.checkpoint_origin
 * names the next block (as the documentation says: set it, reload).
 */
static void
ReadSettings(void *arg)
{
	char	  **out = arg;
	Oid			types[2] = {OIDOID, OIDOID};
	Datum		values[2] = {ObjectIdGetDatum(MyDatabaseId), ObjectIdGetDatum(GetUserId())};
	bool		isnull;
	Datum		d;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");	/* LCOV_EXCL_LINE */
	if (SPI_execute_with_args("SELECT COALESCE(pg_catalog.string_agg(s.setdatabase::pg_catalog.text OPERATOR(pg_catalog.||) ' '"
							  " OPERATOR(pg_catalog.||) s.setrole::pg_catalog.text OPERATOR(pg_catalog.||) ' '"
							  " OPERATOR(pg_catalog.||) s.setconfig::pg_catalog.text, ' ' ORDER BY s.setdatabase, s.setrole), '')"
							  "  FROM pg_catalog.pg_db_role_setting s"
							  " WHERE s.setdatabase OPERATOR(pg_catalog.=) ANY (ARRAY[0, $1]::pg_catalog.oid[])"
							  "   AND s.setrole OPERATOR(pg_catalog.=) ANY (ARRAY[0, $2]::pg_catalog.oid[])",
							  2, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_db_role_setting");	/* LCOV_EXCL_LINE */
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	*out = MemoryContextStrdup(TopMemoryContext, TextDatumGetCString(d));
	SPI_finish();
}

/* Entry point of the background worker. */
void
fintx_worker_main(Datum arg)
{
	char	   *dbname;
	char	   *settings = NULL;
	bool		settings_read;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	fintx_is_worker = true;
	dbname = pstrdup(fintx_database);
	BackgroundWorkerInitializeConnection(dbname, NULL, 0);
	/*
	 * No JIT: the worker runs small queries every few milliseconds, planned
	 * afresh (custom plans) against fast-growing tables whose estimates soon
	 * pass jit_above_cost; compiling them took a sixth of all CPU time.
	 */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/*
	 * The worker runs as the bootstrap superuser, and some of its SQL (the
	 * denial queue's writes) is not inside a fintx function that pins the
	 * search path: pin it for the whole session, so that a database owner's
	 * ALTER DATABASE ... SET search_path cannot put its own operators or
	 * functions in front of pg_catalog's.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	/*
	 * Sealing and sequencing need READ COMMITTED read-write transactions (a
	 * pass under a transaction snapshot only reports the size): a server or
	 * database whose default is SERIALIZABLE, REPEATABLE READ or read-only
	 * must not stop the worker's passes.
	 */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
	fintx_denials_worker_attach();
	settings_read = fintx_worker_transaction("fintx: reading settings", ReadSettings, &settings);

	{
		TimestampTz next_seal = GetCurrentTimestamp();
		TimestampTz next_expire = GetCurrentTimestamp();
		TimestampTz next_rotate = GetCurrentTimestamp();
		TimestampTz last_seal = 0;
		TimestampTz next_outbox = 0;	/* 0: not woken */
		bool		seal_failed = false;	/* the last sealing pass failed */

		while (!ShutdownRequestPending)
		{
			TimestampTz now = GetCurrentTimestamp();
			TimestampTz next;
			long		wait_ms;
			uint64		req;
			bool		asked;

			/* denials first: a denied caller is waiting for its row to commit */
			if (fintx_denials_pending())
				fintx_denials_worker_flush();

			/* on schedule, or now when a session waits for a pass (fintx_worker_seal) */
			asked = false;
			req = fintx_worker_seal_begin(&asked);
			if (now >= next_seal || asked)
			{
				bool		sealed;

				fintx_worker_woken();
				fintx_seal_lock_missed = false;
				sealed = WorkerPass("fintx: sealing the audit log", "SELECT fintx.seal()");
				fintx_worker_seal_end(req, sealed && !fintx_seal_lock_missed);
				last_seal = GetCurrentTimestamp();
				next_seal = TimestampTzPlusMilliseconds(last_seal, fintx_seal_interval_ms);
				/*
				 * A seal sequences the outbox too. One that failed (a bad
				 * signing key, say) rolled that back: sequence the outbox
				 * alone at once, so delivery goes on at the sealing interval
				 * (the wake-up it consumed is not lost).
				 */
				seal_failed = !sealed;
				next_outbox = seal_failed ? last_seal : 0;
			}
			if (next_outbox != 0 && now >= next_outbox)
			{
				fintx_worker_woken();
				WorkerPass("fintx: sequencing the outbox", "SELECT fintx.sequence_outbox()");
				last_seal = GetCurrentTimestamp();
				next_outbox = 0;
			}
			if (now >= next_expire)
			{
				WorkerPass("fintx: releasing expired holds", "SELECT fintx.expire_pending(1000)");
				next_expire = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), fintx_expire_interval_ms);
			}
			if (now >= next_rotate)
			{
				WorkerPass("fintx: rotating the outbox", "SELECT fintx.outbox_rotate()");
				next_rotate = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 60 * 1000);
			}
			next = Min(Min(next_seal, next_expire), next_rotate);
			if (next_outbox != 0)
				next = Min(next, next_outbox);
			wait_ms = (long) ((next - GetCurrentTimestamp()) / 1000);
			if (wait_ms < 1)
				wait_ms = 1;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						   wait_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			/* the pending flag, not the latch: a wake-up set between a timeout and ResetLatch counts too */
			if (fintx_outbox_wakeup_ms > 0 && fintx_worker_wake_pending())
			{
				/*
				 * A transaction that wrote outbox events committed (outbox.c
				 * sets our latch): sequence the outbox (not the audit log,
				 * which keeps its interval) soon, but at most once per
				 * fintx.outbox_wakeup, so that a busy system does not do it
				 * per commit.
				 */
				TimestampTz soon = TimestampTzPlusMilliseconds(last_seal, fintx_outbox_wakeup_ms);

				if (next_outbox == 0 && (soon < next_seal || seal_failed))
					next_outbox = soon;
			}
			/*
			 * A cancel (pg_cancel_backend) that arrives between passes has
			 * nothing to cancel: raised here, outside a pass's error handling,
			 * it would end the worker for its restart interval. One that
			 * arrives during a pass ends that pass, which is logged.
			 */
			QueryCancelPending = false;
			CHECK_FOR_INTERRUPTS();
			if (ConfigReloadPending)
			{
				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);
				if (strcmp(dbname, fintx_database) != 0)
				{
					ereport(LOG,
							(errmsg("fintx worker restarting to move from database \"%s\" to \"%s\"",
									dbname, fintx_database)));
					proc_exit(1);	/* the postmaster restarts us */
				}
				if (settings_read)
				{
					char	   *now_settings = NULL;

					if (fintx_worker_transaction("fintx: reading settings", ReadSettings, &now_settings) &&
						strcmp(settings, now_settings) != 0)
					{
						ereport(LOG,
								(errmsg("fintx worker restarting to apply the changed settings of database \"%s\"",
										dbname)));
						proc_exit(1);	/* the postmaster restarts us */
					}
					if (now_settings)
						pfree(now_settings);
				}
				next_seal = next_expire = GetCurrentTimestamp();
			}
		}
	}
	/* write what is still queued before leaving */
	if (fintx_denials_pending())
		fintx_denials_worker_flush();
	/* exit code 1: the postmaster restarts us unless the server is shutting down */
	proc_exit(1);
}
