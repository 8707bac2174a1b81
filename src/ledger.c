/*-------------------------------------------------------------------------
 * ledger.c
 *	  Accounts, transfers and two-phase holds.
 *
 * Every money-moving function is reduced to an array of LedgerRequest and
 * run by fintx_execute(), in the caller's transaction:
 *	 1. fingerprint each request and claim its idempotency key (idempotency.c);
 *		keys already in the journal are replayed, not applied again;
 *	 2. claim the holds that post/void/expire requests resolve, by deleting
 *		their row from fintx.pending_holds (a second resolver finds nothing);
 *	 3. lock every account involved in one statement, in ascending id order,
 *		so that concurrent calls cannot deadlock;
 *	 4. apply the requests in order in memory, with overflow-checked counters
 *		and the balance rules, and write accounts and transfers back with one
 *		statement each.
 * Lock order is always: idempotency keys (bytewise), holds, accounts (by id).
 *-------------------------------------------------------------------------
 */
#include "fintx.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "commands/dbcommands.h"
#include "utils/json.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

PG_FUNCTION_INFO_V1(fintx_open_account);
PG_FUNCTION_INFO_V1(fintx_close_account);
PG_FUNCTION_INFO_V1(fintx_transfer);
PG_FUNCTION_INFO_V1(fintx_post_pending);
PG_FUNCTION_INFO_V1(fintx_void_pending);
PG_FUNCTION_INFO_V1(fintx_transfer_batch);
PG_FUNCTION_INFO_V1(fintx_expire_pending);
PG_FUNCTION_INFO_V1(fintx_transfer_signed);
PG_FUNCTION_INFO_V1(fintx_transfer_batch_signed);
PG_FUNCTION_INFO_V1(fintx_signing_message);

static SPIPlanPtr currency_plan = NULL;
static SPIPlanPtr open_plan = NULL;
static SPIPlanPtr close_lock_plan = NULL;
static SPIPlanPtr close_plan = NULL;
static SPIPlanPtr hold_claim_plan = NULL;
static SPIPlanPtr hold_load_plan = NULL;
static SPIPlanPtr hold_status_plan = NULL;
static SPIPlanPtr expired_plan = NULL;

/* Position in a batch of the request being parsed or applied; -1 outside. */
int			fintx_batch_position = -1;

/* ------------------------------------------------------------------------
 * Input validation
 * ------------------------------------------------------------------------
 */

/* Emits 22023 naming a required argument that is NULL. */
void
fintx_null_argument(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s must not be null", name)));
}

#define NullArgument fintx_null_argument

/* Returns at most maxbytes of s for an error message, never cutting a character. */
static char *
ClipForMessage(const char *s, int maxbytes)
{
	int			len = strlen(s);

	if (len <= maxbytes)
		return (char *) s;
	return psprintf("%s...", pnstrdup(s, pg_mbcliplen(s, len, maxbytes)));
}

/* Returns the idempotency key as a C string; emits 22023 if it is invalid. */
static char *
CheckKey(const char *key)
{
	size_t		len = strlen(key);

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key must not be empty")));
	if (len > FINTX_MAX_KEY_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key is too long"),
				 errdetail("The key is %zu bytes long; the limit is %d bytes.", len, FINTX_MAX_KEY_LEN)));
	for (size_t i = 0; i < len; i++)
		if ((unsigned char) key[i] < 0x20 || key[i] == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("idempotency key must not contain control characters")));
	return (char *) key;
}

/* Checks an account code (1-64 of A-Z a-z 0-9 _ . : / @ -); emits 22023 otherwise. */
static char *
CheckCode(const char *what, const char *code)
{
	size_t		len = strlen(code);
	bool		ok = len > 0 && len <= FINTX_MAX_CODE_LEN;

	for (size_t i = 0; ok && i < len; i++)
	{
		char		c = code[i];

		ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			c == '_' || c == '.' || c == ':' || c == '/' || c == '@' || c == '-';
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 what ? errmsg("invalid account code in %s", what) : errmsg("invalid account code"),
				 errdetail("Account codes are 1 to %d characters from A-Z, a-z, 0-9 and _ . : / @ -.",
						   FINTX_MAX_CODE_LEN)));
	return (char *) code;
}

/* Emits 22003 unless amount > 0. */
static int64
CheckAmount(int64 amount)
{
	if (amount <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("amount must be greater than zero"),
				 errdetail("The amount given was %lld.", (long long) amount)));
	return amount;
}

/* Returns an empty JSON object. */
static Jsonb *
EmptyObject(void)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
}

/* Checks metadata is a JSON object within the size limit (NULL means {}). */
static Jsonb *
CheckMetadata(Jsonb *md)
{
	if (md == NULL)
		return EmptyObject();
	if (!JB_ROOT_IS_OBJECT(md) || JB_ROOT_IS_SCALAR(md))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("metadata must be a JSON object")));
	if (VARSIZE(md) > FINTX_MAX_METADATA)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("metadata is too large"),
				 errdetail("The metadata takes %u bytes; the limit is %d bytes.",
						   (unsigned) VARSIZE(md), FINTX_MAX_METADATA)));
	return md;
}

