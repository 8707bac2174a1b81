/*-------------------------------------------------------------------------
 * audit.c
 *	  Audit entries: the canonical byte encoding, writing entries in the
 *	  caller's transaction, immutability triggers, auditing user tables.
 *
 * An entry's canonical bytes (docs/audit-format.md) are
 *	 "fintx.audit.v1" followed by tagged, length-prefixed fields:
 *	 'i' entry_id (8-byte big-endian), 't' recorded_at (8-byte big-endian
 *	 microseconds since 1970-01-01 UTC), 'a' actor, 's' session role,
 *	 'c' action, 'o' object type, 'k' object id, 'd' details (jsonb text).
 * entry_hash = SHA-256(0x00 || canonical bytes), the RFC 6962 leaf hash.
 *-------------------------------------------------------------------------
 */
#include "fintx.h"
#include "merkle.h"

#include "access/htup_details.h"
#include "access/transam.h"
#include "access/tupdesc.h"
#include "funcapi.h"
#include "parser/parse_coerce.h"
#include "utils/typcache.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "storage/lmgr.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

PG_FUNCTION_INFO_V1(fintx_refuse_change);
PG_FUNCTION_INFO_V1(fintx_audit_row);
PG_FUNCTION_INFO_V1(fintx_audit_table);
PG_FUNCTION_INFO_V1(fintx_append_only);

#define AUDIT_MAGIC "fintx.audit.v1"
/* microseconds between 1970-01-01 and 2000-01-01 */
#define UNIX_EPOCH_OFFSET_USEC INT64CONST(946684800000000)


/* Fills buf with the canonical bytes of an entry (see the file header). */
void
fintx_audit_canonical(StringInfo buf, const FintxAuditEntry *e)
{
	char	   *details = e->details_text ? (char *) e->details_text
		: JsonbToCString(NULL, &e->details->root, VARSIZE(e->details));

	resetStringInfo(buf);
	appendBinaryStringInfo(buf, AUDIT_MAGIC, strlen(AUDIT_MAGIC));
	fintx_put_int64(buf, 'i', e->entry_id);
	fintx_put_int64(buf, 't', e->recorded_at + UNIX_EPOCH_OFFSET_USEC);
	fintx_put_string(buf, 'a', e->actor);
	fintx_put_string(buf, 's', e->session_role);
	fintx_put_string(buf, 'c', e->action);
	fintx_put_string(buf, 'o', e->object_type);
	fintx_put_string(buf, 'k', e->object_id);
	fintx_put_string(buf, 'd', details);
	if (details != e->details_text)
		pfree(details);
}

/* Computes e->hash from the entry's canonical bytes. */
void
fintx_audit_hash(FintxAuditEntry *e)
{
	StringInfoData buf;

	initStringInfo(&buf);
	fintx_audit_canonical(&buf, e);
	merkle_leaf_hash((uint8 *) buf.data, buf.len, e->hash);
	pfree(buf.data);
}

/* Returns the next audit entry id. */
static int64
NextEntryId(void)
{
	return fintx_direct_nextval("audit_entry_id_seq");
}

/* Name of the session's login role, looked up once per session. */
const char *
fintx_session_role_name(void)
{
	static Oid	cached_id = InvalidOid;
	static char cached_name[NAMEDATALEN];

	if (cached_id != GetSessionUserId())
	{
		cached_id = GetSessionUserId();
		strlcpy(cached_name, GetUserNameFromId(cached_id, false), NAMEDATALEN);
	}
	return cached_name;
}

/* Fills the who/when fields and the id of a new entry. */
void
fintx_audit_init(FintxAuditEntry *e, const char *actor, const char *action,
				 const char *object_type, const char *object_id, Jsonb *details)
{
	fintx_audit_init_text(e, actor, action, object_type, object_id, details, NULL);
}

/*
 * fintx_audit_init for a caller that already has the details as jsonb
 * prints them (JsonbToCString), which spares printing them again for the
 * canonical bytes; details_text NULL: print them.
 */
