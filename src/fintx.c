/*-------------------------------------------------------------------------
 * fintx.c
 *	  Module entry: GUCs, background worker registration and helpers shared
 *	  by every module.
 *-------------------------------------------------------------------------
 */
#include "fintx.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "nodes/parsenodes.h"
#include "utils/datetime.h"
#include "utils/guc.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

PG_MODULE_MAGIC;

char	   *fintx_database = NULL;
int			fintx_expire_interval_ms = 1000;

int			fintx_keep_freed_memory_mb = 64;

void		_PG_init(void);

/*
 * Applies fintx.keep_freed_memory: glibc returns freed memory at the top of
 * the heap to the kernel above M_TRIM_THRESHOLD, and serves blocks above
 * M_MMAP_THRESHOLD with mmap (unmapped again when freed). Both thresholds
 * raised, the memory of one call is reused by the next without page faults.
 * Set by the postmaster when it preloads the library; every backend inherits
 * it. Without preloading the setting does not exist and glibc's defaults
 * stay.
 */
static void
KeepFreedMemory(void)
{
#ifdef __GLIBC__
	int64		bytes = (int64) fintx_keep_freed_memory_mb * 1024 * 1024;

	if (bytes <= 0)
		return;
	/* glibc caps the mmap threshold at 32 MB on 64-bit systems */
	mallopt(M_MMAP_THRESHOLD, (int) Min(bytes, 32 * 1024 * 1024));
	mallopt(M_TRIM_THRESHOLD, (int) Min(bytes, PG_INT32_MAX));
#endif
}

/* GUC check of fintx.checkpoint_origin: empty (the default origin), or bytes a C2SP key name may hold. */
static bool
CheckOrigin(char **newval, void **extra, GucSource source)
{
	for (const unsigned char *p = (const unsigned char *) *newval; p && *p; p++)
		if (!fintx_origin_char_ok(*p))
		{
			GUC_check_errdetail("A checkpoint origin is also the signing key's name: printable ASCII without spaces or \"+\" (C2SP signed notes).");
			return false;
		}
	return true;
}

/* Registers GUCs; when preloaded, also the background worker. */
void
_PG_init(void)
{
	DefineCustomStringVariable("fintx.database",
							   "Database in which the fintx background worker runs.",
							   "The worker releases expired holds there when fintx is installed in it. "
							   "On reload with a new value the worker restarts in the new database.",
							   &fintx_database,
							   "postgres",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("fintx.expire_interval",
							"Interval between two passes of the hold expiry worker.",
							NULL,
							&fintx_expire_interval_ms,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("fintx.seal_interval",
							"Interval between two sealing passes of the audit log by the worker.",
							NULL,
							&fintx_seal_interval_ms,
							100, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomStringVariable("fintx.signing_key_file",
							   "PEM file holding the Ed25519 private key that signs audit checkpoints.",
							   "Empty: blocks are not signed and fintx.checkpoint() is refused.",
							   &fintx_signing_key_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("fintx.checkpoint_origin",
							   "Origin line of audit checkpoints and name of the signing key.",
							   "Empty: fintx.local/<system identifier>/<database>. Set it per database with ALTER DATABASE.",
							   &fintx_checkpoint_origin,
							   "",
							   PGC_SUSET,
							   0,
							   CheckOrigin, NULL, NULL);
	DefineCustomStringVariable("fintx.trusted_keys",
							   "Verifier keys of earlier signing keys, for fintx.verify_audit() after a key rotation.",
							   "C2SP verifier keys (name+keyid+base64), separated by commas or spaces.",
							   &fintx_trusted_keys,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("fintx.denial_wait",
							"How long a denied call waits for the worker to commit its access-log row.",
							"0: do not wait (a crash right after the denial can lose the row).",
							&fintx_denial_wait_ms,
							1000, 0, 60 * 1000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	fintx_outbox_init();
	/* a server-start setting: it exists only when fintx is preloaded */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable("fintx.keep_freed_memory",
								"Memory a backend keeps after freeing it, for its next call (glibc malloc).",
								"A batch allocates megabytes and frees them at its end; by default glibc gives "
								"that memory back to the kernel, and the next batch pays a page fault for every "
								"page of it again. 0 keeps glibc's defaults.",
								&fintx_keep_freed_memory_mb,
								64, 0, 1024,
								PGC_POSTMASTER,
								GUC_UNIT_MB,
								NULL, NULL, NULL);
		KeepFreedMemory();
	}
	/* batch admission (gate.c): the settings; the queue itself needs the preload */
	fintx_gate_init(process_shared_preload_libraries_in_progress);
	MarkGUCPrefixReserved("fintx");

	/* the caller-identity hook (authz.c); when not preloaded, from the first use on */
	fintx_authz_init();

	if (process_shared_preload_libraries_in_progress)
	{
		fintx_denials_init();
		fintx_register_worker();
	}
}

/*
 * Prepares an SPI plan on first use and keeps it for the life of the backend,
 * as a generic plan (planned once).
 */
SPIPlanPtr
fintx_keep_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *types)
{
	return fintx_keep_plan_opts(slot, sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);
}

/* As fintx_keep_plan, with planner options (CURSOR_OPT_CUSTOM_PLAN: replan with the values). */
SPIPlanPtr
fintx_keep_plan_opts(SPIPlanPtr *slot, const char *sql, int nargs, Oid *types, int opts)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, types, opts);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));	/* LCOV_EXCL_LINE */
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");	/* LCOV_EXCL_LINE */
		*slot = plan;
	}
	return *slot;
}