/* Checks a hold timeout is a positive interval (NULL: no expiry). */
static Interval *
CheckTimeout(Interval *timeout, bool pending)
{
	Interval	zero;

	if (timeout == NULL)
		return NULL;
	if (!pending)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout is only valid for a pending transfer"),
				 errhint("Pass pending => true to place a hold that expires.")));
	memset(&zero, 0, sizeof(zero));
	if (!DatumGetBool(DirectFunctionCall2(interval_gt, IntervalPGetDatum(timeout),
										  IntervalPGetDatum(&zero))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must be a positive interval")));
	return timeout;
}

/* Returns the calling role (authz.c: fintx_calling_user), the principal of its requests. */
char *
fintx_principal(void)
{
	return GetUserNameFromId(fintx_calling_user(), false);
}

/* ------------------------------------------------------------------------
 * Arrays and results
 * ------------------------------------------------------------------------
 */

/* Builds a one-dimensional bigint array. */
static Datum
MakeInt8Array(Datum *elems, int n)
{
	return PointerGetDatum(construct_array(elems, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* Forms a fintx.transfer_result tuple for a finished request. */
void
fintx_result_values(LedgerRequest *req, Datum *values, bool *nulls)
{
	values[0] = Int64GetDatum(req->transfer_id);
	values[1] = CStringGetTextDatum(req->status);
	values[2] = BoolGetDatum(req->replayed);
	values[3] = Int64GetDatum(req->from_balance);
	values[4] = Int64GetDatum(req->to_balance);
	values[5] = req->entry_hash ? PointerGetDatum(req->entry_hash) : (Datum) 0;
	values[6] = TimestampTzGetDatum(req->created_at);
	memset(nulls, 0, sizeof(bool) * 7);
	nulls[5] = req->entry_hash == NULL;
	/* a service does not learn the balance of a counterparty outside its grants */
	nulls[3] = fintx_authz_hides_balance(req->from_code);
	nulls[4] = fintx_authz_hides_balance(req->to_code);
}

/* Returns the composite result of a single-request function. */
Datum
fintx_result_datum(FunctionCallInfo fcinfo, LedgerRequest *req)
{
	TupleDesc	tupdesc;
	Datum		values[7];
	bool		nulls[7];

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");	/* LCOV_EXCL_LINE */
	tupdesc = BlessTupleDesc(tupdesc);
	fintx_result_values(req, values, nulls);
	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

/* Error context: names the batch element being processed. */
static void
BatchErrorContext(void *arg)
{
	if (fintx_batch_position >= 0)
		errcontext("transfer request at index %d of the batch", fintx_batch_position);
}

/* ------------------------------------------------------------------------
 * Execution
 * ------------------------------------------------------------------------
 */

static int
CompareAccountId(const void *a, const void *b)
{
	int64		x = ((const LedgerAccount *) a)->id;
	int64		y = ((const LedgerAccount *) b)->id;

	return (x > y) - (x < y);
}

static int
CompareAccountCode(const void *a, const void *b)
{
	return strcmp((*(LedgerAccount *const *) a)->code, (*(LedgerAccount *const *) b)->code);
}

static int
CompareHoldId(const void *a, const void *b)
{
	int64		x = ((const LedgerHold *) a)->id;
	int64		y = ((const LedgerHold *) b)->id;

	return (x > y) - (x < y);
}

/* Finds an account by code in an array sorted by code; NULL if absent. */
static LedgerAccount *
SortedAccount(LedgerAccount **bycode, int n, const char *code)
{
	LedgerAccount key;
	LedgerAccount *keyp = &key;
	LedgerAccount **found;

	key.code = (char *) code;
	found = bsearch(&keyp, bycode, n, sizeof(LedgerAccount *), CompareAccountCode);
	return found ? *found : NULL;
}

/* SortedAccount that emits 22023 if the account is absent. */
static LedgerAccount *
AccountByCode(LedgerAccount **bycode, int n, const char *code)
{
	LedgerAccount *a = SortedAccount(bycode, n, code);

	if (a == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("account \"%s\" does not exist", code)));
	return a;
}

/* Finds a locked account by id (it must have been locked). */
static LedgerAccount *
AccountById(LedgerAccount *accts, int n, int64 id)
{
	LedgerAccount key;
	LedgerAccount *found;

	key.id = id;
	found = bsearch(&key, accts, n, sizeof(LedgerAccount), CompareAccountId);
	if (found == NULL)
		elog(ERROR, "account %lld referenced by a hold does not exist", (long long) id);	/* LCOV_EXCL_LINE */
	return found;
}

/* Reads a bigint column of the current SPI row. */
static int64
GetInt64(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

/* Columns of fintx.accounts, as direct.c checks them (attribute numbers - 1). */
static const FintxColumn account_columns[] = {
	{"id", INT8OID},
	{"code", TEXTOID},
	{"currency", TEXTOID},
	{"allow_negative", BOOLOID},
	{"allow_positive", BOOLOID},
	{"metadata", JSONBOID},
	{"debits_posted", INT8OID},
	{"credits_posted", INT8OID},
	{"debits_pending", INT8OID},
	{"credits_pending", INT8OID},
	{"created_by", TEXTOID},
	{"created_at", TIMESTAMPTZOID},
	{"closed_at", TIMESTAMPTZOID}
};
enum
{
	ACC_ID, ACC_CODE, ACC_CURRENCY, ACC_ALLOW_NEGATIVE, ACC_ALLOW_POSITIVE, ACC_METADATA,
	ACC_DEBITS_POSTED, ACC_CREDITS_POSTED, ACC_DEBITS_PENDING, ACC_CREDITS_PENDING,
	ACC_CREATED_BY, ACC_CREATED_AT, ACC_CLOSED_AT, ACC_NCOLUMNS
};

/* An account found before it is locked: where it is and what it is called. */
typedef struct FoundAccount
{
	int64		id;
	ItemPointerData tid;
	Datum		key;			/* the code or id it was found by */
} FoundAccount;

static int
CompareFoundId(const void *a, const void *b)
{
	int64		x = ((const FoundAccount *) a)->id;
	int64		y = ((const FoundAccount *) b)->id;

	return (x > y) - (x < y);
}

static int
CompareInt64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

static int
CompareCString(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Finds an account (unlocked) by code or id; false if there is none. */
static bool
FindAccount(FintxTable *t, bool by_id, Datum key, FoundAccount *f)
{
	TupleTableSlot *slot = by_id ? fintx_direct_find(t, "accounts_pkey", F_INT8EQ, key)
		: fintx_direct_find(t, "accounts_code_key", F_TEXTEQ, key);
	bool		isnull;

	if (slot == NULL)
		return false;
	f->id = DatumGetInt64(slot_getattr(slot, ACC_ID + 1, &isnull));
	f->tid = slot->tts_tid;
	f->key = key;
	return true;
}

/*
 * Locks the accounts named by the requests (codes for transfers, ids for
 * holds) in ascending id order and returns them sorted by id, each with a
 * copy of its locked row. Accounts that do not exist are left out.
 */
static LedgerAccount *
LockAccounts(FintxTable *t, LedgerRequest **reqs, int n, LedgerHold *holds, int nholds, int *naccts)
{
	bool		by_id = nholds > 0;
	int			nkeys = 0;
	int			nfound = 0;
	FoundAccount *found;
	LedgerAccount *accts;

	if (by_id)
	{
		int64	   *ids = palloc(sizeof(int64) * 2 * nholds);

		for (int i = 0; i < nholds; i++)
		{
			ids[nkeys++] = holds[i].from_id;
			ids[nkeys++] = holds[i].to_id;
		}
		qsort(ids, nkeys, sizeof(int64), CompareInt64);
		found = palloc(sizeof(FoundAccount) * nkeys);
		for (int i = 0; i < nkeys; i++)
			if ((i == 0 || ids[i] != ids[i - 1]) &&
				FindAccount(t, true, Int64GetDatum(ids[i]), &found[nfound]))
				nfound++;
	}
	else
	{
		char	  **codes = palloc(sizeof(char *) * 2 * n);

		for (int i = 0; i < n; i++)
		{
			codes[nkeys++] = reqs[i]->from_code;
			codes[nkeys++] = reqs[i]->to_code;
		}
		qsort(codes, nkeys, sizeof(char *), CompareCString);
		found = palloc(sizeof(FoundAccount) * nkeys);
		for (int i = 0; i < nkeys; i++)
			if ((i == 0 || strcmp(codes[i], codes[i - 1]) != 0) &&
				FindAccount(t, false, CStringGetTextDatum(codes[i]), &found[nfound]))
				nfound++;
	}

	/* lock in id order: two requests never wait for each other in a cycle */
	qsort(found, nfound, sizeof(FoundAccount), CompareFoundId);
	accts = palloc0(sizeof(LedgerAccount) * (nfound + 1));
	*naccts = 0;
	for (int i = 0; i < nfound; i++)
	{
		TupleTableSlot *slot = fintx_direct_lock(t, &found[i].tid);
		LedgerAccount *a = &accts[*naccts];
		Datum	   *v;
		bool	   *isnull;

		if (slot == NULL)
			continue;			/* deleted meanwhile */
		slot_getallattrs(slot);
		v = slot->tts_values;
		isnull = slot->tts_isnull;
		a->id = DatumGetInt64(v[ACC_ID]);
		a->code = TextDatumGetCString(v[ACC_CODE]);
		/* a newer version may differ from the one found: it must still be the account asked for */
		if (by_id ? a->id != DatumGetInt64(found[i].key)
			: strcmp(a->code, TextDatumGetCString(found[i].key)) != 0)
			continue;
		strlcpy(a->currency, TextDatumGetCString(v[ACC_CURRENCY]), sizeof(a->currency));
		a->allow_negative = DatumGetBool(v[ACC_ALLOW_NEGATIVE]);
		a->allow_positive = DatumGetBool(v[ACC_ALLOW_POSITIVE]);
		a->closed = !isnull[ACC_CLOSED_AT];
		a->debits_posted = DatumGetInt64(v[ACC_DEBITS_POSTED]);
		a->credits_posted = DatumGetInt64(v[ACC_CREDITS_POSTED]);
		a->debits_pending = DatumGetInt64(v[ACC_DEBITS_PENDING]);
		a->credits_pending = DatumGetInt64(v[ACC_CREDITS_PENDING]);
		a->tid = slot->tts_tid;
		a->tuple = ExecCopySlotHeapTuple(slot);
		(*naccts)++;
	}
	return accts;
}

/* Emits 55000 naming how a hold was already resolved. */
static void
HoldAlreadyResolved(int64 hold_id)
{
	Datum		arg = Int64GetDatum(hold_id);
	Oid			types[1] = {INT8OID};
	const char *how = "resolved";

	fintx_keep_plan(&hold_status_plan,
					"SELECT status FROM fintx.transfers WHERE pending_id = $1", 1, types);
	/* read-write mode: a fresh snapshot sees the resolver we may have waited for */
	if (fintx_execute_indexed(hold_status_plan, &arg, NULL, false, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
		how = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("pending transfer %lld is already resolved", (long long) hold_id),
			 errdetail("The hold was already %s; a hold is posted, voided or expired at most once.", how)));
}

/*
 * Emits the error for a hold id the caller's snapshot does not see: 22023,
 * or under REPEATABLE READ and SERIALIZABLE 40001 if a transaction committed
 * after the snapshot made it (a retry in a new transaction finds it; the same
 * answer as for a key or a row changed after the snapshot). SPI connected.
 */
static void
HoldMissing(int64 id)
{
	if (IsolationUsesXactSnapshot())
	{
		static SPIPlanPtr plan = NULL;
		Oid			type = INT8OID;
		Datum		arg = Int64GetDatum(id);

		fintx_keep_plan(&plan, "SELECT FROM fintx.transfers WHERE id OPERATOR(pg_catalog.=) $1", 1, &type);
		PushActiveSnapshot(GetLatestSnapshot());
		fintx_spi_expect(fintx_execute_indexed(plan, &arg, NULL, true, 1), SPI_OK_SELECT, "looking up a hold failed");
		PopActiveSnapshot();
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access to transfer %lld", (long long) id),
					 errdetail("The transfer was made by a transaction that committed after this transaction's snapshot was taken."),
					 errhint("Retry the request in a new transaction.")));
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("transfer %lld does not exist", (long long) id)));
}

/*
 * Claims the holds of post/void/expire requests: deletes their open-hold row
 * (waiting for a concurrent resolver; after it commits the row is gone) and
 * loads the held transfer. Emits 22023 for an unknown or non-pending
 * transfer (40001 for one made after a REPEATABLE READ snapshot, HoldMissing) and 55000 for one already resolved.
 */
static LedgerHold *
ClaimHolds(LedgerRequest **reqs, int n, int *nholds)
{
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Oid			types[1] = {INT8ARRAYOID};
	Datum		arg;
	LedgerHold *holds;
	int			ret;

	for (int i = 0; i < n; i++)
		ids[i] = Int64GetDatum(reqs[i]->hold_id);
	arg = MakeInt8Array(ids, n);

	fintx_keep_plan(&hold_load_plan,
					"SELECT id, status, pending_id IS NOT NULL, from_account, to_account, amount, timeout_at"
					"  FROM fintx.transfers WHERE id = ANY ($1) ORDER BY id",
					1, types);
	ret = fintx_execute_indexed(hold_load_plan, &arg, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "loading holds failed: %s", SPI_result_code_string(ret));	/* LCOV_EXCL_LINE */
	*nholds = (int) SPI_processed;
	holds = palloc0(sizeof(LedgerHold) * (*nholds + 1));
	for (int i = 0; i < *nholds; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		LedgerHold *h = &holds[i];
		bool		isnull;
		Datum		d;

		h->id = GetInt64(tup, desc, 1);
		if (strcmp(SPI_getvalue(tup, desc, 2), "pending") != 0 ||
			DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("transfer %lld is not a pending transfer", (long long) h->id),
					 errhint("Only a transfer made with pending => true can be posted or voided.")));
		h->from_id = GetInt64(tup, desc, 4);
		h->to_id = GetInt64(tup, desc, 5);
		h->amount = GetInt64(tup, desc, 6);
		d = SPI_getbinval(tup, desc, 7, &isnull);
		h->has_timeout = !isnull;
		h->timeout_at = isnull ? 0 : DatumGetTimestampTz(d);
	}

	for (int i = 0; i < n; i++)
	{
		LedgerHold	key;

		key.id = reqs[i]->hold_id;
		reqs[i]->hold = bsearch(&key, holds, *nholds, sizeof(LedgerHold), CompareHoldId);
		if (reqs[i]->hold == NULL)
			HoldMissing(reqs[i]->hold_id);
	}

	/* Claim: the open-hold row is deleted by exactly one resolver. */
	fintx_keep_plan(&hold_claim_plan,
					"DELETE FROM fintx.pending_holds WHERE transfer_id = ANY ($1) RETURNING transfer_id",
					1, types);
	ret = fintx_execute_indexed(hold_claim_plan, &arg, NULL, false, 0);
	if (ret != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "claiming holds failed: %s", SPI_result_code_string(ret));	/* LCOV_EXCL_LINE */
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		LedgerHold	key;
		LedgerHold *h;

		key.id = GetInt64(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1);
		h = bsearch(&key, holds, *nholds, sizeof(LedgerHold), CompareHoldId);
		if (h)
			h->claimed = true;
	}
	for (int i = 0; i < *nholds; i++)
		if (!holds[i].claimed)
			HoldAlreadyResolved(holds[i].id);
	return holds;
}

/* Posted balance (credits - debits); both counters are >= 0, so it cannot overflow. */
static int64
PostedBalance(LedgerAccount *a)
{
	return a->credits_posted - a->debits_posted;
}

/* Adds amount to a counter; emits 22003 on overflow. */
static void
AddCounter(LedgerAccount *a, int64 *counter, int64 amount)
{
	if (pg_add_s64_overflow(*counter, amount, counter))
	{
		/* a caller who may not see the account's balance is not told its counters */
		bool		hide = fintx_authz_hides_balance(a->code);

		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("balance of account \"%s\" would be out of range", a->code),
				 hide ? 0 : errdetail("Adding %lld overflows a 64-bit counter of the account.", (long long) amount)));
	}
	a->dirty = true;
}

