/*-------------------------------------------------------------------------
 * authz.c
 *	  Service authorization: who is calling, which grant covers the request,
 *	  per-transfer and daily limits, maker-checker approvals, the access log
 *	  and the row-security predicates.
 *
 * Every API function calls fintx_authz_begin() first, which identifies the
 * caller (the role that called, as set by SET ROLE): superusers and members
 * of fintx_admin may do everything; a registered service may do what its
 * grants allow; anyone else is refused. Each decision is recorded: allowed
 * ones in fintx.access_log_entries in the caller's transaction (written by
 * fintx_authz_flush()), denied ones through the durable denial queue
 * (denials.c), because the denied transaction aborts.
 *
 * A service's grants are cached per backend and dropped whenever fintx's
 * grant tables change (the management functions send a relcache
 * invalidation for them) or role memberships change. Loading them is an
 * ordinary query: if it fails, the call fails — never allowed by default.
 *-------------------------------------------------------------------------
 */
#include "fintx.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/user.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(fintx_register_service);
PG_FUNCTION_INFO_V1(fintx_set_service_key);
PG_FUNCTION_INFO_V1(fintx_grant_permission);
PG_FUNCTION_INFO_V1(fintx_revoke_permission);
PG_FUNCTION_INFO_V1(fintx_approve_transfer);
PG_FUNCTION_INFO_V1(fintx_reject_transfer);
PG_FUNCTION_INFO_V1(fintx_account_visible);
PG_FUNCTION_INFO_V1(fintx_account_id_visible);
PG_FUNCTION_INFO_V1(fintx_transfer_visible);
PG_FUNCTION_INFO_V1(fintx_event_visible);
PG_FUNCTION_INFO_V1(fintx_consumer_visible);
PG_FUNCTION_INFO_V1(fintx_grants_changed);

static const char *const op_names[FINTX_OP_COUNT] = {
	"account.open", "account.close", "transfer", "transfer.approve", "hold.resolve",
	"audit.read", "event.emit", "event.consume", "fintx.admin"
};

#define MAX_PATTERN_LEN 128
#define MAX_SERVICE_LEN 64

/* One grant of the calling service. */
typedef struct Grant
{
	FintxOp		op;
	char	   *pattern;
	char	   *currency;		/* NULL: any currency */
	bool		has_max;
	int64		max_amount;
	bool		has_daily;
	int64		daily_limit;
	bool		has_approval;
	int64		approval_above;
	int			literals;		/* non-wildcard characters: the more, the more specific */
} Grant;

/* An allowed decision waiting for its access-log row. */
typedef struct Decision
{
	FintxOp		op;
	char	   *object;
	char	   *currency;
	int64		amount;
	bool		has_amount;
	const char *reason;
	char	   *rule;
	int			count;			/* administrators: requests of one call folded together */
} Decision;

/* Per-backend cache of the calling role's service and grants. */
static MemoryContext cache_cxt = NULL;
static bool cache_valid = false;
static uint64 cache_generation = 0;
static Oid	cache_role = InvalidOid;
static char cache_role_name[NAMEDATALEN];
static bool cache_superuser = false;
static bool cache_admin = false;
static bool cache_auditor = false;
static char *cache_service = NULL;
static bool cache_has_key = false;
static uint8 cache_key[32];
static Grant *cache_grants = NULL;
static int	cache_ngrants = 0;
static Oid	services_relid = InvalidOid;
static Oid	permissions_relid = InvalidOid;
static Oid	accounts_relid = InvalidOid;
static HTAB *account_codes = NULL;
static bool callbacks_registered = false;

static int	definer_depth;
static bool CodeVisible(const char *code);

/*
 * Loaded (not preloaded) while a SECURITY DEFINER function was running: the
 * hook never saw that function start, so until the top-level statement that
 * loaded fintx ends (no such function outlives it) the caller is known only
 * inside the SECURITY DEFINER functions seen since. unseen_statement is that
 * statement's start time; 0: no such statement.
 */
static TimestampTz unseen_statement = 0;

/* The current call. */
static FintxCaller caller;
static bool active = false;
static List *decisions = NIL;

static SPIPlanPtr service_plan = NULL;
static SPIPlanPtr grants_plan = NULL;
static SPIPlanPtr usage_plan = NULL;
static SPIPlanPtr approval_insert_plan = NULL;
static SPIPlanPtr approval_lock_plan = NULL;
static SPIPlanPtr approval_decide_plan = NULL;
static SPIPlanPtr transfer_row_plan = NULL;
static SPIPlanPtr account_code_plan = NULL;

/* ------------------------------------------------------------------------
 * Cache invalidation
 * ------------------------------------------------------------------------
 */

static void
RelcacheCallback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == services_relid || relid == permissions_relid)
	{
		cache_valid = false;
		cache_generation++;
	}
	if ((relid == InvalidOid || relid == accounts_relid) && account_codes != NULL)
	{
		hash_destroy(account_codes);
		account_codes = NULL;
	}
}

static void
SyscacheCallback(Datum arg, int cacheid, uint32 hashvalue)
{
	cache_valid = false;
	cache_generation++;
}

static void
AuthzXactCallback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		active = false;
		decisions = NIL;
		definer_depth = 0;
		unseen_statement = 0;
	}
}

static void
RegisterCallbacks(void)
{
	if (callbacks_registered)
		return;
	CacheRegisterRelcacheCallback(RelcacheCallback, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, SyscacheCallback, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHOID, SyscacheCallback, (Datum) 0);
	RegisterXactCallback(AuthzXactCallback, NULL);
	cache_cxt = AllocSetContextCreate(TopMemoryContext, "fintx authz cache", ALLOCSET_SMALL_SIZES);
	callbacks_registered = true;
}

/* Tells other sessions (and this one) that services or grants changed. */
static void
InvalidateGrants(void)
{
	CacheInvalidateRelcacheByRelid(services_relid);
	CacheInvalidateRelcacheByRelid(permissions_relid);
}

static FintxOp
OpByName(const char *name)
{
	for (int i = 0; i < FINTX_OP_ADMIN; i++)
		if (strcmp(op_names[i], name) == 0)
			return (FintxOp) i;
	return FINTX_OP_COUNT;
}

static int
Literals(const char *pattern)
{
	int			n = 0;

	for (const char *p = pattern; *p; p++)
	{
		if (*p == '\\' && p[1])
		{
			p++;
			n++;
		}
		else if (*p != '%' && *p != '_')
			n++;
	}
	return n;
}

/* Loads the service and grants of role into the cache (SPI, nested connection). */
static void
LoadCache(Oid role)
{
	uint64		generation = cache_generation;
	Oid			nsp = fintx_namespace_oid();
	Oid			admin_role = get_role_oid("fintx_admin", true);
	Oid			auditor_role = get_role_oid("fintx_auditor", true);
	Datum		arg;
	Oid			types[1] = {TEXTOID};
	MemoryContext old;

	services_relid = get_relname_relid("services", nsp);
	permissions_relid = get_relname_relid("permissions", nsp);
	accounts_relid = get_relname_relid("accounts", nsp);
	cache_valid = false;
	/* role attributes and memberships: role changes invalidate the cache (SyscacheCallback) */
	strlcpy(cache_role_name, GetUserNameFromId(role, false), NAMEDATALEN);
	cache_superuser = superuser_arg(role);
	cache_admin = cache_superuser || (OidIsValid(admin_role) && has_privs_of_role(role, admin_role));
	cache_auditor = OidIsValid(auditor_role) && has_privs_of_role(role, auditor_role);
	arg = CStringGetTextDatum(cache_role_name);
	MemoryContextReset(cache_cxt);
	cache_service = NULL;
	cache_has_key = false;
	cache_grants = NULL;
	cache_ngrants = 0;

	fintx_spi_connect();
	/* the latest committed grants, also in a REPEATABLE READ transaction */
	PushActiveSnapshot(GetLatestSnapshot());
	fintx_keep_plan(&service_plan,
					/* by name: OIDs differ after a dump is restored into another cluster */
					"SELECT name, public_key FROM fintx.services WHERE role_name = $1", 1, types);
	fintx_spi_expect(SPI_execute_plan(service_plan, &arg, NULL, true, 1), SPI_OK_SELECT, "reading fintx.services failed");
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		key;
		Datum		name;

		old = MemoryContextSwitchTo(cache_cxt);
		cache_service = SPI_getvalue(tup, desc, 1);
		MemoryContextSwitchTo(old);
		key = SPI_getbinval(tup, desc, 2, &isnull);
		if (!isnull && VARSIZE_ANY_EXHDR(DatumGetPointer(key)) == 32)
		{
			memcpy(cache_key, VARDATA_ANY(DatumGetPointer(key)), 32);
			cache_has_key = true;
		}

		name = CStringGetTextDatum(cache_service);
		types[0] = TEXTOID;
		fintx_keep_plan(&grants_plan,
						"SELECT operation, account_pattern, currency, max_amount, daily_limit, approval_above"
						"  FROM fintx.permissions WHERE service = $1",
						1, types);
		fintx_spi_expect(SPI_execute_plan(grants_plan, &name, NULL, true, 0), SPI_OK_SELECT, "reading fintx.permissions failed");
		cache_grants = MemoryContextAllocZero(cache_cxt, sizeof(Grant) * (SPI_processed + 1));
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			Grant	   *g = &cache_grants[cache_ngrants];
			Datum		d;

			tup = SPI_tuptable->vals[i];
			old = MemoryContextSwitchTo(cache_cxt);
			g->op = OpByName(SPI_getvalue(tup, desc = SPI_tuptable->tupdesc, 1));
			g->pattern = SPI_getvalue(tup, desc, 2);
			g->currency = SPI_getvalue(tup, desc, 3);
			MemoryContextSwitchTo(old);
			d = SPI_getbinval(tup, desc, 4, &isnull);
			g->has_max = !isnull;
			g->max_amount = isnull ? 0 : DatumGetInt64(d);
			d = SPI_getbinval(tup, desc, 5, &isnull);
			g->has_daily = !isnull;
			g->daily_limit = isnull ? 0 : DatumGetInt64(d);
			d = SPI_getbinval(tup, desc, 6, &isnull);
			g->has_approval = !isnull;
			g->approval_above = isnull ? 0 : DatumGetInt64(d);
			g->literals = Literals(g->pattern);
			if (g->op != FINTX_OP_COUNT)
				cache_ngrants++;
		}
	}
	PopActiveSnapshot();
	SPI_finish();
	cache_role = role;
	/* an invalidation that arrived while loading makes the next call reload */
	cache_valid = (generation == cache_generation);
}

