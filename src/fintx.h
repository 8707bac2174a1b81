/*-------------------------------------------------------------------------
 * fintx.h
 *	  Shared declarations of the fintx extension: error codes, GUCs, the
 *	  ledger request that every money-moving function is reduced to, and the
 *	  entry points each module offers the others.
 *-------------------------------------------------------------------------
 */
#ifndef FINTX_H
#define FINTX_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "nodes/execnodes.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"

/* Implementation-defined SQLSTATEs (class "FX"), documented in docs/errors.md. */
#define ERRCODE_FINTX_INSUFFICIENT_FUNDS	MAKE_SQLSTATE('F','X','0','0','1')
#define ERRCODE_FINTX_CREDIT_LIMIT			MAKE_SQLSTATE('F','X','0','0','2')

/* Input limits, documented in docs/ledger.md. */
#define FINTX_MAX_KEY_LEN		255
#define FINTX_MAX_CODE_LEN		64
#define FINTX_MAX_METADATA		65536
#define FINTX_MAX_BATCH			10000

#define FINTX_FINGERPRINT_LEN	32
#define FINTX_SYSTEM_PRINCIPAL	"pg_fintx"

/* GUCs (fintx.c) */
extern char *fintx_database;
extern int	fintx_expire_interval_ms;

/* What a request asks for. */
typedef enum LedgerOp
{
	LEDGER_TRANSFER,			/* direct or pending transfer */
	LEDGER_POST,				/* post_pending */
	LEDGER_VOID,				/* void_pending */
	LEDGER_EXPIRE				/* release an expired hold (system) */
} LedgerOp;

/* One account as locked for the duration of a request batch. */
typedef struct LedgerAccount
{
	int64		id;
	char	   *code;
	char		currency[4];
	bool		allow_negative;
	bool		allow_positive;
	bool		closed;
	bool		dirty;
	int64		debits_posted;
	int64		credits_posted;
	int64		debits_pending;
	int64		credits_pending;
	ItemPointerData tid;		/* the locked row version */
	HeapTuple	tuple;			/* its copy, the base of the update */
} LedgerAccount;

/* One hold referenced by a post/void/expire request. */
typedef struct LedgerHold
{
	int64		id;
	int64		from_id;
	int64		to_id;
	int64		amount;
	bool		has_timeout;
	TimestampTz timeout_at;
	bool		claimed;		/* row in fintx.pending_holds deleted by us */
	bool		used;			/* resolved earlier in this batch */
} LedgerHold;

/* A request, its idempotency state and, once executed, its result. */
typedef struct LedgerRequest
{
	LedgerOp	op;
	int			index;			/* position in the caller's batch */
	char	   *key;			/* idempotency key (NUL-terminated) */
	char	   *from_code;		/* LEDGER_TRANSFER */
	char	   *to_code;
	int64		amount;
	bool		amount_given;	/* false: post the full held amount */
	Jsonb	   *metadata;
	bool		pending;
	Interval   *timeout;		/* NULL: no expiry */
	int64		hold_id;		/* LEDGER_POST/VOID/EXPIRE */
	uint8		fingerprint[FINTX_FINGERPRINT_LEN];
	bool		preauthorized;	/* approved transfer: authorization already done */
	bool		batched;		/* an element of transfer_batch (never awaits approval) */

	/* filled in by the journal */
	struct LedgerRequest *dup_of;	/* same key earlier in this batch */
	bool		claimed;		/* key newly claimed by this call */
	bool		replayed;
	int64		transfer_id;

	/* filled in by execution */
	LedgerAccount *from;
	LedgerAccount *to;
	LedgerHold *hold;
	const char *status;
	int64		from_balance;
	int64		to_balance;
	bytea	   *entry_hash;
	TimestampTz created_at;
} LedgerRequest;

/* fintx.c */
extern void fintx_spi_connect(void);
extern ErrorData *fintx_subtransaction(void (*fn) (void *), void *arg);
extern int	fintx_jit_off(void);
extern char *fintx_spi_strdup(const char *s);
extern char *fintx_timestamptz_utc(TimestampTz ts);
extern Jsonb *fintx_authz_redact_transfer(Jsonb *payload);
extern char *fintx_spi_copy_text(HeapTuple tup, TupleDesc desc, int col);
extern int	fintx_index_planning(void);
extern int	fintx_execute_indexed(SPIPlanPtr plan, Datum *args, const char *nulls, bool read_only,
								  long count);