void
fintx_audit_init_text(FintxAuditEntry *e, const char *actor, const char *action,
					  const char *object_type, const char *object_id, Jsonb *details,
					  const char *details_text)
{
	e->details_text = details_text;
	e->entry_id = NextEntryId();
	e->recorded_at = GetCurrentTransactionStartTimestamp();
	e->actor = actor;
	e->session_role = fintx_session_role_name();
	e->action = action;
	e->object_type = object_type;
	e->object_id = object_id;
	e->details = details;
	fintx_audit_hash(e);
}

/*
 * Reads an entry from columns first .. first + 7 of an SPI row: entry_id,
 * recorded_at, actor, session_role, action, object_type, object_id, details
 * (allocated in the current memory context).
 */
void
fintx_audit_entry_from_row(HeapTuple tup, TupleDesc desc, int first, FintxAuditEntry *e)
{
	bool		isnull;

	e->entry_id = DatumGetInt64(SPI_getbinval(tup, desc, first, &isnull));
	e->recorded_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, first + 1, &isnull));
	e->actor = TextDatumGetCString(SPI_getbinval(tup, desc, first + 2, &isnull));
	e->session_role = TextDatumGetCString(SPI_getbinval(tup, desc, first + 3, &isnull));
	e->action = TextDatumGetCString(SPI_getbinval(tup, desc, first + 4, &isnull));
	e->object_type = TextDatumGetCString(SPI_getbinval(tup, desc, first + 5, &isnull));
	e->object_id = TextDatumGetCString(SPI_getbinval(tup, desc, first + 6, &isnull));
	e->details = DatumGetJsonbP(SPI_getbinval(tup, desc, first + 7, &isnull));
	e->details_text = NULL;
}

/* bytea datum of a 32-byte hash. */
Datum
fintx_hash_datum(const uint8 *hash)
{
	bytea	   *b = palloc(VARHDRSZ + MERKLE_HASH_LEN);

	SET_VARSIZE(b, VARHDRSZ + MERKLE_HASH_LEN);
	memcpy(VARDATA(b), hash, MERKLE_HASH_LEN);
	return PointerGetDatum(b);
}

/* Columns of fintx.audit_entries, as direct.c checks them. */
static const FintxColumn entry_columns[] = {
	{"entry_id", INT8OID},
	{"txid", XID8OID},
	{"recorded_at", TIMESTAMPTZOID},
	{"actor", TEXTOID},
	{"session_role", TEXTOID},
	{"action", TEXTOID},
	{"object_type", TEXTOID},
	{"object_id", TEXTOID},
	{"details", JSONBOID},
	{"entry_hash", BYTEAOID},
	{"run_length", INT4OID}
};

/*
 * Inserts entries (all of one transaction) into fintx.audit_entries as part
 * of the direct write group estate.
 */
void
fintx_audit_write(EState *estate, FintxAuditEntry *entries, int n)
{
	Datum		txid = FullTransactionIdGetDatum(GetTopFullTransactionId());
	FintxTable	t;
	bool		nulls[lengthof(entry_columns)];

	memset(nulls, 0, sizeof(nulls));
	fintx_direct_open(&t, estate, "audit_entries", entry_columns, lengthof(entry_columns));
	for (int i = 0; i < n; i++)
	{
		FintxAuditEntry *e = &entries[i];
		Datum		v[lengthof(entry_columns)];

		v[0] = Int64GetDatum(e->entry_id);
		v[1] = txid;
		v[2] = TimestampTzGetDatum(e->recorded_at);
		v[3] = CStringGetTextDatum(e->actor);
		v[4] = CStringGetTextDatum(e->session_role);
		v[5] = CStringGetTextDatum(e->action);
		v[6] = CStringGetTextDatum(e->object_type);
		v[7] = CStringGetTextDatum(e->object_id);
		v[8] = JsonbPGetDatum(e->details);
		v[9] = fintx_hash_datum(e->hash);
		/*
		 * The first entry of each run of consecutive ids carries the run's
		 * length (sealing finds it by txid, the others by entry id). Every
		 * row of this call is inserted in the current subtransaction, so a
		 * run is visible, or not, as a whole.
		 */
		nulls[10] = i > 0 && e->entry_id == entries[i - 1].entry_id + 1;
		if (!nulls[10])
		{
			int			len = 1;

			while (i + len < n && entries[i + len].entry_id == e->entry_id + len)
				len++;
			v[10] = Int32GetDatum(len);
		}
		fintx_direct_insert(&t, v, nulls);
	}
	fintx_direct_close(&t);
}