static void
EnsureCache(Oid role)
{
	RegisterCallbacks();
	if (!cache_valid || cache_role != role)
		LoadCache(role);
}

/* ------------------------------------------------------------------------
 * Matching grants
 * ------------------------------------------------------------------------
 */

/* SQL LIKE with escape character '\' (patterns are checked when granted). */
static bool
LikeMatch(const char *s, const char *p)
{
	const char *star_p = NULL;
	const char *star_s = NULL;

	while (*s)
	{
		if (*p == '\\' && p[1] == *s)
		{
			p += 2;
			s++;
		}
		else if (*p == '_' || (*p != '%' && *p != '\\' && *p == *s))
		{
			p++;
			s++;
		}
		else if (*p == '%')
		{
			star_p = ++p;
			star_s = s;
		}
		else if (star_p)
		{
			p = star_p;
			s = ++star_s;
		}
		else
			return false;
	}
	while (*p == '%')
		p++;
	return *p == '\0';
}

/* Whether a grant of pattern in grant_currency (NULL: any) covers object in currency. */
static bool
GrantCovers(const char *pattern, const char *grant_currency, const char *object, const char *currency)
{
	return LikeMatch(object, pattern) &&
		(grant_currency == NULL || (currency != NULL && strcmp(grant_currency, currency) == 0));
}

/*
 * The grant that decides: among the caller's grants of op whose pattern
 * matches object and whose currency is the request's (or any), the one for
 * that exact currency, then the most specific pattern, then the first by
 * pattern text.
 */
static Grant *
BestGrant(FintxOp op, const char *object, const char *currency)
{
	Grant	   *best = NULL;

	for (int i = 0; i < cache_ngrants; i++)
	{
		Grant	   *g = &cache_grants[i];

		if (g->op != op || !GrantCovers(g->pattern, g->currency, object, currency))
			continue;
		if (best == NULL ||
			(g->currency != NULL) > (best->currency != NULL) ||
			((g->currency != NULL) == (best->currency != NULL) &&
			 (g->literals > best->literals ||
			  (g->literals == best->literals && strcmp(g->pattern, best->pattern) < 0))))
			best = g;
	}
	return best;
}

static char *
GrantRule(Grant *g)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "grant %s on '%s'", op_names[g->op], g->pattern);
	if (g->currency)
		appendStringInfo(&buf, " in %s", g->currency);
	if (g->has_max)
		appendStringInfo(&buf, " max_amount=%lld", (long long) g->max_amount);
	if (g->has_daily)
		appendStringInfo(&buf, " daily_limit=%lld", (long long) g->daily_limit);
	if (g->has_approval)
		appendStringInfo(&buf, " approval_above=%lld", (long long) g->approval_above);
	return buf.data;
}

/* ------------------------------------------------------------------------
 * Who is calling
 *
 * fintx's functions are SECURITY DEFINER, so inside them the current user is
 * the extension's owner and the caller must be found elsewhere. The role set
 * by the session (GetOuterUserId) is the caller, unless the call comes from
 * inside another SECURITY DEFINER function: that function runs as its owner,
 * and so does fintx for it. An fmgr hook (installed when the library is
 * loaded: at server start when preloaded) keeps a stack of the
 * owners of the SECURITY DEFINER functions (outside schema fintx) currently
 * running; its top is the caller. Code that PostgreSQL runs as a table's
 * owner on someone else's behalf (ANALYZE, autovacuum, CREATE INDEX, REFRESH
 * MATERIALIZED VIEW: "security-restricted operations") may not call fintx.
 * ------------------------------------------------------------------------
 */

#define MAX_DEFINER_DEPTH 64

static fmgr_hook_type prev_fmgr_hook = NULL;
static Oid	definer_stack[MAX_DEFINER_DEPTH];

/* A SECURITY DEFINER function outside schema fintx? */
static bool
ForeignDefiner(Oid fn_oid)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn_oid));
	bool		foreign = false;

	if (HeapTupleIsValid(tup))
	{
		Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tup);

		foreign = proc->prosecdef && proc->pronamespace != get_namespace_oid("fintx", true);
		ReleaseSysCache(tup);
	}
	return foreign;
}

/*
 * At the start of a foreign SECURITY DEFINER function (the user is already
 * its owner) pushes that owner; pops it when the function ends or fails.
 * *priv remembers whether this frame pushed.
 */
static void
FmgrHook(FmgrHookEventType event, FmgrInfo *flinfo, Datum *priv)
{
	if (event == FHET_START)
	{
		bool		push = ForeignDefiner(flinfo->fn_oid);

		if (push)
		{
			if (definer_depth < MAX_DEFINER_DEPTH)
				definer_stack[definer_depth] = GetUserId();
			definer_depth++;
		}
		*priv = BoolGetDatum(push);
	}
	else if (DatumGetBool(*priv) && definer_depth > 0)
		definer_depth--;
	/* LCOV_EXCL_START: another module's hook */
	if (prev_fmgr_hook)
		prev_fmgr_hook(event, flinfo, priv);
	/* LCOV_EXCL_STOP */
}

/* Called from _PG_init (when preloaded: in every process; otherwise when first loaded). */
void
fintx_authz_init(void)
{
	/*
	 * No needs_fmgr_hook: fmgr calls every SECURITY DEFINER function (and
	 * every function with SET options) through fmgr_security_definer, which
	 * calls fmgr_hook; the functions the hook cares about are all among them.
	 */
	prev_fmgr_hook = fmgr_hook;
	fmgr_hook = FmgrHook;

	/*
	 * Loaded on first use inside a function that changed the current user:
	 * its owner, not the session's role, may be the caller, and nothing
	 * tells which of the functions running now switched users. A wrong
	 * guess would put a retry in another principal's key space (applied
	 * twice) or run it with another role's grants: fintx_calling_user()
	 * refuses until the statement ends instead.
	 */
	if (!process_shared_preload_libraries_in_progress && IsTransactionState() && InLocalUserIdChange())
	{
		RegisterCallbacks();
		unseen_statement = GetCurrentStatementStartTimestamp();
	}
}

/* The role on whose behalf fintx is called (see above). */
Oid
fintx_calling_user(void)
{
	if (definer_depth > MAX_DEFINER_DEPTH)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("SECURITY DEFINER functions are nested too deeply to identify the caller of fintx")));
	if (definer_depth > 0)
		return definer_stack[definer_depth - 1];
	/* (in a later statement the functions running at load have ended) */
	if (unseen_statement != 0 && GetCurrentStatementStartTimestamp() == unseen_statement)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("fintx cannot identify its caller in this statement"),
				 errdetail("fintx was loaded in this session inside a SECURITY DEFINER function, which it did not see start; "
						   "its owner may be the caller."),
				 errhint("Add fintx to shared_preload_libraries (or session_preload_libraries). "
						 "Without it, retry: from the next statement on, fintx knows its caller.")));
	return GetOuterUserId();
}

/* ------------------------------------------------------------------------
 * Decisions
 * ------------------------------------------------------------------------
 */

/*
 * Identifies the caller of an API function and starts recording its
 * decisions. Must be the first thing every API function does.
 */
FintxCaller *
fintx_authz_begin(void)
{
	Oid			role = fintx_calling_user();

	if (InSecurityRestrictedOperation())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("fintx cannot be called within a security-restricted operation"),
				 errdetail("ANALYZE, VACUUM, CREATE INDEX, REFRESH MATERIALIZED VIEW and the like run index and view code as its owner on someone else's behalf.")));
	EnsureCache(role);
	memset(&caller, 0, sizeof(caller));
	caller.role = role;
	caller.role_name = pstrdup(cache_role_name);
	caller.superuser = cache_superuser;
	caller.admin = cache_admin;
	caller.auditor = cache_auditor;
	caller.service = cache_service ? pstrdup(cache_service) : NULL;
	caller.has_key = cache_has_key;
	memcpy(caller.public_key, cache_key, 32);
	decisions = NIL;
	active = true;
	return &caller;
}

/* Work done by fintx itself (expiring holds, executing an approved transfer). */
void
fintx_authz_system(void)
{
	active = false;
	decisions = NIL;
}

bool
fintx_authz_active(void)
{
	return active;
}

/* Remembers an allowed decision for the access log (written by fintx_authz_flush). */
static void
RecordAllowed(FintxOp op, const char *object, const char *currency, int64 amount, bool has_amount,
			  const char *reason, const char *rule)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	Decision   *d;

	if (caller.admin && decisions != NIL)
	{
		/* one row per call for administrators: fold batch requests together */
		d = (Decision *) llast(decisions);
		if (d->op == op)
		{
			d->count++;
			d->has_amount = false;	/* several amounts: see the audit entries */
			MemoryContextSwitchTo(old);
			return;
		}
	}
	d = palloc0(sizeof(Decision));
	d->op = op;
	d->object = object ? pstrdup(object) : NULL;
	d->currency = currency ? pstrdup(currency) : NULL;
	d->amount = amount;
	d->has_amount = has_amount;
	d->reason = reason;
	d->rule = rule ? pstrdup(rule) : NULL;
	d->count = 1;
	decisions = lappend(decisions, d);
	MemoryContextSwitchTo(old);
}

/*
 * For the audit entry of the i-th request of this call: the service and the
 * grant that allowed it. False for administrators and system work (their
 * audit entries carry the calling role as actor).
 */
bool
fintx_authz_decision(int i, const char **service, const char **rule)
{
	Decision   *d;

	if (!active || caller.admin || i >= list_length(decisions))
		return false;
	d = (Decision *) list_nth(decisions, i);
	*service = caller.service;
	*rule = d->rule;
	return true;
}