/* Releases a held amount from a pending counter (never below zero). */
static void
ReleaseCounter(LedgerAccount *a, int64 *counter, int64 amount)
{
	if (*counter < amount)
		elog(ERROR, "pending counter of account \"%s\" is smaller than a hold on it", a->code);	/* LCOV_EXCL_LINE */
	*counter -= amount;
	a->dirty = true;
}

/*
 * Emits 22003 unless posted + pending of one side fits in 64 bits: then every
 * hold can later be posted in full without overflowing the posted counter.
 */
static int64
SideTotal(LedgerAccount *a, int64 posted, int64 pending)
{
	int64		total;

	if (pg_add_s64_overflow(posted, pending, &total))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("balance of account \"%s\" would be out of range", a->code),
				 errdetail("Posted and pending amounts on one side of an account must not exceed %lld together.",
						   (long long) PG_INT64_MAX)));
	return total;
}

/* Debits amount (posted or pending) and enforces "debits must not exceed credits". */
static void
Debit(LedgerAccount *a, int64 amount, bool pending)
{
	/* cannot overflow: debits_posted + debits_pending fits in 64 bits (SideTotal) */
	int64		before = a->credits_posted - (a->debits_posted + a->debits_pending);
	int64		total;

	AddCounter(a, pending ? &a->debits_pending : &a->debits_posted, amount);
	total = SideTotal(a, a->debits_posted, a->debits_pending);
	if (!a->allow_negative && total > a->credits_posted)
		ereport(ERROR,
				(errcode(ERRCODE_FINTX_INSUFFICIENT_FUNDS),
				 errmsg("insufficient funds in account \"%s\"", a->code),
				 errdetail("The available balance is %lld; the transfer needs %lld.",
						   (long long) before, (long long) amount)));
}

/* Credits amount (posted or pending) and enforces "credits must not exceed debits". */
static void
Credit(LedgerAccount *a, int64 amount, bool pending)
{
	int64		total;

	AddCounter(a, pending ? &a->credits_pending : &a->credits_posted, amount);
	total = SideTotal(a, a->credits_posted, a->credits_pending);
	if (!a->allow_positive && total > a->debits_posted)
	{
		bool		hide = fintx_authz_hides_balance(a->code);

		ereport(ERROR,
				(errcode(ERRCODE_FINTX_CREDIT_LIMIT),
				 errmsg("credit would give account \"%s\" a positive balance", a->code),
				 hide ? errdetail("The account was opened with allow_positive = false.") :
				 errdetail("The account was opened with allow_positive = false; its posted debits are %lld and its credits, posted and pending, would be %lld.",
						   (long long) a->debits_posted,
						   (long long) total)));
	}
}

/* Checks the accounts of a transfer: both open, same currency. */
static void
CheckPair(LedgerAccount *from, LedgerAccount *to)
{
	if (from->closed)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("account \"%s\" is closed", from->code)));
	if (to->closed)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("account \"%s\" is closed", to->code)));
	if (strcmp(from->currency, to->currency) != 0)
	{
		/* the currency of an account outside a service's grants is not named (as its balance) */
		const char *from_currency = fintx_authz_hides_balance(from->code) ? "another currency" : from->currency;
		const char *to_currency = fintx_authz_hides_balance(to->code) ? "another currency" : to->currency;

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("currency mismatch between accounts \"%s\" and \"%s\"", from->code, to->code),
				 errdetail("Account \"%s\" holds %s; account \"%s\" holds %s.",
						   from->code, from_currency, to->code, to_currency)));
	}
}

/*
 * A transfer that waits for approval: the accounts are checked now, but no
 * money moves until a checker approves it (fintx.approve_transfer).
 */
static void
AwaitApproval(LedgerRequest *req, LedgerAccount **bycode, int naccts)
{
	req->from = AccountByCode(bycode, naccts, req->from_code);
	req->to = AccountByCode(bycode, naccts, req->to_code);
	CheckPair(req->from, req->to);
	req->status = "awaiting_approval";
}

/* Applies one transfer request to the locked accounts. */
static void
ApplyTransfer(LedgerRequest *req, LedgerAccount **bycode, int naccts, TimestampTz clock,
			  Datum *timeout_at, bool *timeout_null)
{
	LedgerAccount *from = AccountByCode(bycode, naccts, req->from_code);
	LedgerAccount *to = AccountByCode(bycode, naccts, req->to_code);

	CheckPair(from, to);
	Debit(from, req->amount, req->pending);
	Credit(to, req->amount, req->pending);
	req->from = from;
	req->to = to;
	req->status = req->pending ? "pending" : "posted";
	*timeout_null = true;
	if (req->pending && req->timeout)
	{
		*timeout_at = DirectFunctionCall2(timestamptz_pl_interval, TimestampTzGetDatum(clock),
										  IntervalPGetDatum(req->timeout));
		*timeout_null = false;

		/*
		 * CheckTimeout compares the interval with zero counting a month as 30
		 * days and a day as 24 hours; added to the clock, months and days
		 * follow the calendar and the time zone. An interval whose parts have
		 * different signs can pass the first and still end now or earlier: a
		 * hold that could never be posted.
		 */
		if (DatumGetTimestampTz(*timeout_at) <= clock)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("timeout must be a positive interval"),
					 errdetail("now() + timeout is %s, not later than now(): months and days count by the calendar.",
							   timestamptz_to_str(DatumGetTimestampTz(*timeout_at)))));
	}
}

/* Applies one post/void/expire request to its hold and the locked accounts. */
static void
ApplyResolution(LedgerRequest *req, LedgerAccount *accts, int naccts, TimestampTz clock)
{
	LedgerHold *h = req->hold;
	LedgerAccount *from = AccountById(accts, naccts, h->from_id);
	LedgerAccount *to = AccountById(accts, naccts, h->to_id);
	bool		expired = h->has_timeout && h->timeout_at <= clock;

	if (h->used)
		HoldAlreadyResolved(h->id);	/* LCOV_EXCL_LINE: one hold per request of a call */
	h->used = true;
	if (req->op == LEDGER_POST && expired)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pending transfer %lld has expired", (long long) h->id),
				 errdetail("The hold expired at %s.", timestamptz_to_str(h->timeout_at))));
	if (req->op == LEDGER_EXPIRE && !expired)
		elog(ERROR, "hold %lld has not expired", (long long) h->id);	/* LCOV_EXCL_LINE */
	if (req->op == LEDGER_POST && req->amount_given && req->amount > h->amount)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("amount exceeds the pending amount"),
				 errdetail("Transfer %lld holds %lld; %lld cannot be posted.",
						   (long long) h->id, (long long) h->amount, (long long) req->amount)));

	ReleaseCounter(from, &from->debits_pending, h->amount);
	ReleaseCounter(to, &to->credits_pending, h->amount);
	if (req->op == LEDGER_POST)
	{
		if (!req->amount_given)
			req->amount = h->amount;
		Debit(from, req->amount, false);
		Credit(to, req->amount, false);
		req->status = "posted";
	}
	else
	{
		req->amount = h->amount;
		req->status = req->op == LEDGER_VOID ? "voided" : "expired";
	}
	req->from = from;
	req->to = to;
}

/* Audit action of a finished request. */
static const char *
AuditAction(LedgerRequest *r)
{
	switch (r->op)
	{
		case LEDGER_TRANSFER:
			if (strcmp(r->status, "awaiting_approval") == 0)
				return "transfer.awaiting_approval";
			return r->pending ? "transfer.pending" : "transfer.posted";
		case LEDGER_POST:
			return "transfer.pending_posted";
		case LEDGER_VOID:
			return "transfer.voided";
		case LEDGER_EXPIRE:
			return "transfer.expired";
	}
	return "transfer";			/* LCOV_EXCL_LINE: keep compiler quiet */
}

/*
 * The details of an audit entry, built twice at once: as a jsonb value (what
 * is stored) and as the text jsonb prints for it (JsonbToCString: keys
 * shortest first, then bytewise; ", " and ": " between them), which the
 * canonical bytes need. Printing the jsonb afterwards would convert every
 * number back from numeric.
 */
