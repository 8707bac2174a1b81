/*-------------------------------------------------------------------------
 * idempotency.c
 *	  The idempotency journal: request fingerprints, claiming keys and
 *	  replaying stored results.
 *
 * A request's key is claimed by inserting (principal, key) into
 * fintx.idempotency_keys with ON CONFLICT DO NOTHING: a concurrent session
 * holding the same key makes us wait for its transaction; if it commits we
 * see its row and replay the stored result, if it aborts our insert wins.
 * Keys are inserted in one global order (bytewise) so that two batches that
 * share keys cannot deadlock on them.
 *-------------------------------------------------------------------------
 */
#include "fintx.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "port/pg_bswap.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(fintx_request_fingerprint);

static SPIPlanPtr replay_plan = NULL;

/*
 * Computes req->fingerprint: SHA-256 over the canonical encoding described in
 * docs/idempotency.md. The idempotency key itself is not part of it.
 */
void
fintx_fingerprint(LedgerRequest *req)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, "fintx.request.v1", 16);
	switch (req->op)
	{
		case LEDGER_TRANSFER:
			{
				char	   *md = JsonbToCString(NULL, &req->metadata->root,
												VARSIZE(req->metadata));
				uint8		pending = req->pending ? 1 : 0;

				fintx_put_string(&buf, 'o', "transfer");
				fintx_put_string(&buf, 'f', req->from_code);
				fintx_put_string(&buf, 't', req->to_code);
				fintx_put_int64(&buf, 'a', req->amount);
				fintx_put_string(&buf, 'm', md);
				fintx_put_field(&buf, 'p', &pending, 1);
				if (req->timeout)
				{
					uint32		months = pg_hton32((uint32) req->timeout->month);
					uint32		days = pg_hton32((uint32) req->timeout->day);
					uint64		usec = pg_hton64((uint64) req->timeout->time);
					char		iv[16];

					memcpy(iv, &months, 4);
					memcpy(iv + 4, &days, 4);
					memcpy(iv + 8, &usec, 8);
					fintx_put_field(&buf, 'x', iv, 16);
				}
				else
					fintx_put_field(&buf, 'x', NULL, -1);
				pfree(md);
				break;
			}
		case LEDGER_POST:
			fintx_put_string(&buf, 'o', "post");
			fintx_put_int64(&buf, 'h', req->hold_id);
			if (req->amount_given)
				fintx_put_int64(&buf, 'a', req->amount);
			else
				fintx_put_field(&buf, 'a', NULL, -1);
			break;
		case LEDGER_VOID:
			fintx_put_string(&buf, 'o', "void");
			fintx_put_int64(&buf, 'h', req->hold_id);
			break;
		case LEDGER_EXPIRE:
			fintx_put_string(&buf, 'o', "expire");
			fintx_put_int64(&buf, 'h', req->hold_id);
			break;
	}
	fintx_sha256((unsigned char *) buf.data, buf.len, req->fingerprint);
	pfree(buf.data);
}

/* qsort comparator: by key bytewise, then by batch position. */
static int
CompareByKey(const void *a, const void *b)
{
	const LedgerRequest *ra = *(LedgerRequest *const *) a;
	const LedgerRequest *rb = *(LedgerRequest *const *) b;
	int			c = strcmp(ra->key, rb->key);

	if (c != 0)
		return c;
	return (ra->index > rb->index) - (ra->index < rb->index);
}

/* Raises the 23505 error for a key reused with a different request. */
static void
KeyReused(const LedgerRequest *req)
{
	const char *key = req->key;

	fintx_batch_position = req->index;	/* named in a batch's error context */
	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg("idempotency key \"%s\" was already used for a different request", key),
			 errdetail("Key \"%s\" identifies an earlier request whose fingerprint differs from this one.", key),
			 errhint("Use a new idempotency key for a new request, or resend the original request unchanged.")));
}

/*
 * Sorts reqs by key (in place) and links repeated keys within the batch to
 * their first occurrence; emits 23505 if a repeated key carries a different
 * request. Returns true if any duplicate was found.
 */