/* Refuses the current request: queues the denial durably, then emits 42501. */
void
fintx_authz_deny(FintxOp op, const char *object, const char *currency, int64 amount, bool has_amount,
				 const char *reason, const char *rule)
{
	fintx_denial_enqueue(caller.role_name, fintx_session_role_name(),
						 caller.service, op_names[op], object, currency, amount, has_amount,
						 reason, rule);
	fintx_raise_recorded(errmsg("permission denied for %s on \"%s\"", op_names[op], object ? object : ""),
						 errdetail("%s", reason),
						 rule ? errhint("Decided by %s.", rule) : 0);
}

/*
 * The key of the caller's usage row of grant g today, in args[0..4] ($1..$5
 * of USAGE_INSERT, types in types[0..4]). Today is the UTC day when the
 * call first counts, taken once per call: not of the transaction's
 * start (now()), so a transaction left open since yesterday cannot spend
 * yesterday's limit today; and the same for every row a batch locks and counts.
 */
static void
UsageKey(Datum *args, Oid *types, Grant *g, FintxOp op, const char *currency)
{
	args[0] = CStringGetTextDatum(caller.service);
	args[1] = CStringGetTextDatum(op_names[op]);
	args[2] = CStringGetTextDatum(g->pattern);
	args[3] = CStringGetTextDatum(currency ? currency : "");
	if (caller.usage_day == 0)	/* (2000-01-01 is never today) */
		caller.usage_day = (DateADT) (GetCurrentTimestamp() / USECS_PER_DAY);
	args[4] = DateADTGetDatum(caller.usage_day);
	types[0] = types[1] = types[2] = types[3] = TEXTOID;
	types[4] = DATEOID;
}

#define USAGE_INSERT(used) \
	"INSERT INTO fintx.limit_usage AS u (service, operation, account_pattern, currency, day, used)" \
	" VALUES ($1, $2, $3, $4, $5, " used ")" \
	" ON CONFLICT (service, operation, account_pattern, currency, day)"

/*
 * Adds amount to the caller's usage of grant g today (UTC calendar day, per
 * currency), locking the usage row; false if that would exceed the limit
 * (the row is locked all the same). SPI connected.
 */
static bool
CountUsage(Grant *g, FintxOp op, const char *currency, int64 amount)
{
	Datum		args[7];
	Oid			types[7];

	UsageKey(args, types, g, op, currency);
	args[5] = Int64GetDatum(amount);
	args[6] = Int64GetDatum(g->daily_limit);
	types[5] = types[6] = INT8OID;
	fintx_keep_plan(&usage_plan,
					USAGE_INSERT("$6")
					" DO UPDATE SET used = u.used + EXCLUDED.used WHERE u.used <= $7 - EXCLUDED.used"
					" RETURNING used",
					7, types);
	fintx_spi_expect(SPI_execute_plan(usage_plan, args, NULL, false, 0), SPI_OK_INSERT_RETURNING,
					 "counting the daily limit failed");
	return SPI_processed == 1;
}

/* Counts amount against the grant's daily limit; emits 42501 if it would exceed it. */
static void
UseDailyLimit(Grant *g, FintxOp op, const char *object, const char *currency, int64 amount,
			  const char *rule)
{
	if (amount > g->daily_limit)
		fintx_authz_deny(op, object, currency, amount, true,
						 psprintf("amount %lld exceeds the daily limit %lld",
								  (long long) amount, (long long) g->daily_limit), rule);
	fintx_spi_connect();
	if (!CountUsage(g, op, currency, amount))
		fintx_authz_deny(op, object, currency, amount, true,
						 psprintf("amount %lld would exceed the daily limit %lld for %s today (UTC)",
								  (long long) amount, (long long) g->daily_limit,
								  currency ? currency : "this currency"), rule);
	SPI_finish();
}

/*
 * Locks the caller's usage row of grant g today, creating it (used = 0) if
 * there is none; writes nothing to an existing row (a row lock only). SPI
 * connected.
 */
static void
LockUsage(Grant *g, FintxOp op, const char *currency)
{
	static SPIPlanPtr lock_usage_plan = NULL;
	Datum		args[5];
	Oid			types[5];

	UsageKey(args, types, g, op, currency);
	/* ON CONFLICT DO UPDATE locks the existing row before its WHERE clause refuses the update */
	fintx_keep_plan(&lock_usage_plan, USAGE_INSERT("0") " DO UPDATE SET used = u.used WHERE false", 5, types);
	fintx_spi_expect(SPI_execute_plan(lock_usage_plan, args, NULL, false, 0), SPI_OK_INSERT,
					 "locking a daily limit failed");
}

/* A daily-limit usage row: the grant's pattern and the request's currency. */
typedef struct UsageRow
{
	Grant	   *grant;
	const char *currency;
} UsageRow;

static int
CompareUsageRow(const void *a, const void *b)
{
	const UsageRow *x = a;
	const UsageRow *y = b;
	int			c = strcmp(x->grant->pattern, y->grant->pattern);

	return c != 0 ? c : strcmp(x->currency ? x->currency : "", y->currency ? y->currency : "");
}

/*
 * Locks, in one fixed order (pattern, then currency), the daily-limit rows
 * that the n requests (op on objects[i] in currencies[i]) will count against.
 * Each request counts its amount in the batch's order, one row after another;
 * two batches of one service whose requests meet the same two rows in
 * opposite orders would otherwise deadlock. Counting then finds every row
 * already locked by this transaction. Requests that no grant with a daily
 * limit covers are skipped (their authorization decides).
 */
void
fintx_authz_lock_limits(FintxOp op, const char **objects, const char **currencies, int n)
{
	UsageRow   *rows;
	int			nrows = 0;

	if (!active || caller.admin || caller.service == NULL)
		return;
	rows = palloc(sizeof(UsageRow) * n);
	for (int i = 0; i < n; i++)
	{
		Grant	   *g = BestGrant(op, objects[i], currencies[i]);

		if (g != NULL && g->has_daily)
		{
			rows[nrows].grant = g;
			rows[nrows].currency = currencies[i];
			nrows++;
		}
	}
	if (nrows < 2)
		return;
	qsort(rows, nrows, sizeof(UsageRow), CompareUsageRow);
	fintx_spi_connect();
	for (int i = 0; i < nrows; i++)
		if (i == 0 || CompareUsageRow(&rows[i - 1], &rows[i]) != 0)
			LockUsage(rows[i].grant, op, rows[i].currency);
	SPI_finish();
}

/*
 * Decides whether the caller may perform op on object (an account code or
 * another resource) for amount in currency; emits 42501 (after queueing the
 * denial) if not. Returns true if the request must wait for approval (only
 * when approval_allowed; otherwise such a request is refused).
 * count_daily: count the amount against the grant's daily limit (a
 * rejection moves no money: it checks the checker's per-transfer limit only).
 */
static bool
Authorize(FintxOp op, const char *object, const char *currency, int64 amount, bool has_amount,
		  bool approval_allowed, bool count_daily)
{
	Grant	   *g;
	char	   *rule;
	bool		approval;

	Assert(active);				/* callers check fintx_authz_active() or called begin */
	if (caller.admin)
	{
		RecordAllowed(op, object, currency, amount, has_amount, "administrator",
					  caller.superuser ? "superuser" : "member of fintx_admin");
		return false;
	}
	if (caller.service == NULL)
		fintx_authz_deny(op, object, currency, amount, has_amount,
						 psprintf("role \"%s\" is not a registered fintx service", caller.role_name),
						 NULL);
	g = BestGrant(op, object, currency);
	/*
	 * The currency is named only for an account the service may see: for
	 * another, naming it would tell that the account exists (and its currency).
	 */
	if (g == NULL)
	{
		bool		name_currency = currency && CodeVisible(object);

		fintx_authz_deny(op, object, currency, amount, has_amount,
						 psprintf("no grant of %s to service \"%s\" covers \"%s\"%s%s",
								  op_names[op], caller.service, object,
								  name_currency ? " in " : "", name_currency ? currency : ""),
						 NULL);
	}
	rule = GrantRule(g);
	if (has_amount && g->has_max && amount > g->max_amount)
		fintx_authz_deny(op, object, currency, amount, has_amount,
						 psprintf("amount %lld exceeds the per-transfer limit %lld",
								  (long long) amount, (long long) g->max_amount), rule);
	approval = has_amount && g->has_approval && amount > g->approval_above;
	if (approval && !approval_allowed)
		fintx_authz_deny(op, object, currency, amount, has_amount,
						 psprintf("amount %lld is above the approval threshold %lld; such a transfer must be requested alone with fintx.transfer() or fintx.transfer_signed()",
								  (long long) amount, (long long) g->approval_above), rule);
	if (has_amount && g->has_daily && count_daily)
		UseDailyLimit(g, op, object, currency, amount, rule);
	RecordAllowed(op, object, currency, amount, has_amount,
				  approval ? "allowed, awaiting approval" : "allowed", rule);
	return approval;
}

/* Authorize, counting against daily limits (every decision but a rejection). */
bool
fintx_authorize(FintxOp op, const char *object, const char *currency, int64 amount, bool has_amount,
				bool approval_allowed)
{
	return Authorize(op, object, currency, amount, has_amount, approval_allowed, true);
}

/*
 * Authorizes post_pending / void_pending for a service before the hold is
 * touched, so that a hold outside its grants is refused (42501) without
 * revealing whether it exists or how it was resolved.
 */