#define DETAILS_MAX_KEYS 16

typedef struct Details
{
	JsonbParseState *st;
	int			n;
	const char *keys[DETAILS_MAX_KEYS];
	char	   *texts[DETAILS_MAX_KEYS];	/* each value as JSON text */
} Details;

#ifdef USE_ASSERT_CHECKING
/* jsonb's order of object keys: shorter first, then bytewise. */
static int
CompareDetailKeys(const void *a, const void *b)
{
	const char *x = *(const char *const *) a;
	const char *y = *(const char *const *) b;
	size_t		lx = strlen(x);
	size_t		ly = strlen(y);

	if (lx != ly)
		return lx < ly ? -1 : 1;
	return memcmp(x, y, lx);
}
#endif

static void
PushKey(Details *d, const char *key, JsonbValue *value, char *text)
{
	JsonbValue	k;

	Assert(d->n < DETAILS_MAX_KEYS);
	Assert(d->n == 0 || CompareDetailKeys(&d->keys[d->n - 1], &key) < 0);
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	pushJsonbValue(&d->st, WJB_KEY, &k);
	pushJsonbValue(&d->st, WJB_VALUE, value);
	d->keys[d->n] = key;
	d->texts[d->n] = text;
	d->n++;
}

static void
PushInt(Details *d, const char *key, int64 n)
{
	JsonbValue	v;
	char	   *text = palloc(MAXINT8LEN + 1);

	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(n);
	pg_lltoa(n, text);
	PushKey(d, key, &v, text);
}

static void
PushString(Details *d, const char *key, const char *str)
{
	JsonbValue	v;
	StringInfoData text;

	v.type = jbvString;
	v.val.string.val = (char *) str;
	v.val.string.len = strlen(str);
	/* sized for the string (initStringInfo takes 1 kB, per value of every transfer) */
	text.maxlen = v.val.string.len + 16;
	text.data = palloc(text.maxlen);
	resetStringInfo(&text);
	escape_json(&text, str);
	PushKey(d, key, &v, text.data);
}

/* Ends the object: its jsonb value, and *text the same value as jsonb prints it. */
static Jsonb *
FinishDetails(Details *d, char **text)
{
	JsonbValue *obj = pushJsonbValue(&d->st, WJB_END_OBJECT, NULL);
	StringInfoData buf;

	/*
	 * The keys were pushed in jsonb's order (PushKey asserts it): the text is
	 * written in that order, as jsonb's output function writes the stored
	 * value. (Were it not, the entry hash would not match details::text and
	 * verify_audit() would report the entry.)
	 */
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < d->n; i++)
	{
		if (i > 0)
			appendBinaryStringInfo(&buf, ", ", 2);
		escape_json(&buf, d->keys[i]);
		appendBinaryStringInfo(&buf, ": ", 2);
		appendStringInfoString(&buf, d->texts[i]);
	}
	appendStringInfoChar(&buf, '}');
	*text = buf.data;
	return JsonbValueToJsonb(obj);
}

/*
 * Builds the audit entry (with its hash) of a finished request; the details
 * are built as a jsonb value directly (no JSON text to parse).
 */
static void
AuditTransfer(const char *principal, LedgerRequest *r, int i, Datum *timeout_at, FintxAuditEntry *e)
{
	Details		d;
	Jsonb	   *details;
	char	   *text;
	char		id[32];
	const char *service;
	const char *rule;
	/* the access decision that allowed a service's request */
	bool		by_service = fintx_authz_decision(i, &service, &rule);

	d.st = NULL;
	d.n = 0;
	pushJsonbValue(&d.st, WJB_BEGIN_OBJECT, NULL);
	/* in jsonb's key order (shorter first, then bytewise): both sorts then find them sorted */
	PushInt(&d, "amount", r->amount);
	PushString(&d, "status", r->status);
	if (by_service)
		PushString(&d, "service", service);
	PushString(&d, "currency", r->from->currency);
	if (r->op == LEDGER_TRANSFER)
	{
		JsonbValue	md;

		md.type = jbvBinary;
		md.val.binary.data = &r->metadata->root;
		md.val.binary.len = VARSIZE(r->metadata) - VARHDRSZ;
		PushKey(&d, "metadata", &md, JsonbToCString(NULL, &r->metadata->root, VARSIZE(r->metadata)));
	}
	if (r->hold)
		PushInt(&d, "pending_id", r->hold->id);
	if (timeout_at)
		PushString(&d, "timeout_at", fintx_timestamptz_utc(DatumGetTimestampTz(*timeout_at)));
	PushString(&d, "to_account", r->to->code);
	PushInt(&d, "to_balance", r->to_balance);
	PushInt(&d, "transfer_id", r->transfer_id);
	PushString(&d, "from_account", r->from->code);
	PushInt(&d, "from_balance", r->from_balance);
	if (by_service)
		PushString(&d, "authorized_by", rule);
	PushString(&d, "idempotency_key", r->key);
	details = FinishDetails(&d, &text);
	snprintf(id, sizeof(id), "%lld", (long long) r->transfer_id);
	fintx_audit_init_text(e, principal, AuditAction(r), "transfer", pstrdup(id), details, text);
}

/* Columns of fintx.transfers and fintx.pending_holds, as direct.c checks them. */
static const FintxColumn transfer_columns[] = {
	{"id", INT8OID},
	{"status", TEXTOID},
	{"from_account", INT8OID},
	{"to_account", INT8OID},
	{"amount", INT8OID},
	{"pending_id", INT8OID},
	{"timeout_at", TIMESTAMPTZOID},
	{"metadata", JSONBOID},
	{"from_balance", INT8OID},
	{"to_balance", INT8OID},
	{"entry_hash", BYTEAOID},
	{"principal", TEXTOID},
	{"created_at", TIMESTAMPTZOID}
};
static const FintxColumn hold_columns[] = {
	{"transfer_id", INT8OID},
	{"timeout_at", TIMESTAMPTZOID}
};

/*
 * Writes back changed accounts, inserts the transfer rows with their audit
 * entries and outbox events, and any new holds (direct writes, accounts
 * locked and open in t).
 */
static void
WriteBack(EState *estate, FintxTable *accounts, const char *principal, LedgerRequest **reqs, int n,
		  LedgerAccount *accts, int naccts, Datum *timeout_at, bool *timeout_null, Jsonb *empty)
{
	FintxAuditEntry *entries = palloc(sizeof(FintxAuditEntry) * n);
	Datum		created_at = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	Datum		principal_d = CStringGetTextDatum(principal);
	FintxTable	t;

	/* accounts: the four counters */
	{
		Datum		v[ACC_NCOLUMNS];
		bool		nulls[ACC_NCOLUMNS];
		bool		replace[ACC_NCOLUMNS];

		memset(nulls, 0, sizeof(nulls));
		memset(replace, 0, sizeof(replace));
		replace[ACC_DEBITS_POSTED] = replace[ACC_CREDITS_POSTED] = true;
		replace[ACC_DEBITS_PENDING] = replace[ACC_CREDITS_PENDING] = true;
		for (int i = 0; i < naccts; i++)
		{
			LedgerAccount *a = &accts[i];

			if (!a->dirty)
				continue;
			v[ACC_DEBITS_POSTED] = Int64GetDatum(a->debits_posted);
			v[ACC_CREDITS_POSTED] = Int64GetDatum(a->credits_posted);
			v[ACC_DEBITS_PENDING] = Int64GetDatum(a->debits_pending);
			v[ACC_CREDITS_PENDING] = Int64GetDatum(a->credits_pending);
			fintx_direct_update(accounts, &a->tid, a->tuple, v, nulls, replace);
		}
	}

	/* transfers, each with the hash of its audit entry */
	fintx_direct_open(&t, estate, "transfers", transfer_columns, lengthof(transfer_columns));
	for (int i = 0; i < n; i++)
	{
		LedgerRequest *r = reqs[i];
		Datum		v[lengthof(transfer_columns)];
		bool		nulls[lengthof(transfer_columns)];

		memset(nulls, 0, sizeof(nulls));
		AuditTransfer(principal, r, i, timeout_null[i] ? NULL : &timeout_at[i], &entries[i]);
		v[0] = Int64GetDatum(r->transfer_id);
		v[1] = CStringGetTextDatum(r->status);
		v[2] = Int64GetDatum(r->from->id);
		v[3] = Int64GetDatum(r->to->id);
		v[4] = Int64GetDatum(r->amount);
		v[5] = Int64GetDatum(r->hold ? r->hold->id : 0);
		nulls[5] = r->hold == NULL;
		v[6] = timeout_at[i];
		nulls[6] = timeout_null[i];
		v[7] = PointerGetDatum(r->op == LEDGER_TRANSFER ? r->metadata : empty);
		v[8] = Int64GetDatum(r->from_balance);
		v[9] = Int64GetDatum(r->to_balance);
		v[10] = fintx_hash_datum(entries[i].hash);
		v[11] = principal_d;
		v[12] = created_at;
		fintx_direct_insert(&t, v, nulls);
		/* the result outlives SPI: copy the hash into the caller's context */
		r->entry_hash = SPI_palloc(VARHDRSZ + 32);
		memcpy(r->entry_hash, DatumGetPointer(v[10]), VARHDRSZ + 32);
	}
	fintx_direct_close(&t);

	/* the audit entries and outbox events, in the same transaction */
	fintx_audit_write(estate, entries, n);
	fintx_outbox_write_audit(estate, entries, n);

	/* open holds (the table is opened only when there are some) */
	t.leaf.rel = NULL;
	for (int i = 0; i < n; i++)
	{
		Datum		v[2];
		bool		nulls[2];

		if (reqs[i]->op != LEDGER_TRANSFER || !reqs[i]->pending ||
			strcmp(reqs[i]->status, "pending") != 0)
			continue;
		if (t.leaf.rel == NULL)
			fintx_direct_open(&t, estate, "pending_holds", hold_columns, lengthof(hold_columns));
		v[0] = Int64GetDatum(reqs[i]->transfer_id);
		v[1] = timeout_at[i];
		nulls[0] = false;
		nulls[1] = timeout_null[i];
		fintx_direct_insert(&t, v, nulls);
	}
	if (t.leaf.rel != NULL)
		fintx_direct_close(&t);
}

