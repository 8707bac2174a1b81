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
 * The queue is a list of waiting backends in shared memory (linked by
 * pgprocno, under a spinlock). A batch joins the end of the list; whenever
 * a running batch ends, the backends at the head are admitted while fewer
 * than the limit run, and only they are woken (their latches). A backend
 * leaves the queue exactly once, wherever it is in it, when its call ends
 * (returns, fails, is cancelled while waiting) or its backend exits, so no
 * call waits for one that is gone and the limit always holds. A call that
 * has waited fintx.batch_queue_timeout leaves the list and runs anyway,
 * uncounted: a batch admitted before it may be waiting for a row lock of a
 * transaction that stays open, and the queue must not stall behind it. The
 * slot is given back when the function returns, before the caller's commit:
 * the WAL flush of one batch overlaps the work of the next. A batch in a
 * transaction that has already written never waits: it may hold row locks
 * an admitted batch waits for, and PostgreSQL's deadlock detector cannot
 * see a wait in this queue. Nor does a batch called inside another one.
 *
 * Only with shared_preload_libraries (shared memory); otherwise, and with
 * fintx.max_active_batches = 0 (the default), batches are not queued.
 *-------------------------------------------------------------------------
 */
#include "fintx.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "funcapi.h"
#include "access/twophase.h"
#include "access/xact.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/spin.h"
#include "postmaster/postmaster.h"
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

/* what a backend is doing in the queue */
#define GATE_NONE		0		/* not in the queue */
#define GATE_WAITING	1		/* in the list, waiting for its turn */
#define GATE_RUNNING	2		/* admitted: counted in active */
#define GATE_OVER		3		/* ran after the queue timeout: not counted */

typedef struct GateSlot
{
	int			prev;			/* neighbours in the waiting list (pgprocno), -1 none */
	int			next;
	int			state;
} GateSlot;

typedef struct BatchGate
{
	slock_t		mutex;			/* protects everything below */
	int			limit;			/* the limit last set by a backend that entered */
	int			active;			/* batches running with a turn */
	int			waiting;		/* length of the list */
	int			head;			/* first and last waiting backend, -1 none */
	int			tail;
	uint64		admitted;		/* batches admitted since the server started */
	uint64		timed_out;		/* batches that ran after the queue timeout */
	int			nslots;
	GateSlot	slots[FLEXIBLE_ARRAY_MEMBER];	/* by pgprocno */
} BatchGate;

static BatchGate *gate = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* RunRequests calls that are running in this backend (a batch may call another) */
static int	depth = 0;

/* whether this backend has a place in the queue (waiting or running) */
static bool queued = false;
static bool exit_callback = false;

static int
GateSlots(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
}

static Size
GateSize(void)
{
	return add_size(offsetof(BatchGate, slots), mul_size(sizeof(GateSlot), GateSlots()));
}

static void
GateShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();	/* LCOV_EXCL_LINE: another module's hook */
	RequestAddinShmemSpace(MAXALIGN(GateSize()));
}