/*
 * Tagged, length-prefixed fields of fintx's canonical encodings (request
 * fingerprints, audit entries): one tag byte, a 4-byte big-endian length
 * (0xFFFFFFFF for SQL NULL, len < 0 here), then the bytes.
 */
void
fintx_put_field(StringInfo buf, char tag, const void *data, int32 len)
{
	uint32		be = pg_hton32(len < 0 ? 0xFFFFFFFFu : (uint32) len);

	appendStringInfoChar(buf, tag);
	appendBinaryStringInfo(buf, (char *) &be, 4);
	if (len > 0)
		appendBinaryStringInfo(buf, data, len);
}

/* A field holding a big-endian 64-bit integer. */
void
fintx_put_int64(StringInfo buf, char tag, int64 v)
{
	uint64		be = pg_hton64((uint64) v);

	fintx_put_field(buf, tag, &be, 8);
}

/* A field holding a NUL-terminated string. */
void
fintx_put_string(StringInfo buf, char tag, const char *s)
{
	fintx_put_field(buf, tag, s, (int32) strlen(s));
}

/*
 * SPI_connect, for callers with nothing to clean up on failure (which would
 * be a broken backend, not a condition fintx can cause or test).
 */
void
fintx_spi_connect(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");	/* LCOV_EXCL_LINE */
}

/*
 * Turns JIT off until AtEOXact_GUC(true, level) with the returned level (an
 * error restores it too). For fintx's own queries: index lookups and short
 * scans of fast-growing tables, planned per call, whose estimates soon pass
 * jit_above_cost; compiling them costs more than running them (a sealing pass
 * 100 times over, a Merkle proof 450 ms instead of 4 ms on a 2.4M-leaf log).
 */
int
fintx_jit_off(void)
{
	int			level = NewGUCNestLevel();

	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return level;
}

/*
 * fintx_jit_off(), and no sequential scan where an index serves, until
 * AtEOXact_GUC(true, level). For the sealing pass, poll() and the proof and
 * leaf lookups: their plans are generic and kept for the session (or, for the
 * sealing scan, custom), and a plan made while a table was small must not go
 * on reading it from end to end once it has grown (the tree-node lookup did:
 * a sequential scan of audit_nodes per node until autovacuum's next ANALYZE).
 */
int
fintx_index_planning(void)
{
	int			level = fintx_jit_off();

	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

/*
 * SPI_execute_plan of a plan kept for the session, under
 * fintx_index_planning(): index lookups on fast-growing tables whose kept
 * plan, made while a table was small (a new database), would otherwise go on
 * scanning it whole until autovacuum's next ANALYZE.
 */
int
fintx_execute_indexed(SPIPlanPtr plan, Datum *args, const char *nulls, bool read_only, long count)
{
	int			nestlevel = fintx_index_planning();
	int			ret = SPI_execute_plan(plan, args, nulls, read_only, count);

	AtEOXact_GUC(true, nestlevel);
	return ret;
}

/* Emits an internal error unless an SPI (or similar) result code is the expected one. */
void
fintx_spi_expect(int ret, int expect, const char *what)
{
	if (ret != expect)
		elog(ERROR, "%s: unexpected result %s", what, SPI_result_code_string(ret));	/* LCOV_EXCL_LINE */
}

/*
 * Runs fn(arg) in a subtransaction. Returns NULL if it succeeded (its work
 * joins the caller's transaction), else the error it raised, after rolling
 * the subtransaction back (every lock it took released) and flushing the
 * error state: the caller re-throws (ReThrowError) what it does not handle.
 */
ErrorData *
fintx_subtransaction(void (*fn) (void *), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return edata;
}

/* A copy of s in the context of the caller of SPI (it outlives SPI_finish). */
char *
fintx_spi_strdup(const char *s)
{
	return strcpy(SPI_palloc(strlen(s) + 1), s);
}

/* A column of an SPI row as text, copied to the caller's context (NULL stays NULL). */
char *
fintx_spi_copy_text(HeapTuple tup, TupleDesc desc, int col)
{
	char	   *v = SPI_getvalue(tup, desc, col);

	return v == NULL ? NULL : fintx_spi_strdup(v);
}

/*
 * ts as ISO text in UTC ("2026-11-27 21:51:21.521836+00"), whatever the
 * session's TimeZone and DateStyle: for the details of audit entries, whose
 * text must not depend on the writer's session (as row images do not).
 */
char *
fintx_timestamptz_utc(TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;
	char		buf[MAXDATELEN + 1];

	/* a hold's timeout and a denial's time are finite, valid timestamps */
	if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "timestamp out of range");	/* LCOV_EXCL_LINE */
	tm.tm_isdst = 0;			/* UTC: known, so that the offset is printed */
	EncodeDateTime(&tm, fsec, true, 0, NULL, USE_ISO_DATES, buf);
	return pstrdup(buf);
}