/* Inserts entries (all of one transaction) into fintx.audit_entries now. */
void
fintx_audit_insert(FintxAuditEntry *entries, int n)
{
	EState	   *estate = fintx_direct_begin();

	fintx_audit_write(estate, entries, n);
	fintx_direct_end(estate);
}

/* Records one entry now (SPI must be connected). */
void
fintx_audit_record(const char *actor, const char *action, const char *object_type,
				   const char *object_id, Jsonb *details)
{
	FintxAuditEntry e;

	fintx_audit_init(&e, actor, action, object_type, object_id, details);
	fintx_audit_insert(&e, 1);
}

/* Parses JSON text built by fintx into jsonb. */
Jsonb *
fintx_jsonb_from_text(const char *text)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
}

/*
 * Trigger: refuses UPDATE, DELETE and TRUNCATE (audit tables and tables made
 * append-only with fintx.append_only()), for every role.
 */
Datum
fintx_refuse_change(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *op;
	char	   *msg;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "fintx_refuse_change: not called by trigger manager");
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		op = "UPDATE";
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		op = "DELETE";
	else if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		op = "TRUNCATE";
	else
		op = "this change";
	msg = psprintf("%s on table \"%s\" is not allowed", op, RelationGetRelationName(trigdata->tg_relation));
	/* a denial like any other: in the access log and the audit log, though the change aborts */
	fintx_denial_enqueue(GetUserNameFromId(GetOuterUserId(), false), fintx_session_role_name(), NULL, "sql", msg,
						 NULL, 0, false, psprintf("refused by fintx: %s", msg), "append-only table");
	fintx_raise_recorded(errmsg("%s", msg),
						 errdetail("The table is append-only: rows can be inserted, never changed or removed."));
	PG_RETURN_NULL();
}

/*
 * Whether to_jsonb() would call a cast to json for a value of type typoid, or
 * for a value inside it (an array element, an attribute of a composite, the
 * base type of a domain): it does for a type that is not built in and has
 * one (jsonb.c, jsonb_categorize_type). Anyone may create such a type (an
 * enum, a range) and then the cast, long after the table was audited.
 */
static bool
ReachesJsonCast(Oid typoid)
{
	Oid			base;
	Oid			elem;
	Oid			castfunc;

	check_stack_depth();
	base = getBaseType(typoid);
	elem = get_element_type(base);
	if (OidIsValid(elem))
		return ReachesJsonCast(elem);
	if (type_is_rowtype(base))
	{
		TupleDesc	td = lookup_rowtype_tupdesc(base, -1);
		bool		found = false;

		for (int i = 0; i < td->natts && !found; i++)
			if (!TupleDescAttr(td, i)->attisdropped)
				found = ReachesJsonCast(TupleDescAttr(td, i)->atttypid);
		ReleaseTupleDesc(td);
		return found;
	}
	if (base < FirstNormalObjectId)
		return false;
	return find_coercion_pathway(JSONOID, base, COERCION_EXPLICIT, &castfunc) == COERCION_PATH_FUNC &&
		OidIsValid(castfunc);
}

/*
 * Returns the row image of tuple as jsonb (SPI connected). A column whose
 * type reaches a cast to json (ReachesJsonCast) is imaged as its text output
 * instead: to_jsonb() would run that cast, code of the type's owner, as the
 * role that changed the row (a superuser, say), and the cast could write any
 * image it likes. Output functions of types are built in or a superuser's.
 */