void
fintx_authorize_hold(LedgerRequest *req)
{
	static SPIPlanPtr hold_plan = NULL;
	Datum		arg = Int64GetDatum(req->hold_id);
	Oid			types[1] = {INT8OID};
	char	   *object = psprintf("transfer %lld", (long long) req->hold_id);
	char	   *code;
	char	   *currency;

	if (!active || caller.admin)
		return;
	if (caller.service == NULL)
		fintx_authz_deny(FINTX_OP_HOLD_RESOLVE, object, NULL, 0, false,
						 psprintf("role \"%s\" is not a registered fintx service", caller.role_name), NULL);
	fintx_spi_connect();
	fintx_keep_plan(&hold_plan,
					"SELECT a.code, a.currency, t.amount FROM fintx.transfers t"
					"  JOIN fintx.accounts a ON a.id = t.from_account WHERE t.id = $1",
					1, types);
	/*
	 * read_only = false: a new snapshot, as the ledger's own hold lookup
	 * takes; the statement's snapshot misses a hold made earlier in the same
	 * statement or committed since it began, and would refuse it.
	 */
	fintx_spi_expect(fintx_execute_indexed(hold_plan, &arg, NULL, false, 1), SPI_OK_SELECT, "reading a hold failed");
	/*
	 * A transfer that no grant covers is refused as an unknown one is, naming
	 * only its id: naming its account would tell a service which account any
	 * transfer id belongs to.
	 */
	code = SPI_processed == 1 ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
	currency = SPI_processed == 1 ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2) : NULL;
	if (code == NULL || BestGrant(FINTX_OP_HOLD_RESOLVE, code, currency) == NULL)
		fintx_authz_deny(FINTX_OP_HOLD_RESOLVE, object, NULL, 0, false,
						 psprintf("no grant of hold.resolve to service \"%s\" covers transfer %lld",
								  caller.service, (long long) req->hold_id), NULL);
	else
	{
		bool		isnull;
		int64		held = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));

		/* a void moves no money: bounded by max_amount, counted in no daily limit (as a rejection) */
		(void) Authorize(FINTX_OP_HOLD_RESOLVE, code, currency, req->amount_given ? req->amount : held, true,
						 false, req->op != LEDGER_VOID);
	}
	SPI_finish();
	req->preauthorized = true;
}

/* Writes the decisions recorded so far to the access log now, unless nothing can be written. */
static void
FlushDecisionsNow(void)
{
	if (decisions != NIL && !XactReadOnly)
	{
		fintx_spi_connect();
		fintx_authz_flush();
		SPI_finish();
	}
	decisions = NIL;
}

/*
 * For functions that act on no account (audit reading, managing services
 * and grants, events): staff (administrators, and auditors for audit.read)
 * pass; a service needs a grant of op whose pattern matches object.
 * Managing services and grants and reading the audit log are logged for
 * staff too (reads: PCI DSS 10.2.1.3, all access to audit logs), except
 * where nothing can be written (a read-only transaction, a hot standby).
 * Staff event operations are not: the outbox records who emitted, and
 * consumers poll constantly.
 */
void
fintx_authz_require(FintxOp op, const char *object)
{
	fintx_authz_begin();
	if (caller.admin || (op == FINTX_OP_AUDIT_READ && caller.auditor))
	{
		if (op == FINTX_OP_ADMIN || op == FINTX_OP_AUDIT_READ)
			RecordAllowed(op, object, NULL, 0, false, caller.admin ? "administrator" : "auditor",
						  caller.superuser ? "superuser" : caller.admin ? "member of fintx_admin" : "member of fintx_auditor");
		FlushDecisionsNow();
		return;
	}
	if (op == FINTX_OP_ADMIN)
		fintx_authz_deny(op, object, NULL, 0, false,
						 psprintf("role \"%s\" is not an administrator (superuser or member of fintx_admin)",
								  caller.role_name), NULL);
	fintx_authorize(op, object, NULL, 0, false, false);
	FlushDecisionsNow();
}

/*
 * For an administrator's call of a function that changes something and is
 * not otherwise logged for staff (fintx_authz_require logs staff only for
 * managing services and grants and for audit reads): one access-log row for
 * the call, reason 'administrator', as for every other change an
 * administrator makes. Nothing for other callers (their decisions are
 * recorded by fintx_authz_require) or for the worker's own passes. The
 * caller has passed fintx_authz_begin() (fintx_authz_require does).
 */
void
fintx_authz_log_admin_call(FintxOp op, const char *function, const char *argument)
{
	if (fintx_is_worker || !caller.admin)
		return;
	RecordAllowed(op, psprintf("%s(%s)", function, argument), NULL, 0, false,
				  "administrator", caller.superuser ? "superuser" : "member of fintx_admin");
	FlushDecisionsNow();
}

/*
 * Records a refusal of op on object that the caller then raises itself with a
 * message of its own (42501), as fintx_authz_deny() records its refusals:
 * before it is raised, so that it stays recorded if the caller's caller
 * catches it. The caller has passed fintx_authz_begin().
 */
void
fintx_authz_record_refusal(FintxOp op, const char *object, const char *reason)
{
	Assert(active);
	fintx_denial_enqueue(caller.role_name, fintx_session_role_name(), caller.service, op_names[op], object,
						 NULL, 0, false, reason, "fintx");
}

/* The object column of a decision (a folded administrator decision names the count). */
static const char *
DecisionObject(Decision *d)
{
	if (d->count > 1)
		return psprintf("%s (and %d more in this call)", d->object ? d->object : "", d->count - 1);
	return d->object;
}

/* Columns of fintx.access_log_entries, as direct.c checks them. */
static const FintxColumn access_log_columns[] = {
	{"at", TIMESTAMPTZOID},
	{"service", TEXTOID},
	{"role", TEXTOID},
	{"session_user_name", TEXTOID},
	{"operation", TEXTOID},
	{"object", TEXTOID},
	{"amount", INT8OID},
	{"currency", TEXTOID},
	{"allowed", BOOLOID},
	{"reason", TEXTOID},
	{"rule", TEXTOID},
	{"client_addr", INETOID},
	{"application_name", TEXTOID},
	{"backend_pid", INT4OID},
	{"recorded_by", TEXTOID}
};

/* The client's address as inet_client_addr() gives it (NULL over a Unix socket). */
static Datum
ClientAddr(bool *isnull)
{
	LOCAL_FCINFO(fcinfo, 0);
	Datum		d;

	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	d = inet_client_addr(fcinfo);
	*isnull = fcinfo->isnull;
	return d;
}

/*
 * Writes the allowed decisions of this call to the access log, in the
 * caller's transaction: in the direct write group estate, or in one of its
 * own (estate NULL).
 */
void
fintx_authz_flush_in(EState *estate)
{
	int			n = list_length(decisions);
	Datum	   *v;
	bool	   *nulls;
	Datum		at = TimestampTzGetDatum(GetCurrentStatementStartTimestamp());
	bool		addr_null;
	Datum		addr;
	const char *app = GetConfigOption("application_name", false, false);
	int			i = 0;
	ListCell   *lc;

	if (n == 0)
		return;
	addr = ClientAddr(&addr_null);
	v = palloc(sizeof(Datum) * n * lengthof(access_log_columns));
	nulls = palloc0(sizeof(bool) * n * lengthof(access_log_columns));
	foreach(lc, decisions)
	{
		Decision   *d = (Decision *) lfirst(lc);
		const char *object = DecisionObject(d);
		Datum	   *r = v + i * lengthof(access_log_columns);
		bool	   *rn = nulls + i * lengthof(access_log_columns);

		r[0] = at;
		r[1] = caller.service ? CStringGetTextDatum(caller.service) : (Datum) 0;
		rn[1] = caller.service == NULL;
		r[2] = CStringGetTextDatum(caller.role_name);
		r[3] = CStringGetTextDatum(fintx_session_role_name());
		r[4] = CStringGetTextDatum(op_names[d->op]);
		r[5] = object ? CStringGetTextDatum(object) : (Datum) 0;
		rn[5] = object == NULL;
		r[6] = Int64GetDatum(d->amount);
		rn[6] = !d->has_amount;
		r[7] = d->currency ? CStringGetTextDatum(d->currency) : (Datum) 0;
		rn[7] = d->currency == NULL;
		r[8] = BoolGetDatum(true);
		r[9] = CStringGetTextDatum(d->reason);
		r[10] = d->rule ? CStringGetTextDatum(d->rule) : (Datum) 0;
		rn[10] = d->rule == NULL;
		r[11] = addr;
		rn[11] = addr_null;
		r[12] = app ? CStringGetTextDatum(app) : (Datum) 0;
		rn[12] = app == NULL;
		r[13] = Int32GetDatum(MyProcPid);
		r[14] = CStringGetTextDatum("caller");
		i++;
	}
	decisions = NIL;
	if (estate == NULL)
		fintx_direct_insert_rows("access_log_entries", access_log_columns, lengthof(access_log_columns),
								 n, v, nulls);
	else
		fintx_direct_write_rows(estate, "access_log_entries", access_log_columns,
								lengthof(access_log_columns), n, v, nulls);
}

void
fintx_authz_flush(void)
{
	fintx_authz_flush_in(NULL);
}

/* ------------------------------------------------------------------------
 * Maker-checker
 * ------------------------------------------------------------------------
 */

/* Records a transfer that waits for approval (SPI connected, after its row was written). */
void
fintx_approval_record(LedgerRequest *req)
{
	Datum		args[11];
	char		nulls[11];
	Oid			types[11] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, TEXTOID, JSONBOID,
		BOOLOID, INTERVALOID, TEXTOID};

	memset(nulls, ' ', sizeof(nulls));
	args[0] = Int64GetDatum(req->transfer_id);
	args[1] = CStringGetTextDatum(caller.service);
	args[2] = CStringGetTextDatum(caller.role_name);
	args[3] = CStringGetTextDatum(req->from_code);
	args[4] = CStringGetTextDatum(req->to_code);
	args[5] = Int64GetDatum(req->amount);
	args[6] = CStringGetTextDatum(req->from->currency);
	args[7] = PointerGetDatum(req->metadata);
	args[8] = BoolGetDatum(req->pending);
	args[9] = req->timeout ? IntervalPGetDatum(req->timeout) : (Datum) 0;
	if (req->timeout == NULL)
		nulls[9] = 'n';
	args[10] = CStringGetTextDatum(fintx_session_role_name());
	fintx_keep_plan(&approval_insert_plan,
					"INSERT INTO fintx.approvals (transfer_id, maker_service, maker_role, from_account,"
					"       to_account, amount, currency, metadata, pending, timeout, maker_session_user)"
					" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
					11, types);
	fintx_spi_expect(SPI_execute_plan(approval_insert_plan, args, nulls, false, 0), SPI_OK_INSERT, "recording the approval request failed");
}