bool
fintx_journal_dedup(LedgerRequest **reqs, int nreqs)
{
	bool		found = false;

	qsort(reqs, nreqs, sizeof(LedgerRequest *), CompareByKey);
	for (int i = 1; i < nreqs; i++)
	{
		LedgerRequest *prev = reqs[i - 1];
		LedgerRequest *cur = reqs[i];

		if (strcmp(prev->key, cur->key) != 0)
			continue;
		if (memcmp(prev->fingerprint, cur->fingerprint, FINTX_FINGERPRINT_LEN) != 0)
			KeyReused(cur);
		cur->dup_of = prev->dup_of ? prev->dup_of : prev;
		found = true;
	}
	return found;
}

/* Finds the request with the given key among reqs sorted by key (first occurrence). */
static LedgerRequest *
FindByKey(LedgerRequest **reqs, int nreqs, const char *key)
{
	int			lo = 0,
				hi = nreqs - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int			c = strcmp(reqs[mid]->key, key);

		if (c == 0)
			return reqs[mid]->dup_of ? reqs[mid]->dup_of : reqs[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return NULL;				/* LCOV_EXCL_LINE: the journal returns only keys of the request */
}

/* Maps a stored status to its static name. */
static const char *
StatusName(const char *s)
{
	static const char *const names[] = {"posted", "pending", "voided", "expired", "awaiting_approval"};

	for (size_t i = 0; i < lengthof(names); i++)
		if (strcmp(s, names[i]) == 0)
			return names[i];
	elog(ERROR, "unknown transfer status \"%s\"", s);	/* LCOV_EXCL_LINE */
	return NULL;				/* LCOV_EXCL_LINE: keep compiler quiet */
}

/* Columns of fintx.idempotency_keys, as direct.c checks them. */
static const FintxColumn journal_columns[] = {
	{"principal", TEXTOID},
	{"idempotency_key", TEXTOID},
	{"fingerprint", BYTEAOID},
	{"transfer_id", INT8OID},
	{"created_at", TIMESTAMPTZOID}
};

/*
 * Claims the keys of reqs (sorted and deduplicated by fintx_journal_dedup,
 * SPI connected, in the direct write group estate) for principal. Newly claimed requests get claimed = true and
 * a fresh transfer_id; requests whose key already exists get the stored result
 * and replayed = true, or 23505 if the stored fingerprint differs.
 */
void
fintx_journal_claim(EState *estate, const char *principal, LedgerRequest **reqs, int nreqs)
{
	Datum	   *keys = palloc(sizeof(Datum) * nreqs);
	int			nkeys = 0;
	int			nclaimed = 0;
	Datum		args[1];
	Datum		v[lengthof(journal_columns)];
	bool		nulls[lengthof(journal_columns)];
	FintxTable	t;
	int			ret;

	/* keys in byte order (fintx_journal_dedup sorted them): concurrent batches never wait in a cycle */
	memset(nulls, 0, sizeof(nulls));
	v[0] = CStringGetTextDatum(principal);
	v[4] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	fintx_direct_open_speculative(&t, estate, "idempotency_keys", journal_columns,
								  lengthof(journal_columns));
	for (int i = 0; i < nreqs; i++)
	{
		bytea	   *fp;
		int64		id;

		if (reqs[i]->dup_of)
			continue;
		nkeys++;
		fp = palloc(VARHDRSZ + FINTX_FINGERPRINT_LEN);
		SET_VARSIZE(fp, VARHDRSZ + FINTX_FINGERPRINT_LEN);
		memcpy(VARDATA(fp), reqs[i]->fingerprint, FINTX_FINGERPRINT_LEN);
		id = fintx_direct_nextval("transfer_id_seq");
		v[1] = CStringGetTextDatum(reqs[i]->key);
		v[2] = PointerGetDatum(fp);
		v[3] = Int64GetDatum(id);
		fintx_batch_position = reqs[i]->index;	/* a 40001 on the key names its request */
		if (fintx_direct_insert_unless_exists(&t, v, nulls))
		{
			reqs[i]->claimed = true;
			reqs[i]->transfer_id = id;
			nclaimed++;
		}
	}
	fintx_batch_position = -1;
	fintx_direct_close(&t);
	args[0] = v[0];

	if (nclaimed == nkeys)
		return;

	/* Some keys exist already: fetch their stored results. */
	{
		Oid			rtypes[2] = {TEXTOID, TEXTARRAYOID};
		Datum		rargs[2];
		int			nold = 0;

		for (int i = 0; i < nreqs; i++)
			if (!reqs[i]->dup_of && !reqs[i]->claimed)
				keys[nold++] = CStringGetTextDatum(reqs[i]->key);
		rargs[0] = args[0];
		rargs[1] = PointerGetDatum(construct_array(keys, nold, TEXTOID, -1, false, TYPALIGN_INT));

		fintx_keep_plan(&replay_plan,
				 "SELECT j.idempotency_key, j.fingerprint, t.id, t.status, t.from_balance,"
				 "       t.to_balance, t.entry_hash, t.created_at, fa.code, ta.code"
				 "  FROM fintx.idempotency_keys j"
				 "  JOIN fintx.transfers t ON t.id = j.transfer_id"
				 "  JOIN fintx.accounts fa ON fa.id = t.from_account"
				 "  JOIN fintx.accounts ta ON ta.id = t.to_account"
				 " WHERE j.principal = $1 AND j.idempotency_key = ANY ($2)",
				 2, rtypes);
		ret = fintx_execute_indexed(replay_plan, rargs, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "reading idempotency journal failed: %s", SPI_result_code_string(ret));	/* LCOV_EXCL_LINE */

		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			char	   *key = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
			bytea	   *fp = DatumGetByteaPP(SPI_getbinval(tup, desc, 2, &isnull));
			LedgerRequest *req = FindByKey(reqs, nreqs, key);
			Datum		hash;

			if (req == NULL || req->claimed)
				elog(ERROR, "replayed idempotency key \"%s\" is not in the request", key);	/* LCOV_EXCL_LINE */
			if (VARSIZE_ANY_EXHDR(fp) != FINTX_FINGERPRINT_LEN ||
				memcmp(VARDATA_ANY(fp), req->fingerprint, FINTX_FINGERPRINT_LEN) != 0)
				KeyReused(req);
			req->replayed = true;
			req->transfer_id = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
			req->status = StatusName(SPI_getvalue(tup, desc, 4));
			req->from_balance = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
			req->to_balance = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
			hash = SPI_getbinval(tup, desc, 7, &isnull);
			req->entry_hash = isnull ? NULL : (bytea *) DatumGetPointer(SPI_datumTransfer(hash, false, -1));
			req->created_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 8, &isnull));
			/* a post or void names only the hold: its accounts decide which balances the caller sees */
			if (req->from_code == NULL)
				req->from_code = fintx_spi_copy_text(tup, desc, 9);
			if (req->to_code == NULL)
				req->to_code = fintx_spi_copy_text(tup, desc, 10);
		}

		/*
		 * Defensive: PostgreSQL itself raises 40001 when ON CONFLICT meets a
		 * row this snapshot cannot see, so this is not reached in practice.
		 */
		/* LCOV_EXCL_START */
		for (int i = 0; i < nreqs; i++)
			if (!reqs[i]->dup_of && !reqs[i]->claimed && !reqs[i]->replayed)
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access to idempotency key \"%s\"", reqs[i]->key),
						 errdetail("The key was claimed by a transaction this snapshot cannot see."),
						 errhint("Retry the request in a new transaction.")));
		/* LCOV_EXCL_STOP */
	}
}

