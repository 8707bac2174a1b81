/*
 * src/privileges.sql — assembled last: nothing is granted to PUBLIC; fintx's roles get
 * exactly what they need; user data is registered for pg_dump.
 */
REVOKE ALL ON ALL TABLES IN SCHEMA fintx FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA fintx FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA fintx FROM PUBLIC;

GRANT SELECT ON ALL TABLES IN SCHEMA fintx TO fintx_admin;
GRANT SELECT ON fintx.account_balances, fintx.open_holds, fintx.transfer_history, fintx.pending_approvals
  TO fintx_service, fintx_auditor;
-- account_balances and pending_approvals read with the caller's rights (row security on the
-- tables limits a service to the accounts its grants cover); open_holds and transfer_history
-- read with their owner's and filter with fintx.transfer_visible() (docs/authorization.md).
GRANT SELECT ON fintx.accounts, fintx.pending_holds, fintx.approvals
  TO fintx_service, fintx_auditor;
-- A transfer's row names both accounts, but a service sees only the balances of accounts its
-- grants cover: not the balance columns here (transfer_history shows them where allowed).
GRANT SELECT (id, status, from_account, to_account, amount, pending_id, timeout_at, metadata,
              entry_hash, principal, created_at) ON fintx.transfers TO fintx_service;
GRANT SELECT ON fintx.transfers TO fintx_auditor;
GRANT SELECT ON fintx.access_log, fintx.access_log_entries, fintx.services, fintx.permissions,
                fintx.signed_requests, fintx.limit_usage
  TO fintx_auditor;

GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA fintx TO fintx_admin;
GRANT EXECUTE ON FUNCTION
    fintx.transfer(text, text, text, bigint, jsonb, boolean, interval),
    fintx.post_pending(text, bigint, bigint),
    fintx.void_pending(text, bigint),
    fintx.transfer_batch(jsonb),
    fintx.request_fingerprint(text, text, bigint, jsonb, boolean, interval),
    fintx.open_account(text, text, boolean, boolean, jsonb),
    fintx.close_account(text),
    fintx.approve_transfer(bigint),
    fintx.reject_transfer(bigint, text),
    fintx.transfer_signed(jsonb, bytea),
    fintx.transfer_batch_signed(jsonb, bytea),
    fintx.signing_message(text, jsonb),
    fintx.account_visible(text),
    fintx.account_id_visible(bigint)
  TO fintx_service;
GRANT EXECUTE ON FUNCTION fintx.transfer_visible(bigint, bigint) TO fintx_service, fintx_auditor;
GRANT EXECUTE ON FUNCTION fintx.event_visible(text, text, jsonb) TO fintx_service;
GRANT EXECUTE ON FUNCTION fintx.consumer_visible(text) TO fintx_service, fintx_auditor;
GRANT EXECUTE ON FUNCTION
    fintx.emit(text, text, text, jsonb, jsonb),
    fintx.create_consumer(text),
    fintx.create_consumer(text, integer, integer, text[], text[], integer),
    fintx.poll(text, integer),
    fintx.ack(text, bigint),
    fintx.reject(text, bigint, text),
    fintx.inbox_accept(text, uuid),
    fintx.inbox_prune(text, interval),
    fintx.outbox_tail(),
    fintx.relay_checkpoint(text, bigint, bigint),
    fintx.consumer_state(text)
  TO fintx_service;
GRANT SELECT ON fintx.outbox_lag TO fintx_service, fintx_auditor;
GRANT EXECUTE ON FUNCTION fintx.reconcile() TO fintx_auditor;
GRANT SELECT ON fintx.audit_log, fintx.audit_account_trail, fintx.audit_actor_activity,
                fintx.audit_checkpoints TO fintx_auditor;
GRANT EXECUTE ON FUNCTION
    fintx.seal(), fintx.tree_size(), fintx.root_hash(bigint), fintx.leaf_data(bigint),
    fintx.inclusion_proof(bigint, bigint), fintx.consistency_proof(bigint, bigint),
    fintx.checkpoint(), fintx.public_key(), fintx.verify_audit(bigint, bigint),
    fintx.audit_export(bigint, bigint), fintx.merkle_leaf_hash(bytea),
    fintx.merkle_tree_head(bytea[]), fintx.merkle_inclusion_proof(bytea[], bigint, bigint),
    fintx.merkle_consistency_proof(bytea[], bigint, bigint)
  TO fintx_auditor, fintx_service;

SELECT pg_catalog.pg_extension_config_dump('fintx.accounts', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.accounts_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.transfers', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.transfer_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.pending_holds', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.idempotency_keys', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.audit_entries', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.audit_entry_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.audit_leaf_runs', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.audit_nodes', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.audit_blocks', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.services', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.permissions', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.limit_usage', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.approvals', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.access_log_entries', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.signed_requests', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.signed_requests_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.outbox_event_no_seq', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.outbox_0', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.outbox_1', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.outbox_2', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.outbox_position_runs_0', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.outbox_position_runs_1', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.outbox_position_runs_2', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.outbox_batches', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.outbox_consumers', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.outbox_attempts', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.outbox_dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('fintx.inbox', '');