static Datum
RowToJsonb(Relation rel, HeapTuple tuple)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum		row;
	Oid			types[1] = {rel->rd_rel->reltype};
	int			ret;
	bool		isnull;
	bool	   *as_text = palloc0(sizeof(bool) * desc->natts);
	bool		any = false;

	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped && ReachesJsonCast(TupleDescAttr(desc, i)->atttypid))
			as_text[i] = any = true;
	if (!any)
		row = heap_copy_tuple_as_datum(tuple, desc);
	else
	{
		TupleDesc	td = CreateTupleDescCopy(desc);
		Datum	   *values = palloc(sizeof(Datum) * desc->natts);
		bool	   *nulls = palloc(sizeof(bool) * desc->natts);

		heap_deform_tuple(tuple, desc, values, nulls);
		for (int i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (att->attisdropped)
				nulls[i] = true;
			else if (as_text[i])
			{
				Oid			out;
				bool		varlena;

				getTypeOutputInfo(att->atttypid, &out, &varlena);
				if (!nulls[i])
					values[i] = CStringGetTextDatum(OidOutputFunctionCall(out, values[i]));
				TupleDescInitEntry(td, i + 1, NameStr(att->attname), TEXTOID, -1, 0);
			}
		}
		td->tdtypeid = RECORDOID;	/* an anonymous row type of its own */
		td->tdtypmod = -1;
		td = BlessTupleDesc(td);
		row = heap_copy_tuple_as_datum(heap_form_tuple(td, values, nulls), td);
		types[0] = RECORDOID;
	}
	ret = SPI_execute_with_args("SELECT pg_catalog.to_jsonb($1)", 1, types, &row, NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not convert a row to jsonb");
	return SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull),
							 false, -1);
}

/*
 * Trigger (AFTER INSERT OR UPDATE OR DELETE, FOR EACH ROW) attached by
 * fintx.audit_table(): writes the old and new row images into the audit log
 * in the same transaction.
 */
Datum
fintx_audit_row(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	const char *action;
	StringInfoData buf;
	char	   *objid;
	Jsonb	   *details;
	HeapTuple	ret = NULL;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		(!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) && !TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event)))
		elog(ERROR, "fintx_audit_row: must be fired AFTER, FOR EACH ROW (or for TRUNCATE)");
	rel = trigdata->tg_relation;
	/*
	 * Maintenance commands (ANALYZE, VACUUM, REINDEX, CLUSTER, REFRESH
	 * MATERIALIZED VIEW) run the table owner's code as the owner while the
	 * session's role stays whoever started them: the entry would name the
	 * wrong actor. The API functions refuse these contexts the same way.
	 */
	if (InSecurityRestrictedOperation())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot change the audited table \"%s\" within a security-restricted operation",
						RelationGetRelationName(rel)),
				 errdetail("The audit log could not name the role that made the change.")));
	objid = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									   RelationGetRelationName(rel));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"table\": ");
	escape_json(&buf, objid);
	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		action = "table.truncated";
	else if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		action = "row.inserted";
		appendStringInfo(&buf, ", \"new\": %s",
						 JsonbToCString(NULL, &DatumGetJsonbP(RowToJsonb(rel, trigdata->tg_trigtuple))->root, -1));
		ret = trigdata->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		action = "row.updated";
		appendStringInfo(&buf, ", \"old\": %s, \"new\": %s",
						 JsonbToCString(NULL, &DatumGetJsonbP(RowToJsonb(rel, trigdata->tg_trigtuple))->root, -1),
						 JsonbToCString(NULL, &DatumGetJsonbP(RowToJsonb(rel, trigdata->tg_newtuple))->root, -1));
		ret = trigdata->tg_newtuple;
	}
	else
	{
		action = "row.deleted";
		appendStringInfo(&buf, ", \"old\": %s",
						 JsonbToCString(NULL, &DatumGetJsonbP(RowToJsonb(rel, trigdata->tg_trigtuple))->root, -1));
		ret = trigdata->tg_trigtuple;
	}
	appendStringInfoChar(&buf, '}');
	details = fintx_jsonb_from_text(buf.data);
	fintx_audit_record(fintx_principal(), action, "table", objid, details);
	SPI_finish();
	return PointerGetDatum(ret);
}