/* An approval request as read (and locked) by approve/reject. */
typedef struct ApprovalRow
{
	char	   *maker_service;
	char	   *maker_role;
	char	   *maker_session_user;
	char	   *from_account;
	char	   *to_account;
	int64		amount;
	char	   *currency;
	Jsonb	   *metadata;
	bool		pending;
	Interval   *timeout;
	char	   *status;
	char	   *decided_by_role;
	int64		result_transfer_id;
	bool		has_result;
} ApprovalRow;

/*
 * A service that no transfer.approve grant entitles to decide transfer id
 * (row NULL: no approval request has that id) is refused as for an unknown
 * id, naming only "transfer <id>": it learns neither whether the id awaits
 * approval nor which account it debits (as fintx_authorize_hold does).
 */
static void
DenyApprovalId(int64 id, ApprovalRow *row)
{
	if (caller.admin)
		return;
	/* a role that is no service: the same refusal for every id, as for holds */
	if (caller.service == NULL)
		fintx_authz_deny(FINTX_OP_TRANSFER_APPROVE, psprintf("transfer %lld", (long long) id), NULL, 0, false,
						 psprintf("role \"%s\" is not a registered fintx service", caller.role_name), NULL);
	/* (the maker knows its own request: it is told why it cannot decide it) */
	if ((row != NULL && (strcmp(caller.service, row->maker_service) == 0 ||
						 BestGrant(FINTX_OP_TRANSFER_APPROVE, row->from_account, row->currency) != NULL)))
		return;
	fintx_authz_deny(FINTX_OP_TRANSFER_APPROVE, psprintf("transfer %lld", (long long) id), NULL, 0, false,
					 psprintf("no grant of transfer.approve to service \"%s\" covers transfer %lld",
							  caller.service, (long long) id), NULL);
}

/* Locks and reads the approval request of transfer id (SPI connected). */
static void
LockApproval(int64 id, ApprovalRow *row)
{
	Datum		arg = Int64GetDatum(id);
	Oid			types[1] = {INT8OID};
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	fintx_keep_plan(&approval_lock_plan,
					"SELECT maker_service, maker_role, from_account, to_account, amount, currency, metadata,"
					"       pending, timeout, status, decided_by_role, result_transfer_id, maker_session_user"
					"  FROM fintx.approvals WHERE transfer_id = $1 FOR UPDATE",
					1, types);
	fintx_spi_expect(SPI_execute_plan(approval_lock_plan, &arg, NULL, false, 0), SPI_OK_SELECT, "reading the approval request failed");
	if (SPI_processed != 1)
	{
		DenyApprovalId(id, NULL);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("transfer %lld is not a transfer that needs approval", (long long) id),
				 errhint("fintx.pending_approvals lists the transfers awaiting approval.")));
	}
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	row->maker_service = fintx_spi_copy_text(tup, desc, 1);
	row->maker_role = fintx_spi_copy_text(tup, desc, 2);
	row->from_account = fintx_spi_copy_text(tup, desc, 3);
	row->to_account = fintx_spi_copy_text(tup, desc, 4);
	row->amount = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
	row->currency = fintx_spi_copy_text(tup, desc, 6);
	d = PointerGetDatum(PG_DETOAST_DATUM(SPI_getbinval(tup, desc, 7, &isnull)));
	row->metadata = (Jsonb *) DatumGetPointer(SPI_datumTransfer(d, false, -1));
	row->pending = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
	d = SPI_getbinval(tup, desc, 9, &isnull);
	row->timeout = isnull ? NULL : (Interval *) DatumGetPointer(SPI_datumTransfer(d, false, sizeof(Interval)));
	row->status = fintx_spi_copy_text(tup, desc, 10);
	row->decided_by_role = fintx_spi_copy_text(tup, desc, 11);
	d = SPI_getbinval(tup, desc, 12, &isnull);
	row->has_result = !isnull;
	row->result_transfer_id = isnull ? 0 : DatumGetInt64(d);
	row->maker_session_user = fintx_spi_copy_text(tup, desc, 13);
	DenyApprovalId(id, row);
}

/* Fills req's result fields from the stored transfer row id (SPI connected). */
static void
LoadTransferResult(int64 id, LedgerRequest *req)
{
	Datum		arg = Int64GetDatum(id);
	Oid			types[1] = {INT8OID};
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	fintx_keep_plan(&transfer_row_plan,
					"SELECT status, from_balance, to_balance, entry_hash, created_at"
					"  FROM fintx.transfers WHERE id = $1",
					1, types);
	fintx_spi_expect(fintx_execute_indexed(transfer_row_plan, &arg, NULL, false, 1), SPI_OK_SELECT,
					 "reading a transfer failed");
	fintx_spi_expect(SPI_processed == 1 ? SPI_OK_SELECT : 0, SPI_OK_SELECT, "transfer not found");
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	req->transfer_id = id;
	req->status = fintx_spi_copy_text(tup, desc, 1);
	req->from_balance = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
	req->to_balance = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	d = SPI_getbinval(tup, desc, 4, &isnull);
	req->entry_hash = isnull ? NULL :
		(bytea *) DatumGetPointer(SPI_datumTransfer(PointerGetDatum(PG_DETOAST_DATUM(d)), false, -1));
	req->created_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
}

/* Records the decision on an approval request (SPI connected). */
static void
DecideApproval(int64 id, const char *status, const char *reason, int64 result_id, bool has_result)
{
	Datum		args[6];
	char		nulls[6];
	Oid			types[6] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID};

	memset(nulls, ' ', sizeof(nulls));
	args[0] = Int64GetDatum(id);
	args[1] = CStringGetTextDatum(status);
	args[2] = caller.service ? CStringGetTextDatum(caller.service) : (Datum) 0;
	nulls[2] = caller.service ? ' ' : 'n';
	args[3] = CStringGetTextDatum(caller.role_name);
	args[4] = reason ? CStringGetTextDatum(reason) : (Datum) 0;
	nulls[4] = reason ? ' ' : 'n';
	args[5] = Int64GetDatum(result_id);
	nulls[5] = has_result ? ' ' : 'n';
	fintx_keep_plan(&approval_decide_plan,
					"UPDATE fintx.approvals SET status = $2, decided_by_service = $3, decided_by_role = $4,"
					"       decided_at = pg_catalog.now(), reason = $5, result_transfer_id = $6"
					" WHERE transfer_id = $1",
					6, types);
	fintx_spi_expect(SPI_execute_plan(approval_decide_plan, args, nulls, false, 0), SPI_OK_UPDATE, "recording the approval decision failed");
}

static void
AuditDecision(const char *action, int64 id, ApprovalRow *row, LedgerRequest *req, const char *reason)
{
	StringInfoData buf;
	char		idtext[32];
	FintxAuditEntry entry;
	EState	   *estate;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"transfer_id\": %lld, \"from_account\": ", (long long) id);
	escape_json(&buf, row->from_account);
	appendStringInfoString(&buf, ", \"to_account\": ");
	escape_json(&buf, row->to_account);
	appendStringInfo(&buf, ", \"amount\": %lld, \"currency\": ", (long long) row->amount);
	escape_json(&buf, row->currency);
	appendStringInfoString(&buf, ", \"maker_service\": ");
	escape_json(&buf, row->maker_service);
	appendStringInfoString(&buf, ", \"decided_by_service\": ");
	if (caller.service)
		escape_json(&buf, caller.service);
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoString(&buf, ", \"decided_by_role\": ");
	escape_json(&buf, caller.role_name);
	if (req)
		appendStringInfo(&buf, ", \"result_transfer_id\": %lld", (long long) req->transfer_id);
	if (reason)
	{
		appendStringInfoString(&buf, ", \"reason\": ");
		escape_json(&buf, reason);
	}
	appendStringInfoChar(&buf, '}');
	snprintf(idtext, sizeof(idtext), "%lld", (long long) id);
	fintx_audit_init(&entry, caller.role_name, action, "transfer", pstrdup(idtext),
					 fintx_jsonb_from_text(buf.data));
	fintx_audit_insert(&entry, 1);
	/*
	 * a change like any other: consumers learn of the decision (its accounts
	 * decide which services see it), with its audit entry's id as ledger
	 * events have it
	 */
	estate = fintx_direct_begin();
	fintx_outbox_write_audit(estate, &entry, 1);
	fintx_direct_end(estate);
}

/*
 * Whether the session's login is a superuser or fintx_admin member: such a
 * login may approve anything itself, so switching roles gains it nothing.
 */
static bool
SessionIsAdmin(void)
{
	Oid			login = GetSessionUserId();
	Oid			admin_role = get_role_oid("fintx_admin", true);

	return superuser_arg(login) || (OidIsValid(admin_role) && has_privs_of_role(login, admin_role));
}

/*
 * Shared checks of approve/reject: the caller holds transfer.approve for the
 * debited account and is neither the service nor the role that asked.
 */
static void
AuthorizeDecision(ApprovalRow *row, bool approve)
{
	if (!caller.admin &&
		((caller.service && strcmp(caller.service, row->maker_service) == 0) ||
		 strcmp(caller.role_name, row->maker_role) == 0 ||
		 (!SessionIsAdmin() &&
		  strcmp(fintx_session_role_name(), row->maker_session_user) == 0)))
		fintx_authz_deny(FINTX_OP_TRANSFER_APPROVE, row->from_account, row->currency, row->amount, true,
						 psprintf("segregation of duties: service \"%s\" (login \"%s\") requested this transfer; the same service, role or login cannot %s it",
								  row->maker_service, row->maker_session_user, approve ? "approve" : "reject"),
						 "maker-checker");
	(void) Authorize(FINTX_OP_TRANSFER_APPROVE, row->from_account, row->currency, row->amount, true, false, approve);
}

/*
 * Emits 42501 unless the maker's service still holds a transfer grant that
 * covers the debited account in its currency (SPI connected): a service whose
 * grants were withdrawn (a compromised one, say) must not have its earlier
 * requests executed by a checker afterwards.
 */
