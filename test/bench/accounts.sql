-- The benchmark ledger (run.sh, outbox.sh): the extension, a funding account and 1,000
-- accounts with 10^12 minor units each.
CREATE EXTENSION fintx;
SELECT fintx.open_account('bench:funding', 'EUR', allow_negative => true);
SELECT count(fintx.open_account('acct:' || i, 'EUR')) FROM generate_series(1, 1000) i;
SELECT count(*) FROM fintx.transfer_batch(
  (SELECT jsonb_agg(jsonb_build_object('idempotency_key', 'fund-' || i, 'from_account', 'bench:funding',
                                       'to_account', 'acct:' || i, 'amount', 1000000000000))
     FROM generate_series(1, 1000) i));