extern void fintx_spi_expect(int ret, int expect, const char *what);
extern SPIPlanPtr fintx_keep_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *types);
extern SPIPlanPtr fintx_keep_plan_opts(SPIPlanPtr *slot, const char *sql, int nargs, Oid *types,
									   int opts);
extern void fintx_put_field(StringInfo buf, char tag, const void *data, int32 len);
extern void fintx_put_int64(StringInfo buf, char tag, int64 v);
extern void fintx_put_string(StringInfo buf, char tag, const char *s);

typedef struct evp_pkey_st EVP_PKEY;

/* One audit entry (audit.c); hash is the RFC 6962 leaf hash of its canonical bytes. */
typedef struct FintxAuditEntry
{
	int64		entry_id;
	TimestampTz recorded_at;
	const char *actor;
	const char *session_role;
	const char *action;
	const char *object_type;
	const char *object_id;
	Jsonb	   *details;
	const char *details_text;	/* details as jsonb prints them, if already known (else NULL) */
	uint8		hash[32];
} FintxAuditEntry;

/* audit.c */
extern void fintx_audit_canonical(StringInfo buf, const FintxAuditEntry *e);
extern const char *fintx_session_role_name(void);
extern void fintx_audit_hash(FintxAuditEntry *e);
extern void fintx_audit_init(FintxAuditEntry *e, const char *actor, const char *action,
							 const char *object_type, const char *object_id, Jsonb *details);
extern void fintx_audit_init_text(FintxAuditEntry *e, const char *actor, const char *action,
								  const char *object_type, const char *object_id, Jsonb *details,
								  const char *details_text);
extern void fintx_audit_insert(FintxAuditEntry *entries, int n);
extern void fintx_audit_write(EState *estate, FintxAuditEntry *entries, int n);
extern void fintx_audit_record(const char *actor, const char *action, const char *object_type,
							   const char *object_id, Jsonb *details);
extern Jsonb *fintx_jsonb_from_text(const char *text);
extern Datum fintx_hash_datum(const uint8 *hash);
extern void fintx_audit_entry_from_row(HeapTuple tup, TupleDesc desc, int first, FintxAuditEntry *e);

/* direct.c: rows written with the table and index access methods */
#define FINTX_DIRECT_MAX_PARTS 4
/* rows a leaf buffers before writing them with one table_multi_insert (as COPY does) */
#define FINTX_INSERT_BUFFER 1000

/* A column fintx writes: its name and type, checked against the table when it is opened. */
typedef struct FintxColumn
{
	const char *name;
	Oid			type;
} FintxColumn;

typedef struct FintxLeaf
{
	Relation	rel;
	ResultRelInfo *rri;
	TupleTableSlot *slot;		/* virtual: rows to insert */
	TupleTableSlot *heap_slot;	/* updated tuples needing index entries */
	TupleTableSlot *table_slot; /* rows found and locked */
	struct IndexScanDescData *scan; /* fintx_direct_find's scan */
	TupleTableSlot **buffer;	/* rows inserted but not yet written */
	int			nbuffered;
	int			nslots;			/* length of buffer (grows to FINTX_INSERT_BUFFER) */
} FintxLeaf;

typedef struct FintxTable
{
	EState	   *estate;
	const FintxColumn *columns;
	int			ncolumns;
	FintxLeaf	leaf;			/* a plain table */
	Relation	parent;			/* a partitioned table */
	int			nparts;
	FintxLeaf	parts[FINTX_DIRECT_MAX_PARTS];
} FintxTable;

extern EState *fintx_direct_begin(void);
extern void fintx_direct_end(EState *estate);
extern Oid fintx_namespace_oid(void);
extern void fintx_direct_open(FintxTable *t, EState *estate, const char *name,
							  const FintxColumn *columns, int ncolumns);
extern void fintx_direct_open_partitioned(FintxTable *t, EState *estate, const char *name,
										  const FintxColumn *columns, int ncolumns);
extern void fintx_direct_open_speculative(FintxTable *t, EState *estate, const char *name,
										  const FintxColumn *columns, int ncolumns);