static void
RequireMakerGrant(ApprovalRow *row)
{
	static SPIPlanPtr plan = NULL;
	Oid			type = TEXTOID;
	Datum		arg = CStringGetTextDatum(row->maker_service);
	bool		covered = false;

	/* matched as the grant cache matches (GrantCovers), with the latest committed grants */
	fintx_keep_plan(&plan,
					"SELECT account_pattern, currency FROM fintx.permissions"
					" WHERE service OPERATOR(pg_catalog.=) $1 AND operation OPERATOR(pg_catalog.=) 'transfer'",
					1, &type);
	PushActiveSnapshot(GetLatestSnapshot());
	fintx_spi_expect(SPI_execute_plan(plan, &arg, NULL, true, 0), SPI_OK_SELECT, "reading the maker's grants failed");
	PopActiveSnapshot();
	for (uint64 i = 0; i < SPI_processed && !covered; i++)
		covered = GrantCovers(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1),
							  SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2),
							  row->from_account, row->currency);
	if (!covered)
		fintx_authz_deny(FINTX_OP_TRANSFER_APPROVE, row->from_account, row->currency, row->amount, true,
						 psprintf("the maker, service \"%s\", no longer holds a transfer grant that covers \"%s\" in %s",
								  row->maker_service, row->from_account, row->currency),
						 "maker-checker");
}

/* True if the calling role already made this decision: a retry, replayed without counting again. */
static bool
DecidedByCaller(ApprovalRow *row, const char *decision)
{
	return strcmp(row->status, decision) == 0 && row->decided_by_role &&
		strcmp(row->decided_by_role, caller.role_name) == 0;
}

/* Emits 55000 unless the transfer still awaits a decision. */
static void
RequireAwaiting(ApprovalRow *row, int64 id)
{
	if (strcmp(row->status, "awaiting_approval") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("transfer %lld was already %s", (long long) id, row->status),
				 errdetail("A transfer awaiting approval is approved or rejected once.")));
}

/*
 * fintx.approve_transfer(transfer_id) → transfer_result
 * Executes a transfer awaiting approval, once, as a new transfer. A retry by
 * the same approver returns the original result (replayed = true).
 */
Datum
fintx_approve_transfer(PG_FUNCTION_ARGS)
{
	int64		id;
	ApprovalRow row;
	LedgerRequest *req = palloc0(sizeof(LedgerRequest));

	if (PG_ARGISNULL(0))
		fintx_null_argument("transfer_id");
	id = PG_GETARG_INT64(0);
	fintx_authz_begin();
	fintx_spi_connect();
	LockApproval(id, &row);
	if (DecidedByCaller(&row, "approved"))
	{
		LoadTransferResult(row.result_transfer_id, req);
		req->replayed = true;
		/* the codes decide which balances the caller may see, as on the first call */
		req->from_code = row.from_account;
		req->to_code = row.to_account;
		SPI_finish();
		PG_RETURN_DATUM(fintx_result_datum(fcinfo, req));
	}
	AuthorizeDecision(&row, true);
	RequireAwaiting(&row, id);
	RequireMakerGrant(&row);
	fintx_authz_flush();
	SPI_finish();

	req->op = LEDGER_TRANSFER;
	req->key = psprintf("approval:%lld", (long long) id);
	req->from_code = row.from_account;
	req->to_code = row.to_account;
	req->amount = row.amount;
	req->metadata = row.metadata;
	req->pending = row.pending;
	req->timeout = row.timeout;
	req->preauthorized = true;
	fintx_execute(FINTX_SYSTEM_PRINCIPAL, &req, 1);

	fintx_spi_connect();
	DecideApproval(id, "approved", NULL, req->transfer_id, true);
	AuditDecision("transfer.approved", id, &row, req, NULL);
	SPI_finish();
	PG_RETURN_DATUM(fintx_result_datum(fcinfo, req));
}

/*
 * fintx.reject_transfer(transfer_id, reason) → transfer_result
 * Rejects a transfer awaiting approval, once; no money moves.
 */
Datum
fintx_reject_transfer(PG_FUNCTION_ARGS)
{
	int64		id;
	ApprovalRow row;
	LedgerRequest *req = palloc0(sizeof(LedgerRequest));
	char	   *reason = NULL;

	if (PG_ARGISNULL(0))
		fintx_null_argument("transfer_id");
	id = PG_GETARG_INT64(0);
	if (!PG_ARGISNULL(1))
	{
		reason = text_to_cstring(PG_GETARG_TEXT_PP(1));
		if (strlen(reason) > 1000)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("reason is too long"),
					 errdetail("The limit is 1000 bytes.")));
	}
	fintx_authz_begin();
	fintx_spi_connect();
	LockApproval(id, &row);
	LoadTransferResult(id, req);
	req->status = "rejected";
	req->replayed = DecidedByCaller(&row, "rejected");
	if (req->replayed)
	{
		SPI_finish();
		PG_RETURN_DATUM(fintx_result_datum(fcinfo, req));
	}
	AuthorizeDecision(&row, false);
	RequireAwaiting(&row, id);
	DecideApproval(id, "rejected", reason, 0, false);
	AuditDecision("transfer.rejected", id, &row, NULL, reason);
	fintx_authz_flush();
	SPI_finish();
	PG_RETURN_DATUM(fintx_result_datum(fcinfo, req));
}

/* ------------------------------------------------------------------------
 * Managing services and grants (administrators only)
 * ------------------------------------------------------------------------
 */

static char *
CheckServiceName(const char *name)
{
	size_t		len = strlen(name);
	bool		ok = len > 0 && len <= MAX_SERVICE_LEN;

	for (size_t i = 0; ok && i < len; i++)
	{
		char		c = name[i];

		ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			c == '_' || c == '.' || c == ':' || c == '/' || c == '@' || c == '-';
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid service name"),
				 errdetail("Service names are 1 to %d characters from A-Z, a-z, 0-9 and _ . : / @ -.",
						   MAX_SERVICE_LEN)));
	return (char *) name;
}

/* Parses an optional public key argument; NULL if absent. */
static bytea *
ParseKeyArg(FunctionCallInfo fcinfo, int argno)
{
	bytea	   *key;
	const char *why;

	if (PG_ARGISNULL(argno))
		return NULL;
	key = palloc(VARHDRSZ + 32);
	SET_VARSIZE(key, VARHDRSZ + 32);
	if (!fintx_ed25519_parse_public(text_to_cstring(PG_GETARG_TEXT_PP(argno)), (uint8 *) VARDATA(key), &why))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid public key"),
				 errdetail("%s", why),
				 errhint("Give an Ed25519 public key as PEM (openssl pkey -pubout) or as base64 of its 32 bytes.")));
	return key;
}

/* Runs one management statement; returns SPI_processed. */
static uint64
RunAdmin(SPIPlanPtr *slot, const char *sql, int nargs, Oid *types, Datum *args, char *nulls, int expect)
{
	int			ret;

	fintx_keep_plan(slot, sql, nargs, types);
	ret = SPI_execute_plan(*slot, args, nulls, false, 0);
	fintx_spi_expect(ret, expect, sql);
	return SPI_processed;
}

static void
AuditAdmin(const char *action, const char *object_type, const char *object_id, StringInfo details)
{
	fintx_audit_record(caller.role_name, action, object_type, object_id,
					   fintx_jsonb_from_text(details->data));
}

/* fintx.register_service(name, role, public_key) → void */
Datum
fintx_register_service(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	char	   *name;
	Oid			role;
	char	   *rolename;
	bytea	   *key;
	Datum		args[5];
	char		nulls[5];
	Oid			types[5] = {TEXTOID, OIDOID, TEXTOID, BYTEAOID, TEXTOID};
	StringInfoData buf;
	GrantRoleStmt *stmt;
	AccessPriv *priv;
	RoleSpec   *grantee;

	if (PG_ARGISNULL(0))
		fintx_null_argument("name");
	if (PG_ARGISNULL(1))
		fintx_null_argument("role");
	name = CheckServiceName(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	fintx_authz_require(FINTX_OP_ADMIN, name);
	role = PG_GETARG_OID(1);
	rolename = GetUserNameFromId(role, true);
	if (rolename == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("role with OID %u does not exist", role)));
	if (superuser_arg(role) || strncmp(rolename, "pg_", 3) == 0 ||
		strcmp(rolename, "fintx_admin") == 0 || strcmp(rolename, "fintx_service") == 0 ||
		strcmp(rolename, "fintx_auditor") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("role \"%s\" cannot be registered as a service", rolename),
				 errdetail("Superusers, predefined roles and fintx's own roles are not services.")));
	key = ParseKeyArg(fcinfo, 2);

	fintx_spi_connect();
	memset(nulls, ' ', sizeof(nulls));
	args[0] = CStringGetTextDatum(name);
	args[1] = ObjectIdGetDatum(role);
	args[2] = CStringGetTextDatum(rolename);
	args[3] = key ? PointerGetDatum(key) : (Datum) 0;
	nulls[3] = key ? ' ' : 'n';
	args[4] = CStringGetTextDatum(caller.role_name);
	if (RunAdmin(&plan,
				 "INSERT INTO fintx.services (name, role, role_name, public_key, registered_by)"
				 " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
				 5, types, args, nulls, SPI_OK_INSERT) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("service \"%s\" or role \"%s\" is already registered", name, rolename)));

	/* GRANT fintx_service TO role, as a parse tree: no SQL text is built */
	stmt = makeNode(GrantRoleStmt);
	priv = makeNode(AccessPriv);
	priv->priv_name = pstrdup("fintx_service");
	stmt->granted_roles = list_make1(priv);
	grantee = makeNode(RoleSpec);
	grantee->roletype = ROLESPEC_CSTRING;
	grantee->rolename = rolename;
	grantee->location = -1;
	stmt->grantee_roles = list_make1(grantee);
	stmt->is_grant = true;
	stmt->admin_opt = false;
	stmt->grantor = NULL;
	GrantRole(stmt);
	InvalidateGrants();

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"service\": ");
	escape_json(&buf, name);
	appendStringInfoString(&buf, ", \"role\": ");
	escape_json(&buf, rolename);
	appendStringInfoString(&buf, ", \"public_key\": ");
	if (key)
	{
		appendStringInfoChar(&buf, '"');
		appendStringInfoString(&buf, fintx_base64((uint8 *) VARDATA(key), 32));
		appendStringInfoChar(&buf, '"');
	}
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoChar(&buf, '}');
	AuditAdmin("service.registered", "service", name, &buf);
	SPI_finish();
	PG_RETURN_VOID();
}