/* The currency of the request's debited account, NULL if there is no such account. */
static const char *
FromCurrency(LedgerRequest *req, LedgerAccount **bycode, int naccts)
{
	LedgerAccount *a = SortedAccount(bycode, naccts, req->from_code);

	return a ? a->currency : NULL;
}

/*
 * Authorizes a transfer request against the grants of the calling service
 * (the debited account decides); returns true if it must await approval.
 * Runs after the accounts are locked and before anything changes; a request
 * on an account outside the caller's grants is refused whether or not the
 * account exists.
 */
static bool
Authorize(LedgerRequest *req, LedgerAccount **bycode, int naccts)
{
	if (req->preauthorized || !fintx_authz_active())
		return false;
	return fintx_authorize(FINTX_OP_TRANSFER, req->from_code, FromCurrency(req, bycode, naccts),
						   req->amount, true, !req->batched);
}

/*
 * Locks the daily-limit rows that a batch's transfers will count against, in
 * a fixed order, after the accounts (fintx_authz_lock_limits): batches whose
 * requests meet the same rows in different orders cannot deadlock.
 */
static void
LockLimits(LedgerRequest **reqs, int n, LedgerAccount **bycode, int naccts)
{
	const char **objects = palloc(sizeof(char *) * n);
	const char **currencies = palloc(sizeof(char *) * n);

	/* (a batch's requests are never preauthorized: only approvals and hold resolutions are) */
	for (int i = 0; i < n; i++)
	{
		objects[i] = reqs[i]->from_code;
		currencies[i] = FromCurrency(reqs[i], bycode, naccts);
	}
	fintx_authz_lock_limits(FINTX_OP_TRANSFER, objects, currencies, n);
}

/* Applies requests whose keys were newly claimed (SPI connected, in the direct write group estate). */
static void
ApplyNew(EState *estate, const char *principal, LedgerRequest **reqs, int n)
{
	TimestampTz now_ts = GetCurrentTransactionStartTimestamp();
	TimestampTz clock;
	LedgerHold *holds = NULL;
	int			nholds = 0;
	LedgerAccount *accts;
	LedgerAccount **bycode;
	int			naccts;
	Datum	   *timeout_at = palloc0(sizeof(Datum) * n);
	bool	   *timeout_null = palloc(sizeof(bool) * n);
	Jsonb	   *empty = EmptyObject();

	FintxTable	accounts;

	if (reqs[0]->op != LEDGER_TRANSFER)
	{
		/*
		 * Only now, for keys claimed by this call: a retry that replays is
		 * not authorized (nor counted against a daily limit) again, as for
		 * transfers. Before the hold is looked up, so that a hold outside the
		 * service's grants is refused without revealing whether it exists.
		 */
		for (int i = 0; i < n; i++)
			if (reqs[i]->op != LEDGER_EXPIRE)
				fintx_authorize_hold(reqs[i]);
		holds = ClaimHolds(reqs, n, &nholds);
	}
	fintx_direct_open(&accounts, estate, "accounts", account_columns, ACC_NCOLUMNS);
	accts = LockAccounts(&accounts, reqs, n, holds, nholds, &naccts);
	/* read the clock only now: taking the locks may have waited past a timeout */
	clock = GetCurrentTimestamp();
	bycode = palloc(sizeof(LedgerAccount *) * (naccts + 1));
	for (int i = 0; i < naccts; i++)
		bycode[i] = &accts[i];
	qsort(bycode, naccts, sizeof(LedgerAccount *), CompareAccountCode);
	if (n > 1 && reqs[0]->op == LEDGER_TRANSFER && fintx_authz_active())
		LockLimits(reqs, n, bycode, naccts);

	for (int i = 0; i < n; i++)
	{
		LedgerRequest *req = reqs[i];

		CHECK_FOR_INTERRUPTS();
		fintx_batch_position = req->index;
		timeout_null[i] = true;
		if (req->op == LEDGER_TRANSFER)
		{
			if (Authorize(req, bycode, naccts))
				AwaitApproval(req, bycode, naccts);
			else
				ApplyTransfer(req, bycode, naccts, clock, &timeout_at[i], &timeout_null[i]);
		}
		else
		{
			if (req->op != LEDGER_EXPIRE && !req->preauthorized && fintx_authz_active())
			{
				LedgerAccount *from = AccountById(accts, naccts, req->hold->from_id);

				fintx_authorize(FINTX_OP_HOLD_RESOLVE, from->code, from->currency,
								req->amount_given ? req->amount : req->hold->amount, true, false);
			}
			ApplyResolution(req, accts, naccts, clock);
		}
		req->from_balance = PostedBalance(req->from);
		req->to_balance = PostedBalance(req->to);
		/* the accounts live in SPI memory; the result needs their codes afterwards */
		if (req->from_code == NULL)
			req->from_code = fintx_spi_strdup(req->from->code);
		if (req->to_code == NULL)
			req->to_code = fintx_spi_strdup(req->to->code);
		req->created_at = now_ts;
		req->replayed = false;
	}
	fintx_batch_position = -1;
	WriteBack(estate, &accounts, principal, reqs, n, accts, naccts, timeout_at, timeout_null, empty);
	fintx_direct_close(&accounts);
	for (int i = 0; i < n; i++)
		if (strcmp(reqs[i]->status, "awaiting_approval") == 0)
			fintx_approval_record(reqs[i]);
}

/*
 * Runs requests exactly once in the caller's transaction: replays those whose
 * key is in the journal, applies the others atomically. Results are left in
 * the requests. All requests must be transfers, or all hold resolutions.
 */
void
fintx_execute(const char *principal, LedgerRequest **reqs, int n)
{
	LedgerRequest **sorted = palloc(sizeof(LedgerRequest *) * n);
	LedgerRequest **fresh = palloc(sizeof(LedgerRequest *) * n);
	int			nfresh = 0;
	EState	   *estate;

	for (int i = 0; i < n; i++)
	{
		fintx_fingerprint(reqs[i]);
		sorted[i] = reqs[i];
	}
	fintx_journal_dedup(sorted, n);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");	/* LCOV_EXCL_LINE */
	estate = fintx_direct_begin();
	fintx_journal_claim(estate, principal, sorted, n);
	for (int i = 0; i < n; i++)
		if (reqs[i]->claimed)
			fresh[nfresh++] = reqs[i];
	if (nfresh > 0)
		ApplyNew(estate, principal, fresh, nfresh);
	fintx_authz_flush_in(estate);
	fintx_direct_end(estate);
	SPI_finish();

	for (int i = 0; i < n; i++)
	{
		LedgerRequest *r = reqs[i];
		LedgerRequest *o = r->dup_of;

		if (o == NULL)
			continue;
		r->transfer_id = o->transfer_id;
		r->status = o->status;
		r->from_balance = o->from_balance;
		r->to_balance = o->to_balance;
		r->entry_hash = o->entry_hash;
		r->created_at = o->created_at;
		r->replayed = true;
	}
}

/* ------------------------------------------------------------------------
 * SQL-callable functions
 * ------------------------------------------------------------------------
 */

/*
 * fintx.open_account(code, currency, allow_negative, allow_positive, metadata) → bigint
 * Opens an account; emits 22023 for an invalid code or unknown currency and
 * 23505 if the code is taken.
 */
Datum
fintx_open_account(PG_FUNCTION_ARGS)
{
	char	   *code;
	char	   *currency;
	Jsonb	   *md;
	Datum		args[6];
	Oid			types[6] = {TEXTOID, TEXTOID, BOOLOID, BOOLOID, JSONBOID, TEXTOID};
	int64		id;
	bool		isnull;
	int			ret;

	if (PG_ARGISNULL(0))
		NullArgument("code");
	if (PG_ARGISNULL(1))
		NullArgument("currency");
	if (PG_ARGISNULL(2))
		NullArgument("allow_negative");
	if (PG_ARGISNULL(3))
		NullArgument("allow_positive");
	code = CheckCode(NULL, text_to_cstring(PG_GETARG_TEXT_PP(0)));
	currency = text_to_cstring(PG_GETARG_TEXT_PP(1));
	md = CheckMetadata(PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4));
	fintx_authz_begin();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");	/* LCOV_EXCL_LINE */
	args[0] = CStringGetTextDatum(code);
	args[1] = CStringGetTextDatum(currency);
	fintx_keep_plan(&currency_plan, "SELECT 1 FROM fintx.currencies WHERE code = $1", 1, &types[1]);
	ret = SPI_execute_plan(currency_plan, &args[1], NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown currency \"%s\"", ClipForMessage(currency, 16)),
				 errhint("Use an ISO 4217 alphabetic code listed in fintx.currencies, such as \"EUR\".")));
	fintx_authorize(FINTX_OP_ACCOUNT_OPEN, code, currency, 0, false, false);

	args[2] = PG_GETARG_DATUM(2);
	args[3] = PG_GETARG_DATUM(3);
	args[4] = PointerGetDatum(md);
	args[5] = CStringGetTextDatum(fintx_principal());
	fintx_keep_plan(&open_plan,
					"INSERT INTO fintx.accounts (code, currency, allow_negative, allow_positive, metadata, created_by)"
					" VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (code) DO NOTHING RETURNING id",
					6, types);
	ret = SPI_execute_plan(open_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "inserting account failed: %s", SPI_result_code_string(ret));	/* LCOV_EXCL_LINE */
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("account \"%s\" already exists", code)));
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	{
		StringInfoData buf;
		Jsonb	   *details;

		initStringInfo(&buf);
		appendStringInfo(&buf, "{\"account_id\": %lld, \"code\": ", (long long) id);
		escape_json(&buf, code);
		appendStringInfoString(&buf, ", \"currency\": ");
		escape_json(&buf, currency);
		appendStringInfo(&buf, ", \"allow_negative\": %s, \"allow_positive\": %s, \"metadata\": %s}",
						 DatumGetBool(args[2]) ? "true" : "false", DatumGetBool(args[3]) ? "true" : "false",
						 JsonbToCString(NULL, &md->root, VARSIZE(md)));
		details = fintx_jsonb_from_text(buf.data);
		fintx_audit_record(TextDatumGetCString(args[5]), "account.opened", "account", code, details);
		fintx_outbox_record("account", code, "account.opened", details, fintx_jsonb_from_text("{}"),
							TextDatumGetCString(args[5]));
	}
	fintx_authz_flush();
	SPI_finish();
	PG_RETURN_INT64(id);
}