extern bool fintx_direct_insert_unless_exists(FintxTable *t, const Datum *values, const bool *nulls);
extern void fintx_direct_close(FintxTable *t);
extern void fintx_direct_insert(FintxTable *t, const Datum *values, const bool *nulls);
extern void fintx_direct_insert_routed(FintxTable *t, int64 key, const Datum *values, const bool *nulls);
extern TupleTableSlot *fintx_direct_find(FintxTable *t, const char *index_name, RegProcedure eqproc, Datum key);
extern TupleTableSlot *fintx_direct_lock(FintxTable *t, ItemPointer tid);
extern void fintx_direct_update(FintxTable *t, ItemPointer tid, HeapTuple old,
								const Datum *values, const bool *nulls, const bool *replace);
extern int64 fintx_direct_nextval(const char *name);
extern void fintx_direct_write_rows(EState *estate, const char *name, const FintxColumn *columns,
									int ncolumns, int nrows, const Datum *values, const bool *nulls);
extern void fintx_direct_insert_rows(const char *name, const FintxColumn *columns, int ncolumns,
									 int nrows, const Datum *values, const bool *nulls);

/* sequencer.c */
extern bool fintx_seal_lock_missed;
extern int	fintx_seal_interval_ms;
extern char *fintx_signing_key_file;
extern char *fintx_checkpoint_origin;
extern bool fintx_origin_char_ok(unsigned char c);
extern char *fintx_trusted_keys;
extern int64 fintx_seal_log(void);
extern int64 fintx_sealed_size(void);
extern int64 fintx_sequence_outbox_only(void);
extern char *fintx_key_label(const char *name, EVP_PKEY *key);
extern void fintx_require_local_snapshot(Datum snap, const char *what, int64 id);
extern void fintx_block_hash(int64 id, int64 size, const uint8 *root, const uint8 *prev,
							 TimestampTz sealed_at, uint8 *out);

/* crypto.c */
extern void fintx_sha256(const unsigned char *data, size_t len, uint8 *out);
extern void fintx_sha256_2(const unsigned char *part1, size_t len1, const unsigned char *part2,
						   size_t len2, uint8 *out);
extern EVP_PKEY *fintx_signing_key(const char *path);
extern void fintx_ed25519_public(EVP_PKEY *key, uint8 *pub);
extern void fintx_ed25519_sign(EVP_PKEY *key, const uint8 *msg, size_t len, uint8 *sig);
extern bool fintx_ed25519_parse_public(const char *text, uint8 *pub, const char **why);
extern bool fintx_ed25519_verify(const uint8 *pub, const uint8 *msg, size_t len, const uint8 *sig);
extern char *fintx_base64(const uint8 *data, int len);
extern void fintx_note_key_id(const char *name, const uint8 *pub, uint8 *id);

/* idempotency.c */
extern void fintx_fingerprint(LedgerRequest *req);
extern void fintx_journal_claim(EState *estate, const char *principal, LedgerRequest **reqs, int nreqs);
extern bool fintx_journal_dedup(LedgerRequest **reqs, int nreqs);

/* ledger.c */
extern int	fintx_batch_position;	/* batch index for error context, or -1 */
extern void fintx_execute(const char *principal, LedgerRequest **reqs, int nreqs);
extern int	fintx_expire_holds(int max_holds);
extern char *fintx_principal(void);

/* ledger.c: helpers shared with the authorization module */
extern void fintx_result_values(LedgerRequest *req, Datum *values, bool *nulls);
extern Datum fintx_result_datum(FunctionCallInfo fcinfo, LedgerRequest *req);
extern void fintx_null_argument(const char *name);

/* outbox.c */
extern int	fintx_outbox_retention_s;
extern int	fintx_outbox_wakeup_ms;
extern void fintx_outbox_init(void);
extern Datum fintx_outbox_record(const char *aggregatetype, const char *aggregateid, const char *type,
								 Jsonb *payload, Jsonb *headers, const char *actor);
extern void fintx_outbox_write_audit(EState *estate, FintxAuditEntry *entries, int n);
/* fintx.outbox is LIST-partitioned by (event_no / SLOT_EVENTS) % SLOTS (outbox.sql) */
/*
 * fintx.audit_nodes stores the complete subtrees from this level up (16 leaves
 * and more); the levels below are recomputed from the leaf hashes (the entries'
 * entry_hash, found through fintx.audit_leaf_runs).
 */
#define FINTX_AUDIT_STORED_LEVEL	4

#define FINTX_OUTBOX_SLOT_EVENTS	1048576
#define FINTX_OUTBOX_SLOTS			3
extern int64 fintx_outbox_sequence(Datum snap, Datum own, bool own_null);

