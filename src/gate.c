/*-------------------------------------------------------------------------
 * gate.c
 *	  Admission control for batches: at most fintx.max_active_batches calls
 *	  of transfer_batch / transfer_batch_signed apply their requests at once,
 *	  the others wait their turn, first come first served.
 *
 * Thirty-two clients sending batches to a server with two cores otherwise
 * all run at once: each batch is preempted many times, often while it holds
 * a buffer or relation-extension lock the others then queue behind, and its
 * latency depends on how the scheduler happened to treat it. With a few
 * batches admitted at a time each one runs nearly uninterrupted and the
 * others wait in order, so latency is about the same for every batch.
 *
 * Tickets: a call takes the next ticket number and may run once at least
 * (ticket - max_active_batches + 1) tickets have been given back. Every
 * ticket is given back exactly once, when its call ends (returns, fails,
 * is cancelled while waiting, or its backend exits), so no call waits for
 * one that is gone. A call that has waited fintx.batch_queue_timeout runs
 * anyway: a batch admitted before it may be waiting for a row lock of a
 * transaction that stays open, and the queue must not stall behind it. The
 * slot is given back when the function returns, before the caller's commit:
 * the WAL flush of one batch overlaps the work of the next.
 *
 * Only with shared_preload_libraries (shared memory); otherwise, and with
 * fintx.max_active_batches = 0 (the default), batches are not queued.
 *-------------------------------------------------------------------------
 */
#include "fintx.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "funcapi.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

PG_FUNCTION_INFO_V1(fintx_batch_queue);

int			fintx_max_active_batches = 0;
int			fintx_batch_queue_timeout_ms = 1000;

typedef struct BatchGate
{
	pg_atomic_uint64 next_ticket;	/* tickets handed out */
	pg_atomic_uint64 returned;		/* tickets given back */
	pg_atomic_uint64 admitted;		/* calls that ran after waiting for their turn (or at once) */
	pg_atomic_uint64 timed_out;		/* calls that ran after fintx.batch_queue_timeout */
	pg_atomic_uint32 active;		/* calls running with a ticket now */
	ConditionVariable turn;			/* broadcast when a ticket is given back */
} BatchGate;

static BatchGate *gate = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* this backend's ticket: held (to give back once), running (counted in active) */
static bool holding = false;
static bool running = false;
static bool exit_callback = false;

static void
GateShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();	/* LCOV_EXCL_LINE: another module's hook */
	RequestAddinShmemSpace(MAXALIGN(sizeof(BatchGate)));
}

static void
GateShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();	/* LCOV_EXCL_LINE: another module's hook */
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	gate = ShmemInitStruct("fintx batch gate", sizeof(BatchGate), &found);
	if (!found)
	{
		pg_atomic_init_u64(&gate->next_ticket, 0);
		pg_atomic_init_u64(&gate->returned, 0);
		pg_atomic_init_u64(&gate->admitted, 0);
		pg_atomic_init_u64(&gate->timed_out, 0);
		pg_atomic_init_u32(&gate->active, 0);
		ConditionVariableInit(&gate->turn);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init: the settings, and the shared memory when preloaded. */
void
fintx_gate_init(bool preloaded)
{
	DefineCustomIntVariable("fintx.max_active_batches",
							"Batches (transfer_batch, transfer_batch_signed) applied at once; the others wait their turn. 0: no limit.",
							"About the number of CPU cores; needs shared_preload_libraries.",
							&fintx_max_active_batches,
							0, 0, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("fintx.batch_queue_timeout",
							"Longest wait of a batch for its turn; then it runs anyway.",
							NULL,
							&fintx_batch_queue_timeout_ms,
							1000, 0, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	if (!preloaded)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = GateShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = GateShmemStartup;
}

/* Gives this backend's ticket back (if it holds one) and wakes the waiters. */
void
fintx_gate_leave(void)
{
	if (!holding)
		return;
	holding = false;
	if (running)
	{
		running = false;
		pg_atomic_fetch_sub_u32(&gate->active, 1);
	}
	pg_atomic_fetch_add_u64(&gate->returned, 1);
	ConditionVariableBroadcast(&gate->turn);
}

static void
GateExit(int code, Datum arg)
{
	fintx_gate_leave();
}

/*
 * Waits for this call's turn (see the file header). The caller must call
 * fintx_gate_leave() when the batch is done, also when it fails or the wait
 * is cancelled (the ticket is taken first thing, so an error out of the wait
 * leaves one to give back).
 */
void
fintx_gate_enter(void)
{
	int			limit = fintx_max_active_batches;
	uint64		ticket;
	TimestampTz start;

	if (gate == NULL || limit <= 0 || holding)
		return;
	if (!exit_callback)
	{
		before_shmem_exit(GateExit, (Datum) 0);
		exit_callback = true;
	}
	ticket = pg_atomic_fetch_add_u64(&gate->next_ticket, 1);
	holding = true;
	start = GetCurrentTimestamp();
	for (;;)
	{
		long		waited;

		if (ticket < pg_atomic_read_u64(&gate->returned) + (uint64) limit)
			break;
		waited = TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());
		if (waited >= fintx_batch_queue_timeout_ms)
		{
			pg_atomic_fetch_add_u64(&gate->timed_out, 1);
			break;
		}
		(void) ConditionVariableTimedSleep(&gate->turn, fintx_batch_queue_timeout_ms - waited,
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	pg_atomic_fetch_add_u64(&gate->admitted, 1);
	pg_atomic_fetch_add_u32(&gate->active, 1);
	running = true;
}

/*
 * fintx.batch_queue(): the limit, the batches running and waiting now, and
 * since the server started the batches admitted and those that ran after
 * waiting fintx.batch_queue_timeout. NULLs without shared memory.
 */
Datum
fintx_batch_queue(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		v[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");	/* LCOV_EXCL_LINE */
	v[0] = Int32GetDatum(gate ? fintx_max_active_batches : 0);
	if (gate)
	{
		uint64		issued = pg_atomic_read_u64(&gate->next_ticket);
		uint64		back = pg_atomic_read_u64(&gate->returned);
		uint32		active = pg_atomic_read_u32(&gate->active);
		int64		waiting = (int64) (issued - back) - (int64) active;

		v[1] = Int32GetDatum((int32) active);
		v[2] = Int64GetDatum(Max(waiting, 0));
		v[3] = Int64GetDatum((int64) pg_atomic_read_u64(&gate->admitted));
		v[4] = Int64GetDatum((int64) pg_atomic_read_u64(&gate->timed_out));
	}
	else
		nulls[1] = nulls[2] = nulls[3] = nulls[4] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, v, nulls)));
}