/* fintx.set_service_key(name, public_key) → void: replaces (or with NULL removes) the key. */
Datum
fintx_set_service_key(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	char	   *name;
	bytea	   *key;
	Datum		args[2];
	char		nulls[2] = {' ', ' '};
	Oid			types[2] = {TEXTOID, BYTEAOID};
	StringInfoData buf;

	if (PG_ARGISNULL(0))
		fintx_null_argument("name");
	name = CheckServiceName(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	fintx_authz_require(FINTX_OP_ADMIN, name);
	key = ParseKeyArg(fcinfo, 1);
	fintx_spi_connect();
	args[0] = CStringGetTextDatum(name);
	args[1] = key ? PointerGetDatum(key) : (Datum) 0;
	nulls[1] = key ? ' ' : 'n';
	if (RunAdmin(&plan, "UPDATE fintx.services SET public_key = $2 WHERE name = $1",
				 2, types, args, nulls, SPI_OK_UPDATE) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("service \"%s\" does not exist", name)));
	InvalidateGrants();
	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"service\": ");
	escape_json(&buf, name);
	if (key)
		appendStringInfo(&buf, ", \"public_key\": \"%s\"}", fintx_base64((uint8 *) VARDATA(key), 32));
	else
		appendStringInfoString(&buf, ", \"public_key\": null}");
	AuditAdmin("service.key_changed", "service", name, &buf);
	SPI_finish();
	PG_RETURN_VOID();
}

/* Checks an account pattern: code characters and the LIKE wildcards % _ with escape \. */
static char *
CheckPattern(const char *pattern)
{
	size_t		len = strlen(pattern);
	bool		ok = len > 0 && len <= MAX_PATTERN_LEN;

	for (size_t i = 0; ok && i < len; i++)
	{
		char		c = pattern[i];

		if (c == '\\')
		{
			ok = i + 1 < len;
			i++;
			continue;
		}
		ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			c == '_' || c == '.' || c == ':' || c == '/' || c == '@' || c == '-' || c == '%';
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid account pattern"),
				 errdetail("Patterns are 1 to %d characters: account-code characters, the LIKE wildcards %% and _, and \\ to escape the next character.",
						   MAX_PATTERN_LEN)));
	return (char *) pattern;
}

static FintxOp
CheckOperation(const char *operation)
{
	FintxOp		op = OpByName(operation);

	if (op == FINTX_OP_COUNT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown operation \"%s\"", operation),
				 errhint("Operations are account.open, account.close, transfer, transfer.approve, hold.resolve, audit.read, event.emit and event.consume.")));
	return op;
}

static void
CheckLimit(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (!PG_ARGISNULL(argno) && PG_GETARG_INT64(argno) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("%s must be greater than zero", name)));
}

/*
 * The first three arguments of grant_permission and revoke_permission,
 * checked (after the caller is known to be an administrator); the audit
 * details are started with them in buf.
 */
static void
GrantKeyArgs(FunctionCallInfo fcinfo, char **service, char **operation, char **pattern, StringInfo buf)
{
	if (PG_ARGISNULL(0))
		fintx_null_argument("service");
	if (PG_ARGISNULL(1))
		fintx_null_argument("operation");
	if (PG_ARGISNULL(2))
		fintx_null_argument("account_pattern");
	*service = CheckServiceName(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	fintx_authz_require(FINTX_OP_ADMIN, *service);
	*operation = text_to_cstring(PG_GETARG_TEXT_PP(1));
	CheckOperation(*operation);
	*pattern = CheckPattern(text_to_cstring(PG_GETARG_TEXT_PP(2)));
	initStringInfo(buf);
	appendStringInfoString(buf, "{\"service\": ");
	escape_json(buf, *service);
	appendStringInfoString(buf, ", \"operation\": ");
	escape_json(buf, *operation);
	appendStringInfoString(buf, ", \"account_pattern\": ");
	escape_json(buf, *pattern);
}

/* SELECT 1 FROM fintx.services WHERE name = $1 (grant_permission, revoke_permission). */
static SPIPlanPtr service_exists_plan = NULL;

/*
 * fintx.grant_permission(service, operation, account_pattern, max_amount,
 *						  daily_limit, currency, approval_above) → void
 * Grants (or, for the same service, operation, pattern and currency, replaces) a permission.
 */
Datum
fintx_grant_permission(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr currency_plan = NULL;
	static SPIPlanPtr plan = NULL;
	char	   *service;
	char	   *operation;
	char	   *pattern;
	char	   *currency = NULL;
	Datum		args[8];
	char		nulls[8];
	Oid			types[8] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID, INT8OID, TEXTOID};
	StringInfoData buf;

	GrantKeyArgs(fcinfo, &service, &operation, &pattern, &buf);
	CheckLimit(fcinfo, 3, "max_amount");
	CheckLimit(fcinfo, 4, "daily_limit");
	CheckLimit(fcinfo, 6, "approval_above");
	/* a threshold above which a transfer waits for a checker means something for transfers only */
	if (!PG_ARGISNULL(6) && strcmp(operation, "transfer") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("approval_above applies to transfer grants only, not to %s", operation)));
	if (!PG_ARGISNULL(5))
		currency = text_to_cstring(PG_GETARG_TEXT_PP(5));

	fintx_spi_connect();
	memset(nulls, ' ', sizeof(nulls));
	args[0] = CStringGetTextDatum(service);
	if (RunAdmin(&service_exists_plan, "SELECT 1 FROM fintx.services WHERE name = $1",
				 1, types, args, nulls, SPI_OK_SELECT) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("service \"%s\" does not exist", service),
				 errhint("Register it first with fintx.register_service().")));
	if (currency)
	{
		args[3] = CStringGetTextDatum(currency);
		if (RunAdmin(&currency_plan, "SELECT 1 FROM fintx.currencies WHERE code = $1",
					 1, &types[3], &args[3], nulls, SPI_OK_SELECT) != 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown currency \"%s\"", currency)));
	}
	args[1] = CStringGetTextDatum(operation);
	args[2] = CStringGetTextDatum(pattern);
	args[3] = currency ? CStringGetTextDatum(currency) : (Datum) 0;
	nulls[3] = currency ? ' ' : 'n';
	for (int i = 0; i < 3; i++)
	{
		int			argno = (i == 2) ? 6 : 3 + i;

		args[4 + i] = PG_ARGISNULL(argno) ? (Datum) 0 : PG_GETARG_DATUM(argno);
		nulls[4 + i] = PG_ARGISNULL(argno) ? 'n' : ' ';
	}
	args[7] = CStringGetTextDatum(caller.role_name);
	RunAdmin(&plan,
			 "INSERT INTO fintx.permissions AS p (service, operation, account_pattern, currency, max_amount,"
			 "       daily_limit, approval_above, granted_by)"
			 " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
			 " ON CONFLICT (service, operation, account_pattern, currency) DO UPDATE"
			 "   SET max_amount = EXCLUDED.max_amount, daily_limit = EXCLUDED.daily_limit,"
			 "       approval_above = EXCLUDED.approval_above, granted_by = EXCLUDED.granted_by,"
			 "       granted_at = pg_catalog.now()",
			 8, types, args, nulls, SPI_OK_INSERT);
	InvalidateGrants();

	appendStringInfoString(&buf, ", \"currency\": ");
	if (currency)
		escape_json(&buf, currency);
	else
		appendStringInfoString(&buf, "null");
	appendStringInfo(&buf, ", \"max_amount\": %s, \"daily_limit\": %s, \"approval_above\": %s}",
					 PG_ARGISNULL(3) ? "null" : psprintf("%lld", (long long) PG_GETARG_INT64(3)),
					 PG_ARGISNULL(4) ? "null" : psprintf("%lld", (long long) PG_GETARG_INT64(4)),
					 PG_ARGISNULL(6) ? "null" : psprintf("%lld", (long long) PG_GETARG_INT64(6)));
	AuditAdmin("permission.granted", "service", service, &buf);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * fintx.revoke_permission(service, operation, account_pattern) → integer
 * Removes the matching grants (every currency); returns how many.
 */
Datum
fintx_revoke_permission(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	char	   *service;
	char	   *operation;
	char	   *pattern;
	Datum		args[3];
	Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};
	uint64		n;
	StringInfoData buf;

	GrantKeyArgs(fcinfo, &service, &operation, &pattern, &buf);
	fintx_spi_connect();
	args[0] = CStringGetTextDatum(service);
	args[1] = CStringGetTextDatum(operation);
	args[2] = CStringGetTextDatum(pattern);
	/* as grant_permission: a misspelled service is an error, not "nothing to revoke" */
	if (RunAdmin(&service_exists_plan, "SELECT 1 FROM fintx.services WHERE name = $1",
				 1, types, args, NULL, SPI_OK_SELECT) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("service \"%s\" does not exist", service)));
	n = RunAdmin(&plan,
				 "DELETE FROM fintx.permissions"
				 " WHERE service = $1 AND operation = $2 AND account_pattern = $3",
				 3, types, args, NULL, SPI_OK_DELETE);
	if (n > 0)
	{
		InvalidateGrants();
		appendStringInfo(&buf, ", \"grants_removed\": %llu}", (unsigned long long) n);
		AuditAdmin("permission.revoked", "service", service, &buf);
	}
	SPI_finish();
	PG_RETURN_INT32((int32) n);
}

/* ------------------------------------------------------------------------
 * Row security
 * ------------------------------------------------------------------------
 */

/* Whether cached grant i makes the accounts its pattern matches visible. */
static bool
GrantShowsAccounts(int i)
{
	FintxOp		op = cache_grants[i].op;

	/*
	 * Grants on accounts make them visible; so does audit.read, which reads
	 * every ledger fact in the audit log anyway. Event grants name consumers
	 * and aggregate types, not accounts.
	 */
	return op != FINTX_OP_EVENT_EMIT && op != FINTX_OP_EVENT_CONSUME;
}