/*
 * fintx.request_fingerprint(from, to, amount, metadata, pending, timeout) → bytea
 * Exposes the canonical fingerprint of a transfer request, so clients can
 * store it beside the key and check a replay is the same request.
 */
Datum
fintx_request_fingerprint(PG_FUNCTION_ARGS)
{
	LedgerRequest req;
	bytea	   *out;

	memset(&req, 0, sizeof(req));
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_account, to_account and amount must not be null")));
	req.op = LEDGER_TRANSFER;
	req.from_code = text_to_cstring(PG_GETARG_TEXT_PP(0));
	req.to_code = text_to_cstring(PG_GETARG_TEXT_PP(1));
	req.amount = PG_GETARG_INT64(2);
	req.metadata = PG_ARGISNULL(3) ? DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")))
		: PG_GETARG_JSONB_P(3);
	req.pending = PG_ARGISNULL(4) ? false : PG_GETARG_BOOL(4);
	req.timeout = PG_ARGISNULL(5) ? NULL : PG_GETARG_INTERVAL_P(5);
	fintx_fingerprint(&req);

	out = palloc(VARHDRSZ + FINTX_FINGERPRINT_LEN);
	SET_VARSIZE(out, VARHDRSZ + FINTX_FINGERPRINT_LEN);
	memcpy(VARDATA(out), req.fingerprint, FINTX_FINGERPRINT_LEN);
	PG_RETURN_BYTEA_P(out);
}