/* Emits 42501 unless the calling role owns the table (or is superuser). */
static void
CheckTableOwner(Oid relid)
{
	/* a superuser passes the owner check for any OID, existing or not */
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	if (!pg_class_ownercheck(relid, GetOuterUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of table %s", get_rel_name(relid))));
	/*
	 * fintx writes its own tables directly, without firing triggers: an
	 * audit trigger there would record nothing, and an append-only one would
	 * only break the few changes fintx makes through SQL (close_account).
	 * Their changes are in the audit log already.
	 */
	if (!creating_extension && get_rel_namespace(relid) == fintx_namespace_oid())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("\"%s\" is a table of fintx", get_rel_name(relid)),
				 errdetail("fintx writes its own tables without firing triggers; every change it makes is in the audit log already.")));
	if (get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("\"%s\" is a partitioned table", get_rel_name(relid)),
				 errdetail("A TRUNCATE of a partition does not fire the partitioned table's triggers, and rows would be logged under the partition's name."),
				 errhint("Call the function for each partition.")));
	if (get_rel_relkind(relid) != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", get_rel_name(relid))));
	/* a change through the parent of a child's row fires the child's triggers only */
	if (find_inheritance_children(relid, NoLock) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("\"%s\" has inheritance children", get_rel_name(relid)),
				 errdetail("Changes made through it to its children's rows would fire only the children's triggers."),
				 errhint("Call the function for each child table, and for the parent once it has none.")));
}

/*
 * Creates a row trigger and a TRUNCATE trigger named name on the table given
 * as the function's regclass argument, both executing function; the table's
 * name is quoted from the catalog. Emits 22023 for NULL, 42501 unless the
 * caller owns the table, 42710 if the triggers exist already.
 */
static void
AttachTriggers(FunctionCallInfo fcinfo, const char *sql_function, const char *name, const char *when,
			   const char *row_events, const char *function)
{
	Oid			relid;
	char	   *qname;

	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("tbl must not be null")));
	relid = PG_GETARG_OID(0);
	/* logged for administrators, refused to others (not within fintx's own installation script) */
	if (!creating_extension)
	{
		char	   *rel = get_rel_name(relid);
		char	   *nsp = rel ? get_namespace_name(get_rel_namespace(relid)) : NULL;

		fintx_authz_require(FINTX_OP_ADMIN,
							psprintf("%s(%s)", sql_function,
									 rel && nsp ? quote_qualified_identifier(nsp, rel) : "?"));
	}
	/*
	 * The lock CREATE TRIGGER takes, first: the table cannot change owner or
	 * be dropped between the check and the triggers.
	 */
	LockRelationOid(relid, ShareRowExclusiveLock);
	CheckTableOwner(relid);
	qname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute(psprintf("CREATE TRIGGER %s %s %s ON %s FOR EACH ROW EXECUTE FUNCTION %s",
							 name, when, row_events, qname, function), false, 0) != SPI_OK_UTILITY ||
		SPI_execute(psprintf("CREATE TRIGGER %s_truncate %s TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s",
							 name, when, qname, function), false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not create triggers on %s", qname);

	/*
	 * CREATE TRIGGER found the table by name, as the extension's owner: a
	 * schema renamed meanwhile could have pointed the name at a table the
	 * caller does not own. Both triggers must be on the table checked.
	 */
	{
		Oid			types[2] = {OIDOID, TEXTOID};
		Datum		args[2] = {ObjectIdGetDatum(relid), CStringGetTextDatum(name)};
		bool		isnull;

		if (SPI_execute_with_args("SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger"
								  " WHERE tgrelid = $1 AND tgname IN ($2, $2 || '_truncate')",
								  2, types, args, NULL, false, 1) != SPI_OK_SELECT ||
			DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) != 2)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the name %s no longer names the table checked", qname),
					 errdetail("It was renamed while its triggers were created; nothing was changed."),
					 errhint("Call the function again.")));
	}
	SPI_finish();
}

/*
 * fintx.audit_table(tbl regclass) → void
 * Attaches the triggers that write INSERT/UPDATE/DELETE row images and
 * TRUNCATE of tbl into the audit log.
 */
Datum
fintx_audit_table(PG_FUNCTION_ARGS)
{
	AttachTriggers(fcinfo, "audit_table", "fintx_audit", "AFTER", "INSERT OR UPDATE OR DELETE", "fintx.audit_row()");
	PG_RETURN_VOID();
}

/*
 * fintx.append_only(tbl regclass) → void
 * Makes tbl refuse UPDATE, DELETE and TRUNCATE for every role.
 */
Datum
fintx_append_only(PG_FUNCTION_ARGS)
{
	AttachTriggers(fcinfo, "append_only", "fintx_append_only", "BEFORE", "UPDATE OR DELETE", "fintx.refuse_change()");
	PG_RETURN_VOID();
}