static void
GateShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();	/* LCOV_EXCL_LINE: another module's hook */
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	gate = ShmemInitStruct("fintx batch gate", GateSize(), &found);
	if (!found)
	{
		memset(gate, 0, GateSize());
		SpinLockInit(&gate->mutex);
		gate->head = gate->tail = -1;
		gate->nslots = GateSlots();
		for (int i = 0; i < gate->nslots; i++)
			gate->slots[i].prev = gate->slots[i].next = -1;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init: the settings, and the shared memory when preloaded. */
void
fintx_gate_init(bool preloaded)
{
	DefineCustomIntVariable("fintx.max_active_batches",
							"Batches (transfer_batch, transfer_batch_signed) applied at once; the others wait their turn. 0: no limit.",
							"About twice the number of CPU cores; needs shared_preload_libraries.",
							&fintx_max_active_batches,
							0, 0, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("fintx.batch_queue_timeout",
							"Longest wait of a batch for its turn; then it runs anyway. 0: never wait.",
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

/* Takes backend p out of the waiting list (mutex held). */
static void
Unlink(int p)
{
	GateSlot   *s = &gate->slots[p];

	if (s->prev >= 0)
		gate->slots[s->prev].next = s->next;
	else
		gate->head = s->next;
	if (s->next >= 0)
		gate->slots[s->next].prev = s->prev;
	else
		gate->tail = s->prev;
	s->prev = s->next = -1;
	gate->waiting--;
}

/*
 * Admits waiting backends from the head of the list while there is room
 * (mutex held); their pgprocnos go to woken (room for the limit, at most
 * 1000), the caller sets their latches after releasing the mutex.
 */
static int
AdmitWaiters(int *woken)
{
	int			n = 0;

	while (gate->head >= 0 && gate->active < gate->limit && n < 1000)
	{
		int			p = gate->head;

		Unlink(p);
		gate->slots[p].state = GATE_RUNNING;
		gate->active++;
		gate->admitted++;
		woken[n++] = p;
	}
	return n;
}

static void
WakeAll(const int *woken, int n)
{
	for (int i = 0; i < n; i++)
		SetLatch(&GetPGProcByNumber(woken[i])->procLatch);
}

/* Leaves the queue, wherever this backend is in it, and admits whom that makes room for. */
static void
Leave(void)
{
	int			woken[1000];
	int			n;
	GateSlot   *me;

	if (!queued)
		return;
	queued = false;
	me = &gate->slots[MyProc->pgprocno];
	SpinLockAcquire(&gate->mutex);
	if (me->state == GATE_WAITING)
		Unlink(MyProc->pgprocno);
	else if (me->state == GATE_RUNNING)
		gate->active--;
	me->state = GATE_NONE;
	n = AdmitWaiters(woken);
	SpinLockRelease(&gate->mutex);
	WakeAll(woken, n);
}

static void
GateExit(int code, Datum arg)
{
	Leave();
	depth = 0;
}

/*
 * Called by every RunRequests call when it starts, inside the PG_TRY whose
 * PG_FINALLY calls fintx_gate_leave(). The outermost call of a batch waits
 * for its turn (see the file header): not in a transaction that has already
 * written (it may hold row locks that an admitted batch waits for, a wait
 * PostgreSQL's deadlock detector would not see), and not when nested in
 * another call.
 */
void
fintx_gate_enter(bool batch)
{
	int			woken[1000];
	int			n;
	int			me;
	GateSlot   *slot;
	TimestampTz start;

	if (++depth > 1 || !batch || gate == NULL || fintx_max_active_batches <= 0 ||
		TransactionIdIsValid(GetTopTransactionIdIfAny()) || MyProc == NULL ||
		MyProc->pgprocno >= gate->nslots)
		return;
	if (!exit_callback)
	{
		before_shmem_exit(GateExit, (Datum) 0);
		exit_callback = true;
	}
	me = MyProc->pgprocno;
	slot = &gate->slots[me];
	SpinLockAcquire(&gate->mutex);
	gate->limit = fintx_max_active_batches;
	/* join the end of the list, then admit from its head (perhaps this backend) */
	slot->prev = gate->tail;
	slot->next = -1;
	if (gate->tail >= 0)
		gate->slots[gate->tail].next = me;
	else
		gate->head = me;
	gate->tail = me;
	gate->waiting++;
	slot->state = GATE_WAITING;
	queued = true;
	n = AdmitWaiters(woken);
	SpinLockRelease(&gate->mutex);
	WakeAll(woken, n);

	start = GetCurrentTimestamp();
	for (;;)
	{
		int			state;
		long		waited;

		SpinLockAcquire(&gate->mutex);
		state = slot->state;
		SpinLockRelease(&gate->mutex);
		if (state == GATE_RUNNING)
			break;
		waited = TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());
		if (waited >= fintx_batch_queue_timeout_ms)
		{
			SpinLockAcquire(&gate->mutex);
			if (slot->state == GATE_WAITING)
			{
				Unlink(me);
				slot->state = GATE_OVER;
				gate->timed_out++;
			}
			SpinLockRelease(&gate->mutex);
			break;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 fintx_batch_queue_timeout_ms - waited, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* Called by every RunRequests call when it ends, also when it fails. */
void
fintx_gate_leave(void)
{
	if (depth > 0 && --depth > 0)
		return;
	Leave();
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
		SpinLockAcquire(&gate->mutex);
		v[1] = Int32GetDatum(gate->active);
		v[2] = Int64GetDatum((int64) gate->waiting);
		v[3] = Int64GetDatum((int64) gate->admitted);
		v[4] = Int64GetDatum((int64) gate->timed_out);
		SpinLockRelease(&gate->mutex);
	}
	else
		nulls[1] = nulls[2] = nulls[3] = nulls[4] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, v, nulls)));
}