/*
 * fintx.close_account(code) → void
 * Closes an account with a zero balance and no open holds; emits 22023 for an
 * unknown account and 55000 otherwise.
 */
Datum
fintx_close_account(PG_FUNCTION_ARGS)
{
	char	   *code;
	Datum		arg;
	Oid			types[1] = {TEXTOID};
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		id;
	int64		dp, cp, dpe, cpe;

	if (PG_ARGISNULL(0))
		NullArgument("code");
	code = CheckCode(NULL, text_to_cstring(PG_GETARG_TEXT_PP(0)));
	fintx_authz_begin();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");	/* LCOV_EXCL_LINE */
	arg = CStringGetTextDatum(code);
	fintx_keep_plan(&close_lock_plan,
					"SELECT id, closed_at IS NOT NULL, debits_posted, credits_posted,"
					"       debits_pending, credits_pending, currency"
					"  FROM fintx.accounts WHERE code = $1 FOR UPDATE",
					1, types);
	if (SPI_execute_plan(close_lock_plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "locking account failed");	/* LCOV_EXCL_LINE */
	fintx_authorize(FINTX_OP_ACCOUNT_CLOSE, code,
					SPI_processed == 1 ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7) : NULL,
					0, false, false);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("account \"%s\" does not exist", code)));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	id = SPI_getbinval(tup, desc, 1, &isnull);
	dp = GetInt64(tup, desc, 3);
	cp = GetInt64(tup, desc, 4);
	dpe = GetInt64(tup, desc, 5);
	cpe = GetInt64(tup, desc, 6);
	if (DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("account \"%s\" is already closed", code)));
	if (dpe != 0 || cpe != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("account \"%s\" has open holds", code),
				 errhint("Post or void its pending transfers first.")));
	if (dp != cp)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("account \"%s\" has a nonzero balance", code),
				 errdetail("The posted balance is %lld.", (long long) (cp - dp)),
				 errhint("Transfer the balance to another account first.")));
	types[0] = INT8OID;
	fintx_keep_plan(&close_plan,
					"UPDATE fintx.accounts SET closed_at = pg_catalog.now() WHERE id = $1", 1, types);
	if (SPI_execute_plan(close_plan, &id, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "closing account failed");	/* LCOV_EXCL_LINE */
	{
		StringInfoData buf;
		Jsonb	   *details;

		initStringInfo(&buf);
		appendStringInfo(&buf, "{\"account_id\": %lld, \"code\": ", (long long) DatumGetInt64(id));
		escape_json(&buf, code);
		appendStringInfoChar(&buf, '}');
		details = fintx_jsonb_from_text(buf.data);
		fintx_audit_record(fintx_principal(), "account.closed", "account", code, details);
		fintx_outbox_record("account", code, "account.closed", details, fintx_jsonb_from_text("{}"),
							fintx_principal());
	}
	fintx_authz_flush();
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * fintx.transfer(idempotency_key, from_account, to_account, amount, metadata,
 *				  pending, timeout) → transfer_result
 */
Datum
fintx_transfer(PG_FUNCTION_ARGS)
{
	LedgerRequest *req = palloc0(sizeof(LedgerRequest));

	if (PG_ARGISNULL(0))
		NullArgument("idempotency_key");
	if (PG_ARGISNULL(1))
		NullArgument("from_account");
	if (PG_ARGISNULL(2))
		NullArgument("to_account");
	if (PG_ARGISNULL(3))
		NullArgument("amount");
	if (PG_ARGISNULL(5))
		NullArgument("pending");
	req->op = LEDGER_TRANSFER;
	req->key = CheckKey(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	req->from_code = CheckCode("from_account", text_to_cstring(PG_GETARG_TEXT_PP(1)));
	req->to_code = CheckCode("to_account", text_to_cstring(PG_GETARG_TEXT_PP(2)));
	req->amount = CheckAmount(PG_GETARG_INT64(3));
	req->metadata = CheckMetadata(PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4));
	req->pending = PG_GETARG_BOOL(5);
	req->timeout = CheckTimeout(PG_ARGISNULL(6) ? NULL : PG_GETARG_INTERVAL_P(6), req->pending);
	if (strcmp(req->from_code, req->to_code) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot transfer from account \"%s\" to itself", req->from_code)));

	fintx_authz_begin();
	fintx_execute(fintx_principal(), &req, 1);
	PG_RETURN_DATUM(fintx_result_datum(fcinfo, req));
}

/* Shared body of post_pending and void_pending. */
static Datum
ResolveHold(FunctionCallInfo fcinfo, LedgerOp op)
{
	LedgerRequest *req = palloc0(sizeof(LedgerRequest));

	if (PG_ARGISNULL(0))
		NullArgument("idempotency_key");
	if (PG_ARGISNULL(1))
		NullArgument("transfer_id");
	req->op = op;
	req->key = CheckKey(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	req->hold_id = PG_GETARG_INT64(1);
	if (op == LEDGER_POST && PG_NARGS() > 2 && !PG_ARGISNULL(2))
	{
		req->amount = CheckAmount(PG_GETARG_INT64(2));
		req->amount_given = true;
	}
	fintx_authz_begin();
	fintx_execute(fintx_principal(), &req, 1);
	PG_RETURN_DATUM(fintx_result_datum(fcinfo, req));
}

/* fintx.post_pending(idempotency_key, transfer_id, amount) → transfer_result */
Datum
fintx_post_pending(PG_FUNCTION_ARGS)
{
	return ResolveHold(fcinfo, LEDGER_POST);
}

/* fintx.void_pending(idempotency_key, transfer_id) → transfer_result */
Datum
fintx_void_pending(PG_FUNCTION_ARGS)
{
	return ResolveHold(fcinfo, LEDGER_VOID);
}

/* Emits 22023 for an invalid field of a batch request. */
static void
BadField(const char *field, const char *expected)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("field \"%s\" must be %s", field, expected)));
}

/* Returns a JSON string value as a C string, or emits 22023. */
static char *
JsonString(JsonbValue *v, const char *field)
{
	if (v->type != jbvString)
		BadField(field, "a string");
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* Converts a JSON amount (integral number, or string of digits) to int64. */
static int64
JsonAmount(JsonbValue *v)
{
	if (v->type == jbvNumeric)
	{
		Datum		num = NumericGetDatum(v->val.numeric);
		Datum		trunc = DirectFunctionCall2(numeric_trunc, num, Int32GetDatum(0));

		if (!DatumGetBool(DirectFunctionCall2(numeric_eq, num, trunc)))
			BadField("amount", "an integer number of minor units");
		return DatumGetInt64(DirectFunctionCall1(numeric_int8, num));
	}
	if (v->type == jbvString)
	{
		char	   *s = pnstrdup(v->val.string.val, v->val.string.len);
		int			i = (s[0] == '-') ? 1 : 0;

		if (s[i] == '\0')
			BadField("amount", "an integer number of minor units");
		for (; s[i]; i++)
			if (s[i] < '0' || s[i] > '9')
				BadField("amount", "an integer number of minor units");
		return pg_strtoint64(s);
	}
	BadField("amount", "an integer number of minor units");
	return 0;					/* LCOV_EXCL_LINE: keep compiler quiet */
}

/* Parses one element of a transfer_batch array into a request. */
static LedgerRequest *
ParseBatchRequest(JsonbValue *elem, int index)
{
	LedgerRequest *req = palloc0(sizeof(LedgerRequest));
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		have_amount = false;

	if (elem->type != jbvBinary || !JsonContainerIsObject(elem->val.binary.data))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("each transfer request must be a JSON object")));
	req->op = LEDGER_TRANSFER;
	req->index = index;
	it = JsonbIteratorInit(elem->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *field;

		if (tok != WJB_KEY)
			continue;
		field = pnstrdup(v.val.string.val, v.val.string.len);
		tok = JsonbIteratorNext(&it, &v, true);
		if (strcmp(field, "idempotency_key") == 0)
			req->key = CheckKey(JsonString(&v, field));
		else if (strcmp(field, "from_account") == 0)
			req->from_code = CheckCode("from_account", JsonString(&v, field));
		else if (strcmp(field, "to_account") == 0)
			req->to_code = CheckCode("to_account", JsonString(&v, field));
		else if (strcmp(field, "amount") == 0)
		{
			req->amount = CheckAmount(JsonAmount(&v));
			have_amount = true;
		}
		else if (strcmp(field, "metadata") == 0)
		{
			if (v.type == jbvNull)
				req->metadata = NULL;
			else if (v.type == jbvBinary && JsonContainerIsObject(v.val.binary.data))
				req->metadata = CheckMetadata(JsonbValueToJsonb(&v));
			else
				BadField("metadata", "a JSON object");
		}
		else if (strcmp(field, "pending") == 0)
		{
			if (v.type != jbvBool)
				BadField("pending", "a boolean");
			req->pending = v.val.boolean;
		}
		else if (strcmp(field, "timeout") == 0)
		{
			if (v.type != jbvNull)
			{
				/*
				 * Read as IntervalStyle postgres says, whatever the session's:
				 * under sql_standard a leading "-" applies to every field, and
				 * a retry of the same JSON would be another request.
				 */
				int			style = IntervalStyle;
				const char *text = JsonString(&v, field);

				IntervalStyle = INTSTYLE_POSTGRES;
				PG_TRY();
				{
					req->timeout = DatumGetIntervalP(DirectFunctionCall3(interval_in, CStringGetDatum(text),
																		 ObjectIdGetDatum(InvalidOid),
																		 Int32GetDatum(-1)));
				}
				PG_FINALLY();
				{
					IntervalStyle = style;
				}
				PG_END_TRY();
			}
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown field \"%s\" in transfer request", ClipForMessage(field, 64)),
					 errhint("Valid fields are idempotency_key, from_account, to_account, amount, metadata, pending and timeout.")));
	}
	if (req->key == NULL)
		NullArgument("idempotency_key");
	if (req->from_code == NULL)
		NullArgument("from_account");
	if (req->to_code == NULL)
		NullArgument("to_account");
	if (!have_amount)
		NullArgument("amount");
	if (req->metadata == NULL)
		req->metadata = EmptyObject();
	req->timeout = CheckTimeout(req->timeout, req->pending);
	if (strcmp(req->from_code, req->to_code) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot transfer from account \"%s\" to itself", req->from_code)));
	return req;
}