/* worker.c */
extern void fintx_register_worker(void);
extern bool fintx_is_worker;
extern bool fintx_worker_transaction(const char *activity, void (*body) (void *), void *arg);

/* authz.c: who is calling and what they may do */
typedef enum FintxOp
{
	FINTX_OP_ACCOUNT_OPEN,
	FINTX_OP_ACCOUNT_CLOSE,
	FINTX_OP_TRANSFER,
	FINTX_OP_TRANSFER_APPROVE,
	FINTX_OP_HOLD_RESOLVE,
	FINTX_OP_AUDIT_READ,
	FINTX_OP_EVENT_EMIT,
	FINTX_OP_EVENT_CONSUME,
	FINTX_OP_ADMIN,				/* managing services and grants */
	FINTX_OP_COUNT
} FintxOp;

typedef struct FintxCaller
{
	Oid			role;
	char	   *role_name;
	bool		superuser;
	bool		admin;			/* superuser or member of fintx_admin */
	bool		auditor;		/* member of fintx_auditor */
	char	   *service;		/* registered service name, or NULL */
	bool		has_key;
	uint8		public_key[32];
	int32		usage_day;		/* DateADT: the UTC day daily limits count against */
} FintxCaller;

extern FintxCaller *fintx_authz_begin(void);
extern void fintx_authz_system(void);
extern bool fintx_authz_active(void);
extern bool fintx_authorize(FintxOp op, const char *object, const char *currency, int64 amount,
							bool has_amount, bool approval_allowed);
extern void fintx_authz_deny(FintxOp op, const char *object, const char *currency, int64 amount,
							 bool has_amount, const char *reason, const char *rule) pg_attribute_noreturn();
extern void fintx_authz_flush(void);
extern void fintx_authz_flush_in(EState *estate);


extern bool fintx_authz_decision(int i, const char **service, const char **rule);
extern void fintx_approval_record(LedgerRequest *req);
extern void fintx_authz_require(FintxOp op, const char *object);
extern void fintx_authz_log_admin_call(FintxOp op, const char *function, const char *argument);
extern void fintx_authz_record_refusal(FintxOp op, const char *object, const char *reason);
extern void fintx_authorize_hold(LedgerRequest *req);
extern void fintx_authz_lock_limits(FintxOp op, const char **objects, const char **currencies, int n);
extern bool fintx_authz_sees_all(void);
extern bool fintx_authz_sees_every_event(void);
extern bool fintx_authz_hides_balance(const char *code);
extern void fintx_authz_init(void);
extern Oid	fintx_calling_user(void);

/* gate.c: admission of batches (fintx.max_active_batches) */
extern int	fintx_max_active_batches;
extern int	fintx_batch_queue_timeout_ms;
extern void fintx_gate_init(bool preloaded);
extern void fintx_gate_enter(bool batch);
extern void fintx_gate_leave(void);

/* denials.c: the durable denial queue (shared memory + worker) */
extern int	fintx_denial_wait_ms;
extern void fintx_denials_init(void);
extern void fintx_denials_worker_attach(void);
extern bool fintx_denials_pending(void);
extern void fintx_worker_wake(void);
extern void fintx_worker_woken(void);
extern bool fintx_worker_wake_pending(void);
extern bool fintx_worker_seals_here(void);
extern bool fintx_worker_seal(void);
extern uint64 fintx_worker_seal_begin(bool *asked);
extern void fintx_worker_seal_end(uint64 req, bool sealed);
extern void fintx_denials_worker_flush(void);
extern void fintx_denial_enqueue(const char *role, const char *session_user, const char *service,
								 const char *operation, const char *object, const char *currency,
								 int64 amount, bool has_amount, const char *reason, const char *rule);

/*
 * Raises the 42501 error of a refusal recorded with fintx_denial_enqueue()
 * (directly or through fintx_authz_deny/fintx_authz_record_refusal). Its
 * message domain marks it as recorded: the error keeps the mark when user
 * code catches and re-raises it (PL/pgSQL RAISE; re-throws the error it
 * caught), so the log hook never records it a second time. The domain only
 * names the catalog messages would be translated with; fintx has none.
 */
#define FINTX_RECORDED_DOMAIN "fintx-recorded-refusal"
#define fintx_raise_recorded(...) \
	ereport_domain(ERROR, FINTX_RECORDED_DOMAIN, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), __VA_ARGS__))

#endif							/* FINTX_H */