/* May the calling role see rows of this account? Any grant whose pattern matches. */
static bool
CodeVisible(const char *code)
{
	/* code that runs as a table's owner on someone else's behalf sees nothing */
	if (InSecurityRestrictedOperation())
		return false;
	EnsureCache(fintx_calling_user());
	for (int i = 0; i < cache_ngrants; i++)
		if (GrantShowsAccounts(i) && LikeMatch(code, cache_grants[i].pattern))
			return true;
	return false;
}

/*
 * Whether the balance of account code must be hidden from the current
 * caller: a service sees only the balances of the accounts its grants cover
 * (code NULL: unknown, hidden from services).
 */
bool
fintx_authz_hides_balance(const char *code)
{
	if (!active || caller.admin || caller.auditor)
		return false;
	return code == NULL || !CodeVisible(code);
}

/* fintx.account_visible(code) → boolean: the RLS predicate for services. */
Datum
fintx_account_visible(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(CodeVisible(text_to_cstring(PG_GETARG_TEXT_PP(0))));
}

typedef struct CodeEntry
{
	int64		id;
	char		code[FINTX_MAX_CODE_LEN + 1];
} CodeEntry;

/* Whether the account with this id is visible to the calling role. */
static bool
IdVisible(int64 id)
{
	CodeEntry  *e;
	bool		found;
	char		code[FINTX_MAX_CODE_LEN + 1];

	/* load the grants first: an invalidation while loading may drop the code cache */
	if (InSecurityRestrictedOperation())
		return false;
	EnsureCache(fintx_calling_user());
	if (account_codes == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(CodeEntry);
		account_codes = hash_create("fintx account codes", 256, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	e = hash_search(account_codes, &id, HASH_FIND, NULL);
	if (e == NULL)
	{
		Datum		arg = Int64GetDatum(id);
		Oid			types[1] = {INT8OID};

		fintx_spi_connect();
		fintx_keep_plan(&account_code_plan, "SELECT code FROM fintx.accounts WHERE id = $1", 1, types);
		fintx_spi_expect(SPI_execute_plan(account_code_plan, &arg, NULL, true, 1), SPI_OK_SELECT, "reading fintx.accounts failed");
		if (SPI_processed != 1)
		{
			SPI_finish();
			return false;
		}
		strlcpy(code, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), sizeof(code));
		SPI_finish();
		/* the lookup may have processed invalidations that dropped the table */
		if (account_codes != NULL)
		{
			e = hash_search(account_codes, &id, HASH_ENTER, &found);
			strlcpy(e->code, code, sizeof(e->code));
		}
	}
	else
		strlcpy(code, e->code, sizeof(code));
	return CodeVisible(code);
}

/* fintx.account_id_visible(id) → boolean: as account_visible, by account id. */
Datum
fintx_account_id_visible(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(IdVisible(PG_GETARG_INT64(0)));
}

/*
 * fintx.consumer_visible(name) → boolean: the filter of fintx.outbox_lag. A
 * role that sees every row sees every consumer; a service, the consumers its
 * event.consume grants cover (those it may poll).
 */
Datum
fintx_consumer_visible(PG_FUNCTION_ARGS)
{
	const char *name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (fintx_authz_sees_all())
		PG_RETURN_BOOL(true);
	if (InSecurityRestrictedOperation())
		PG_RETURN_BOOL(false);	/* LCOV_EXCL_LINE: sees_all() is false there too, and so is this */
	PG_RETURN_BOOL(BestGrant(FINTX_OP_EVENT_CONSUME, name, NULL) != NULL);
}

/* Whether the calling role sees every row: superuser, fintx_admin or fintx_auditor member. */
bool
fintx_authz_sees_all(void)
{
	if (InSecurityRestrictedOperation())
		return false;
	EnsureCache(fintx_calling_user());
	return cache_admin || cache_auditor;
}

/*
 * Whether poll() returns the calling role every event: it sees every row, or
 * one of its grants that make accounts visible (CodeVisible) has a pattern
 * that matches every code ('%').
 */
bool
fintx_authz_sees_every_event(void)
{
	/* the caller passed fintx_authz_begin(), which refuses security-restricted operations */
	Assert(!InSecurityRestrictedOperation());
	if (fintx_authz_sees_all())
		return true;
	for (int i = 0; i < cache_ngrants; i++)
	{
		const char *p = cache_grants[i].pattern;

		/* a pattern of nothing but % matches every account */
		if (GrantShowsAccounts(i) && p[0] != '\0' && strspn(p, "%") == strlen(p))
			return true;
	}
	return false;
}

/*
 * fintx.event_visible(aggregatetype, aggregateid, payload) → boolean: the
 * filter poll() applies for services. Ledger events (aggregate types
 * "account" and "transfer") are visible if they concern an account the
 * service's grants cover; application events (emitted with fintx.emit) are
 * visible to every consumer the service may read.
 */
Datum
fintx_event_visible(PG_FUNCTION_ARGS)
{
	char	   *aggtype = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Jsonb	   *payload = PG_GETARG_JSONB_P(2);

	if (strcmp(aggtype, "account") == 0)
		PG_RETURN_BOOL(CodeVisible(text_to_cstring(PG_GETARG_TEXT_PP(1))));
	if (strcmp(aggtype, "transfer") == 0)
	{
		static const char *const keys[2] = {"from_account", "to_account"};

		for (int i = 0; i < 2; i++)
		{
			JsonbValue *v = getKeyJsonValueFromContainer(&payload->root, keys[i], strlen(keys[i]), NULL);

			if (v && v->type == jbvString &&
				CodeVisible(pnstrdup(v->val.string.val, v->val.string.len)))
				PG_RETURN_BOOL(true);
		}
		PG_RETURN_BOOL(false);
	}
	PG_RETURN_BOOL(true);
}

/*
 * A transfer event's payload as a service may read it: the balance of an
 * account its grants do not cover ("from_balance" for "from_account",
 * "to_balance" for "to_account") replaced by null, as transfer_history and
 * the functions' results show it. Returns payload itself when nothing is
 * hidden.
 */
Jsonb *
fintx_authz_redact_transfer(Jsonb *payload)
{
	static const char *const accounts[2] = {"from_account", "to_account"};
	static const char *const balances[2] = {"from_balance", "to_balance"};
	bool		hide[2] = {false, false};
	JsonbParseState *st = NULL;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbValue *res = NULL;
	JsonbIteratorToken tok;
	int			pending_hide = -1;
	int			depth = 0;
	bool		hide_rule;
	JsonbValue *svc;

	if (!JsonContainerIsObject(&payload->root))
		return payload;			/* LCOV_EXCL_LINE: fintx writes transfer events as objects, emit() none */

	for (int i = 0; i < 2; i++)
	{
		JsonbValue *a = getKeyJsonValueFromContainer(&payload->root, accounts[i], strlen(accounts[i]), NULL);

		hide[i] = a == NULL || a->type != jbvString || !CodeVisible(pnstrdup(a->val.string.val, a->val.string.len));
	}
	/* the grant that allowed another service's transfer ("authorized_by": its limits) is that service's */
	svc = getKeyJsonValueFromContainer(&payload->root, "service", strlen("service"), NULL);
	hide_rule = getKeyJsonValueFromContainer(&payload->root, "authorized_by", strlen("authorized_by"), NULL) != NULL &&
		(svc == NULL || svc->type != jbvString || caller.service == NULL ||
		 strlen(caller.service) != (size_t) svc->val.string.len ||
		 memcmp(caller.service, svc->val.string.val, svc->val.string.len) != 0) &&
		!fintx_authz_sees_every_event();	/* (audit.read on '%': it reads the entries anyway) */
	if (!hide[0] && !hide[1] && !hide_rule)
		return payload;
	it = JsonbIteratorInit(&payload->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_OBJECT || tok == WJB_BEGIN_ARRAY)
			depth++;
		else if (tok == WJB_END_OBJECT || tok == WJB_END_ARRAY)
			depth--;
		if (tok == WJB_KEY && depth == 1)
		{
			pending_hide = -1;
			for (int i = 0; i < 2; i++)
				if (hide[i] && v.val.string.len == (int) strlen(balances[i]) &&
					memcmp(v.val.string.val, balances[i], v.val.string.len) == 0)
					pending_hide = i;
			if (hide_rule && v.val.string.len == (int) strlen("authorized_by") &&
				memcmp(v.val.string.val, "authorized_by", v.val.string.len) == 0)
				pending_hide = 2;
		}
		else if (tok == WJB_VALUE && depth == 1 && pending_hide >= 0)
		{
			v.type = jbvNull;
			pending_hide = -1;
		}
		res = pushJsonbValue(&st, tok, tok < WJB_BEGIN_ARRAY ? &v : NULL);
	}
	return JsonbValueToJsonb(res);
}

/*
 * fintx.transfer_visible(from_id, to_id) → boolean: the filter of the views
 * transfer_history and open_holds. Administrators and auditors see every
 * transfer; a service those that debit or credit an account its grants cover
 * (with the counterparty's code, which account_balances does not show it).
 */
Datum
fintx_transfer_visible(PG_FUNCTION_ARGS)
{
	if (fintx_authz_sees_all())
		PG_RETURN_BOOL(true);
	PG_RETURN_BOOL(IdVisible(PG_GETARG_INT64(0)) || IdVisible(PG_GETARG_INT64(1)));
}

/*
 * Statement trigger on fintx.services and fintx.permissions: a direct change
 * (a restore, a manual fix) drops every session's grant cache, as the
 * management functions do.
 */
Datum
fintx_grants_changed(PG_FUNCTION_ARGS)
{
	Oid			nsp = fintx_namespace_oid();

	CacheInvalidateRelcacheByRelid(get_relname_relid("services", nsp));
	CacheInvalidateRelcacheByRelid(get_relname_relid("permissions", nsp));
	return PointerGetDatum(NULL);
}