/*
 * The bytes a service signs for transfer_signed / transfer_batch_signed
 * (docs/authorization.md): a domain tag, the service, the database, whether
 * it is a batch, the number of requests, then each request's idempotency key
 * and fingerprint (docs/idempotency.md).
 */
static void
SigningMessage(StringInfo buf, const char *service, LedgerRequest **reqs, int n, bool batch)
{
	uint8		b = batch ? 1 : 0;

	appendBinaryStringInfo(buf, "fintx.signed-request.v1", 23);
	fintx_put_string(buf, 's', service);
	fintx_put_string(buf, 'd', get_database_name(MyDatabaseId));
	fintx_put_field(buf, 'b', &b, 1);
	fintx_put_int64(buf, 'n', n);
	for (int i = 0; i < n; i++)
	{
		fintx_fingerprint(reqs[i]);
		fintx_put_string(buf, 'k', reqs[i]->key);
		fintx_put_field(buf, 'h', reqs[i]->fingerprint, FINTX_FINGERPRINT_LEN);
	}
}

/* Parses requests: a JSON array (batch) or a single JSON object. */
static LedgerRequest **
ParseRequests(Jsonb *jb, bool batch, int *n)
{
	LedgerRequest **parsed;

	if (!batch)
	{
		JsonbValue	root;

		if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("request must be a JSON object")));
		root.type = jbvBinary;
		root.val.binary.data = &jb->root;
		root.val.binary.len = VARSIZE(jb) - VARHDRSZ;
		parsed = palloc(sizeof(LedgerRequest *));
		parsed[0] = ParseBatchRequest(&root, 0);
		*n = 1;
		return parsed;
	}
	if (!JB_ROOT_IS_ARRAY(jb) || JB_ROOT_IS_SCALAR(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("requests must be a JSON array of transfer requests")));
	*n = JB_ROOT_COUNT(jb);
	if (*n > FINTX_MAX_BATCH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("too many transfer requests in one batch"),
				 errdetail("The batch has %d requests; the limit is %d.", *n, FINTX_MAX_BATCH)));
	parsed = palloc(sizeof(LedgerRequest *) * (*n + 1));
	for (int i = 0; i < *n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		fintx_batch_position = i;
		parsed[i] = ParseBatchRequest(getIthJsonbValueFromContainer(&jb->root, i), i);
	}
	fintx_batch_position = -1;
	return parsed;
}

/*
 * Verifies a signed request with the caller's registered key; emits 42501
 * (recorded as a denial) if the caller has no key or the signature fails.
 */
static void
VerifySignature(FintxCaller *c, LedgerRequest **reqs, int n, bool batch, bytea *sig, StringInfo msg)
{
	const char *first = reqs[0]->from_code;

	if (c->service == NULL)
		fintx_authz_deny(FINTX_OP_TRANSFER, first, NULL, reqs[0]->amount, true,
						 psprintf("role \"%s\" is not a registered fintx service; only services sign requests",
								  c->role_name), "signed request");
	if (!c->has_key)
		fintx_authz_deny(FINTX_OP_TRANSFER, first, NULL, reqs[0]->amount, true,
						 psprintf("service \"%s\" has no public key registered", c->service),
						 "signed request");
	SigningMessage(msg, c->service, reqs, n, batch);
	if (!fintx_ed25519_verify(c->public_key, (uint8 *) msg->data, msg->len, (uint8 *) VARDATA_ANY(sig)))
		fintx_authz_deny(FINTX_OP_TRANSFER, first, NULL, reqs[0]->amount, true,
						 psprintf("the signature does not verify with the public key registered for service \"%s\"",
								  c->service), "Ed25519 request signature");
}

/* Stores a signed request with its signature once it has produced transfers. */
static void
StoreSignedRequest(FintxCaller *c, LedgerRequest **reqs, int n, Jsonb *request, bytea *sig,
				   StringInfo msg)
{
	static SPIPlanPtr plan = NULL;
	Datum	   *ids = palloc(sizeof(Datum) * n);
	bool		fresh = false;
	Datum		args[6];
	Oid			types[6] = {TEXTOID, BYTEAOID, JSONBOID, BYTEAOID, BYTEAOID, INT8ARRAYOID};
	bytea	   *key = palloc(VARHDRSZ + 32);
	bytea	   *message = palloc(VARHDRSZ + msg->len);

	for (int i = 0; i < n; i++)
	{
		ids[i] = Int64GetDatum(reqs[i]->transfer_id);
		fresh |= !reqs[i]->replayed;
	}
	if (!fresh)
		return;					/* a replay: the original was stored with its first use */
	SET_VARSIZE(key, VARHDRSZ + 32);
	memcpy(VARDATA(key), c->public_key, 32);
	SET_VARSIZE(message, VARHDRSZ + msg->len);
	memcpy(VARDATA(message), msg->data, msg->len);
	args[0] = CStringGetTextDatum(c->service);
	args[1] = PointerGetDatum(key);
	args[2] = PointerGetDatum(request);
	args[3] = PointerGetDatum(message);
	args[4] = PointerGetDatum(sig);
	args[5] = MakeInt8Array(ids, n);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");	/* LCOV_EXCL_LINE */
	fintx_keep_plan(&plan,
					"INSERT INTO fintx.signed_requests (service, public_key, request, message, signature, transfer_ids)"
					" VALUES ($1, $2, $3, $4, $5, $6)",
					6, types);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "storing the signed request failed");	/* LCOV_EXCL_LINE */
	SPI_finish();
}

/*
 * Shared body of transfer_batch, transfer_signed and transfer_batch_signed:
 * parses, authorizes (and verifies the signature, if sig is given) and
 * applies the requests, with the batch index in the error context.
 */
static LedgerRequest **
RunRequests(Jsonb *jb, bool batch, bytea *sig, int *n)
{
	LedgerRequest **reqs;
	ErrorContextCallback errcb;

	/* no PG_TRY needed: error recovery resets error_context_stack */
	fintx_batch_position = -1;
	errcb.callback = BatchErrorContext;
	errcb.arg = NULL;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	reqs = ParseRequests(jb, batch, n);
	for (int i = 0; i < *n; i++)
		reqs[i]->batched = batch;
	if (*n > 0)
	{
		FintxCaller *c = fintx_authz_begin();
		StringInfoData msg;

		PG_TRY();
		{
			/*
			 * a batch waits its turn (fintx.max_active_batches, src/gate.c);
			 * the turn is given back below also when the wait is cancelled
			 */
			fintx_gate_enter(batch);
			if (sig)
			{
				initStringInfo(&msg);
				VerifySignature(c, reqs, *n, batch, sig, &msg);
			}
			fintx_execute(fintx_principal(), reqs, *n);
			if (sig)
				StoreSignedRequest(c, reqs, *n, jb, sig, &msg);
		}
		PG_FINALLY();
		{
			fintx_gate_leave();
		}
		PG_END_TRY();
	}
	fintx_batch_position = -1;
	error_context_stack = errcb.previous;
	return reqs;
}

/* Checks the signature argument: 64 bytes of Ed25519. */
static bytea *
SignatureArg(FunctionCallInfo fcinfo)
{
	bytea	   *sig;

	if (PG_ARGISNULL(1))
		NullArgument("signature");
	sig = PG_GETARG_BYTEA_PP(1);
	if (VARSIZE_ANY_EXHDR(sig) != 64)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("signature must be 64 bytes (Ed25519)"),
				 errdetail("The signature given is %d bytes long.", (int) VARSIZE_ANY_EXHDR(sig))));
	return sig;
}

