/*-------------------------------------------------------------------------
 * worker.c
 *	  Background worker started when fintx is in shared_preload_libraries.
 *	  Every fintx.expire_interval it releases expired holds in the database
 *	  named by fintx.database (if fintx is installed there), each pass in its
 *	  own transaction. Later modules add sequencing to the same loop.
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
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

PGDLLEXPORT void fintx_worker_main(Datum arg);

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

/* Runs one pass in its own transaction; errors are logged and the loop goes on. */
static void
WorkerPass(void)
{
	MemoryContext oldcxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "fintx: releasing expired holds");
	PG_TRY();
	{
		if (OidIsValid(get_extension_oid("fintx", true)))
		{
			int			released;

			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			/* through the SQL function, so search_path is pinned */
			if (SPI_execute("SELECT fintx.expire_pending(1000)", false, 1) != SPI_OK_SELECT)
				elog(ERROR, "fintx.expire_pending failed");
			released = atoi(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
			SPI_finish();
			if (released > 0)
				elog(DEBUG1, "fintx worker released %d expired holds", released);
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
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
}

/* Entry point of the background worker. */
void
fintx_worker_main(Datum arg)
{
	char	   *dbname;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	dbname = pstrdup(fintx_database);
	BackgroundWorkerInitializeConnection(dbname, NULL, 0);

	while (!ShutdownRequestPending)
	{
		int			rc;

		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   fintx_expire_interval_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
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
		}
		(void) rc;
		WorkerPass();
	}
	/* exit code 1: the postmaster restarts us unless the server is shutting down */
	proc_exit(1);
}