/* Returns the results of a batch as a set, in request order. */
static Datum
ReturnSet(FunctionCallInfo fcinfo, Jsonb *jb, bytea *sig)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LedgerRequest **reqs;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	reqs = RunRequests(jb, true, sig, &n);
	if (sig && n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a signed batch must hold at least one request")));
	for (int i = 0; i < n; i++)
	{
		Datum		values[7];
		bool		nulls[7];

		fintx_result_values(reqs[i], values, nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_NULL();
}

/*
 * fintx.transfer_batch(requests jsonb) → SETOF transfer_result
 * Applies an array of transfer requests atomically, each with its own key;
 * results come back in request order.
 */
Datum
fintx_transfer_batch(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		NullArgument("requests");
	return ReturnSet(fcinfo, PG_GETARG_JSONB_P(0), NULL);
}

/*
 * fintx.transfer_batch_signed(requests jsonb, signature bytea) → SETOF transfer_result
 * As transfer_batch, signed as a whole by the calling service's Ed25519 key.
 */
Datum
fintx_transfer_batch_signed(PG_FUNCTION_ARGS)
{
	bytea	   *sig;

	if (PG_ARGISNULL(0))
		NullArgument("requests");
	sig = SignatureArg(fcinfo);
	return ReturnSet(fcinfo, PG_GETARG_JSONB_P(0), sig);
}

/*
 * fintx.transfer_signed(request jsonb, signature bytea) → transfer_result
 * One transfer request (the fields of a transfer_batch element), signed by
 * the calling service's Ed25519 key; the signature is stored with it.
 */
Datum
fintx_transfer_signed(PG_FUNCTION_ARGS)
{
	bytea	   *sig;
	LedgerRequest **reqs;
	int			n;

	if (PG_ARGISNULL(0))
		NullArgument("request");
	sig = SignatureArg(fcinfo);
	reqs = RunRequests(PG_GETARG_JSONB_P(0), false, sig, &n);
	PG_RETURN_DATUM(fintx_result_datum(fcinfo, reqs[0]));
}

/*
 * fintx.signing_message(service, requests) → bytea
 * The bytes service must sign for transfer_signed (requests a JSON object)
 * or transfer_batch_signed (a JSON array) in this database.
 */
Datum
fintx_signing_message(PG_FUNCTION_ARGS)
{
	Jsonb	   *jb;
	bool		batch;
	LedgerRequest **reqs;
	int			n;
	StringInfoData msg;
	bytea	   *out;

	if (PG_ARGISNULL(0))
		NullArgument("service");
	if (PG_ARGISNULL(1))
		NullArgument("requests");
	jb = PG_GETARG_JSONB_P(1);
	batch = JB_ROOT_IS_ARRAY(jb) && !JB_ROOT_IS_SCALAR(jb);
	reqs = ParseRequests(jb, batch, &n);
	initStringInfo(&msg);
	SigningMessage(&msg, text_to_cstring(PG_GETARG_TEXT_PP(0)), reqs, n, batch);
	out = palloc(VARHDRSZ + msg.len);
	SET_VARSIZE(out, VARHDRSZ + msg.len);
	memcpy(VARDATA(out), msg.data, msg.len);
	PG_RETURN_BYTEA_P(out);
}

/* A new expiry request for hold hold_id (the i-th of its call), in memory that outlives SPI. */
static LedgerRequest *
ExpireRequest(int64 hold_id, int i)
{
	LedgerRequest *r = SPI_palloc(sizeof(LedgerRequest));

	memset(r, 0, sizeof(LedgerRequest));
	r->op = LEDGER_EXPIRE;
	r->index = i;
	r->hold_id = hold_id;
	r->key = SPI_palloc(32);
	snprintf(r->key, 32, "expire:%lld", (long long) hold_id);
	return r;
}

/*
 * The batch below skips holds whose accounts another transaction has locked,
 * so a hold on an account that is locked at every pass (one that takes
 * transfer after transfer) would never be released. One hold overdue by
 * FINTX_OVERDUE_MS is released first, waiting for its accounts at most
 * FINTX_OVERDUE_WAIT_MS: queued behind the transactions that hold them, the
 * wait ends as they commit. When the wait runs out (or ends in a deadlock)
 * it gives up quietly, its subtransaction releasing every lock it took, and
 * the next call tries the next overdue hold (round robin, so one hold that
 * stays blocked does not keep the others waiting). Not under REPEATABLE READ
 * or SERIALIZABLE, where a row changed after the wait fails with 40001: there
 * the batch alone runs. Returns 1 if it released a hold.
 */
#define FINTX_OVERDUE_MS		1000
#define FINTX_OVERDUE_WAIT_MS	"200"
static int64 overdue_after = 0;	/* the overdue hold tried last */

/* fintx_subtransaction step of ExpireOverdueHold: *arg = 1 if it released a hold. */
static void
ExpireOverdueStep(void *arg)
{
	static SPIPlanPtr overdue_plan = NULL;
	Oid			types[2] = {TIMESTAMPTZOID, INT8OID};
	Datum		args[2];
	int			nest = NewGUCNestLevel();
	LedgerRequest *req = NULL;

	(void) set_config_option("lock_timeout", FINTX_OVERDUE_WAIT_MS, PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");	/* LCOV_EXCL_LINE */
	/* only the hold is locked here (skipping one a resolver holds): the ledger waits for the accounts */
	fintx_keep_plan(&overdue_plan,
					"SELECT h.transfer_id FROM fintx.pending_holds h"
					" WHERE h.timeout_at OPERATOR(pg_catalog.<=) $1"
					" ORDER BY h.transfer_id OPERATOR(pg_catalog.<=) $2, h.transfer_id LIMIT 1"
					" FOR UPDATE OF h SKIP LOCKED",
					2, types);
	args[0] = TimestampTzGetDatum(TimestampTzPlusMilliseconds(GetCurrentTimestamp(), -FINTX_OVERDUE_MS));
	/* the next overdue hold after the one tried last, else the first (round robin) */
	args[1] = Int64GetDatum(overdue_after);
	if (SPI_execute_plan(overdue_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "finding overdue holds failed");	/* LCOV_EXCL_LINE */
	if (SPI_processed == 1)
		req = ExpireRequest(GetInt64(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), 0);
	SPI_finish();
	if (req != NULL)
	{
		overdue_after = req->hold_id;
		fintx_authz_system();
		fintx_execute(FINTX_SYSTEM_PRINCIPAL, &req, 1);
		*(int *) arg = 1;
	}
	AtEOXact_GUC(true, nest);
}

static int
ExpireOverdueHold(void)
{
	int			released = 0;
	ErrorData  *edata;

	if (IsolationUsesXactSnapshot())
		return 0;
	/* the subtransaction's rollback releases every lock it took, the hold's too */
	edata = fintx_subtransaction(ExpireOverdueStep, &released);
	if (edata == NULL)
		return released;
	fintx_batch_position = -1;
	if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE && edata->sqlerrcode != ERRCODE_T_R_DEADLOCK_DETECTED)
		ReThrowError(edata);
	FreeErrorData(edata);
	return 0;
}

/*
 * Releases up to max_holds holds whose timeout has passed, each as an
 * 'expired' transfer under the system principal: first one hold overdue
 * by a second, waiting a little for its accounts (ExpireOverdueHold), then
 * a batch of the others; holds locked by a
 * concurrent resolver, or whose accounts another transaction has locked,
 * are skipped by the batch (a later pass releases them). Returns the number
 * released.
 */
int
fintx_expire_holds(int max_holds)
{
	Datum		args[2];
	Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
	LedgerRequest **reqs;
	int			n;
	int			overdue = ExpireOverdueHold();

	if (overdue == max_holds)
		return overdue;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");	/* LCOV_EXCL_LINE */
	args[0] = TimestampTzGetDatum(GetCurrentTimestamp());
	args[1] = Int32GetDatum(max_holds - overdue);
	/*
	 * The holds, then their accounts, are locked here, skipping locked ones:
	 * a session that keeps an account row locked must not stop the worker,
	 * which seals the audit log and sequences the outbox between these
	 * passes; the ledger then finds those rows already ours. SKIP LOCKED
	 * still waits when it follows an account row's update chain to a version
	 * another transaction has locked, so the accounts are locked in id order
	 * after the holds, the ledger's order: the wait then cannot close a
	 * cycle with other calls. (Locking them in the join's order, by hold,
	 * did: a single call failed with 40P01 in a stress test.) Only holds
	 * with both accounts locked are released.
	 */
	fintx_keep_plan(&expired_plan,
					"WITH h AS (SELECT h.transfer_id, t.from_account, t.to_account FROM fintx.pending_holds h"
					"             JOIN fintx.transfers t ON t.id OPERATOR(pg_catalog.=) h.transfer_id"
					"            WHERE h.timeout_at OPERATOR(pg_catalog.<=) $1 ORDER BY h.transfer_id LIMIT $2"
					"              FOR UPDATE OF h SKIP LOCKED),"
					"     a AS (SELECT a.id FROM fintx.accounts a"
					"            WHERE a.id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT from_account FROM h UNION SELECT to_account FROM h))"
					"            ORDER BY a.id FOR UPDATE OF a SKIP LOCKED)"
					" SELECT h.transfer_id FROM h"
					"  WHERE h.from_account OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT id FROM a))"
					"    AND h.to_account OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT id FROM a))"
					"  ORDER BY h.transfer_id",
					2, types);
	if (SPI_execute_plan(expired_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "finding expired holds failed");	/* LCOV_EXCL_LINE */
	n = (int) SPI_processed;
	reqs = SPI_palloc(sizeof(LedgerRequest *) * (n + 1));
	for (int i = 0; i < n; i++)
		reqs[i] = ExpireRequest(GetInt64(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1), i);
	SPI_finish();
	fintx_authz_system();
	if (n > 0)
		fintx_execute(FINTX_SYSTEM_PRINCIPAL, reqs, n);
	return overdue + n;
}

/* fintx.expire_pending(max_holds) → integer: releases expired holds now. */
Datum
fintx_expire_pending(PG_FUNCTION_ARGS)
{
	int32		max_holds;

	if (PG_ARGISNULL(0))
		NullArgument("max_holds");
	max_holds = PG_GETARG_INT32(0);
	if (max_holds <= 0 || max_holds > FINTX_MAX_BATCH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_holds must be between 1 and %d", FINTX_MAX_BATCH)));
	/* an administrator's call is logged (not the worker's passes); anyone else is refused */
	if (!fintx_is_worker)
		fintx_authz_require(FINTX_OP_ADMIN, "expire_pending");
	PG_RETURN_INT32(fintx_expire_holds(max_holds));
}
