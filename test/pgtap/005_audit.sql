-- 005_audit: the tamper-evident audit log inside one transaction.
--   1. RFC 6962 known answers (Certificate Transparency test inputs): leaf hashes, tree heads
--      of every prefix 0..8, RFC 9162 inclusion and consistency proofs, each also recomputed
--      here with PostgreSQL's own sha256()
--   2. error cases of every audit function (22023, 22004, 42501, 42710, 42809, 55000)
--   3. audit_table(): row images in the same transaction, nothing for a rolled-back row,
--      the calling role as actor, entry_hash = leaf hash of the documented canonical bytes
--      (docs/audit-format.md) rebuilt here; append_only(); owner checks
--   4. a log sealed by hand, in SQL, following docs/audit-format.md (leaves, complete
--      subtrees, a block with its hash): verify_audit() accepts it and catches changes;
--      leaf_data(), root_hash(), proofs and views agree with it
--   5. immutability of the four audit tables (42501, superuser included)
--   6. the auditor views and verify_audit() on the hand-sealed log
-- The whole file is one transaction that has written, and such a transaction does not get
-- its own entries sealed by fintx.seal() (it may not even be able to: the sequencer only
-- sees committed work), hence the hand-sealed log. Sealing by the sequencer itself is
-- covered by test/t/007_merkle_proofs.pl, 008_sequencer.pl and 009_tamper.pl.
\set ON_ERROR_STOP 1
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION fintx;
SELECT plan(215);

-- RFC 6962 tree head over leaf hashes, with sha256() only (no fintx code): the reference.
CREATE FUNCTION pg_temp.mth_h(h bytea[]) RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    n int := coalesce(array_length(h, 1), 0);
    k int := 1;
BEGIN
    IF n = 0 THEN
        RETURN sha256(''::bytea);
    ELSIF n = 1 THEN
        RETURN h[1];
    END IF;
    WHILE k * 2 < n LOOP
        k := k * 2;
    END LOOP;
    RETURN sha256('\x01'::bytea || pg_temp.mth_h(h[1:k]) || pg_temp.mth_h(h[k + 1:n]));
END
$$;
-- ... over leaf data
CREATE FUNCTION pg_temp.mth(l bytea[]) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_temp.mth_h(coalesce((SELECT array_agg(sha256('\x00'::bytea || d) ORDER BY o)
                                     FROM unnest(l) WITH ORDINALITY AS u(d, o)), '{}'))
$$;
-- The canonical bytes of an entry (docs/audit-format.md section 1), from its columns.
CREATE FUNCTION pg_temp.canonical(e fintx.audit_entries) RETURNS bytea LANGUAGE sql STABLE AS $$
SELECT 'fintx.audit.v1'::bytea
    || '\x69'::bytea || int4send(8) || int8send(e.entry_id)
    || '\x74'::bytea || int4send(8) || int8send((extract(epoch FROM e.recorded_at) * 1000000)::bigint)
    || '\x61'::bytea || int4send(octet_length(e.actor)) || convert_to(e.actor, 'UTF8')
    || '\x73'::bytea || int4send(octet_length(e.session_role)) || convert_to(e.session_role, 'UTF8')
    || '\x63'::bytea || int4send(octet_length(e.action)) || convert_to(e.action, 'UTF8')
    || '\x6f'::bytea || int4send(octet_length(e.object_type)) || convert_to(e.object_type, 'UTF8')
    || '\x6b'::bytea || int4send(octet_length(e.object_id)) || convert_to(e.object_id, 'UTF8')
    || '\x64'::bytea || int4send(octet_length(e.details::text)) || convert_to(e.details::text, 'UTF8')
$$;
-- Seals every entry without a leaf the way docs/audit-format.md describes it, in SQL:
-- leaves in entry order after the current size with their leaf hashes, every new complete
-- subtree of 16 leaves and more, and one block
-- (tree head, hash chain, block hash; unsigned). Returns the tree size.
CREATE FUNCTION pg_temp.hand_seal() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n0 bigint := coalesce((SELECT max(tree_size) FROM fintx.audit_blocks), 0);
    bid bigint := coalesce((SELECT max(block_id) FROM fintx.audit_blocks), 0) + 1;
    prev bytea := coalesce((SELECT block_hash FROM fintx.audit_blocks ORDER BY block_id DESC LIMIT 1),
                           decode(repeat('00', 32), 'hex'));
    at timestamptz := clock_timestamp();
    nxt text := (pg_current_xact_id()::text::bigint + 1)::text;
    n bigint;
    lv int := 0;
    hs bytea[];
    root bytea;
BEGIN
    -- one run per stretch of consecutive entry ids (gaps and islands)
    INSERT INTO fintx.audit_leaf_runs (first_leaf, first_entry, leaf_count, block_id)
    SELECT n0 + min(q.rn) - 1, min(q.entry_id), count(*), bid
      FROM (SELECT e.entry_id, row_number() OVER (ORDER BY e.entry_id) AS rn
              FROM fintx.audit_entries e
             WHERE NOT EXISTS (SELECT 1 FROM fintx.audit_leaves l WHERE l.entry_id = e.entry_id)) q
     GROUP BY q.entry_id - q.rn;
    n := (SELECT count(*) FROM fintx.audit_leaves);
    IF n = n0 THEN
        RETURN n;
    END IF;
    hs := ARRAY(SELECT sha256('\x00'::bytea || pg_temp.canonical(e))
                  FROM fintx.audit_leaves l JOIN fintx.audit_entries e USING (entry_id) ORDER BY l.leaf_index);
    root := pg_temp.mth_h(hs);
    WHILE cardinality(hs) > 0 LOOP
        INSERT INTO fintx.audit_nodes (level, idx, hash)
        SELECT lv, i - 1, hs[i] FROM generate_subscripts(hs, 1) i
         WHERE lv >= 4
        ON CONFLICT DO NOTHING;
        hs := ARRAY(SELECT sha256('\x01'::bytea || hs[2 * j - 1] || hs[2 * j])
                      FROM generate_series(1, cardinality(hs) / 2) j ORDER BY j);
        lv := lv + 1;
    END LOOP;
    INSERT INTO fintx.audit_blocks (block_id, tree_size, root_hash, prev_block_hash, block_hash, snapshot,
                                    sealed_at, origin, key_name, signature)
    VALUES (bid, n, root, prev,
            sha256('fintx.block.v1'::bytea || int8send(bid) || int8send(n) || root || prev
                   || int8send((extract(epoch FROM at) * 1000000)::bigint)),
            (nxt || ':' || nxt || ':')::pg_snapshot, at, 'hand-sealed', NULL, NULL);
    RETURN n;
END
$$;
-- Runs q as role r and returns its first column (errors propagate; the subtransaction that
-- catches them also undoes the role switch).
CREATE FUNCTION pg_temp.run_as(r text, q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v text;
BEGIN
    PERFORM pg_catalog.set_config('role', r, true);
    EXECUTE q INTO v;
    PERFORM pg_catalog.set_config('role', 'none', true);
    RETURN v;
END
$$;
-- hex strings -> bytea[]
CREATE FUNCTION pg_temp.hashes(VARIADIC h text[]) RETURNS bytea[] LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(decode(x, 'hex') ORDER BY o), '{}') FROM unnest(h) WITH ORDINALITY AS u(x, o)
$$;

-- ===========================================================================
-- 1. RFC 6962 known answers
-- ===========================================================================
CREATE TEMP TABLE ct (i int PRIMARY KEY, data bytea, leaf text);
INSERT INTO ct VALUES
    (0, '',                                   '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d'),
    (1, '\x00',                               '96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7'),
    (2, '\x10',                               '0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7'),
    (3, '\x2021',                             '07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7'),
    (4, '\x3031',                             'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b'),
    (5, '\x40414243',                         '4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658'),
    (6, '\x5051525354555657',                 'b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f'),
    (7, '\x606162636465666768696a6b6c6d6e6f', '46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1');
CREATE TEMP TABLE ct_root (n int PRIMARY KEY, root text);
INSERT INTO ct_root VALUES
    (0, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'),
    (1, '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d'),
    (2, 'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125'),
    (3, 'aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77'),
    (4, 'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7'),
    (5, '4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4'),
    (6, '76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef'),
    (7, 'ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c'),
    (8, '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328');
CREATE TEMP TABLE l8 AS SELECT array_agg(data ORDER BY i) AS a FROM ct;

SELECT is(fintx.merkle_leaf_hash(data), decode(leaf, 'hex'),
          'RFC 6962 leaf hash of ' || CASE WHEN data = '' THEN '""' ELSE encode(data, 'hex') END)
  FROM ct ORDER BY i;
SELECT is(fintx.merkle_leaf_hash(data), sha256('\x00'::bytea || data),
          'leaf hash = sha256(0x00 || data) for ' || CASE WHEN data = '' THEN '""' ELSE encode(data, 'hex') END)
  FROM ct ORDER BY i;
SELECT is(fintx.merkle_tree_head(l8.a[1:r.n]), decode(r.root, 'hex'), 'RFC 6962 tree head of size ' || r.n)
  FROM ct_root r, l8 ORDER BY r.n;
SELECT is(pg_temp.mth(l8.a[1:r.n]), decode(r.root, 'hex'),
          'the sha256() reference agrees with the known tree head of size ' || r.n)
  FROM ct_root r, l8 ORDER BY r.n;
SELECT is(fintx.merkle_tree_head('{}'::bytea[]), sha256(''::bytea), 'empty tree head = SHA-256 of the empty string');
-- beyond the known answers: varied leaves (including empty ones) up to 33, against sha256()
SELECT is((SELECT count(*)::int FROM generate_series(0, 33) n
            WHERE fintx.merkle_tree_head(v.a[1:n]) IS DISTINCT FROM pg_temp.mth(v.a[1:n])), 0,
          'tree heads of 34 varied prefixes (sizes 0..33) match the sha256() reference')
  FROM (SELECT array_agg(substr(sha512(int4send(i)), 1, i % 19) ORDER BY i) AS a
          FROM generate_series(1, 33) i) v;

-- RFC 9162 proofs for the 8-leaf tree (Certificate Transparency reference test vectors)
SELECT is(fintx.merkle_inclusion_proof(a, 0, 1), '{}'::bytea[], 'inclusion proof of leaf 0 in a tree of 1 is empty') FROM l8;
SELECT is(fintx.merkle_inclusion_proof(a, 0, 8), pg_temp.hashes(
              '96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7',
              '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e',
              '6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4'),
          'inclusion proof of leaf 0 in the tree of 8') FROM l8;
SELECT is(fintx.merkle_inclusion_proof(a, 5, 8), pg_temp.hashes(
              'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b',
              'ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0',
              'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7'),
          'inclusion proof of leaf 5 in the tree of 8') FROM l8;
SELECT is(fintx.merkle_inclusion_proof(a, 2, 3), pg_temp.hashes(
              'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125'),
          'inclusion proof of leaf 2 in the tree of 3') FROM l8;
SELECT is(fintx.merkle_inclusion_proof(a, 1, 5), pg_temp.hashes(
              '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
              '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e',
              'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b'),
          'inclusion proof of leaf 1 in the tree of 5') FROM l8;
SELECT is(fintx.merkle_consistency_proof(a, 1, 1), '{}'::bytea[], 'consistency proof 1 -> 1 is empty') FROM l8;
SELECT is(fintx.merkle_consistency_proof(a, 8, 8), '{}'::bytea[], 'consistency proof 8 -> 8 is empty') FROM l8;
SELECT is(fintx.merkle_consistency_proof(a, 1, 8), pg_temp.hashes(
              '96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7',
              '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e',
              '6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4'),
          'consistency proof 1 -> 8') FROM l8;
SELECT is(fintx.merkle_consistency_proof(a, 6, 8), pg_temp.hashes(
              '0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a',
              'ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0',
              'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7'),
          'consistency proof 6 -> 8') FROM l8;
SELECT is(fintx.merkle_consistency_proof(a, 2, 5), pg_temp.hashes(
              '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e',
              'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b'),
          'consistency proof 2 -> 5') FROM l8;
-- proofs of complete subtrees are just the sibling subtree heads
SELECT is(fintx.merkle_consistency_proof(a, 4, 8), ARRAY[pg_temp.mth(a[5:8])],
          'consistency proof 4 -> 8 is the head of leaves 4..7') FROM l8;
SELECT is(fintx.merkle_inclusion_proof(a, 7, 8),
          ARRAY[sha256('\x00'::bytea || a[7]), pg_temp.mth(a[5:6]), pg_temp.mth(a[1:4])],
          'inclusion proof of leaf 7 in the tree of 8 = [leaf 6, head(4..5), head(0..3)]') FROM l8;

-- ===========================================================================
-- 2a. error cases of the data functions
-- ===========================================================================
SELECT is(fintx.merkle_leaf_hash(NULL), NULL, 'merkle_leaf_hash(NULL) is NULL (strict)');
SELECT is(fintx.merkle_tree_head(NULL), NULL, 'merkle_tree_head(NULL) is NULL (strict)');
SELECT is(fintx.merkle_inclusion_proof(a, NULL, 8), NULL, 'merkle_inclusion_proof with a NULL index is NULL (strict)') FROM l8;
SELECT is(fintx.merkle_consistency_proof(a, 1, NULL), NULL, 'merkle_consistency_proof with a NULL size is NULL (strict)') FROM l8;
SELECT throws_ok($$SELECT fintx.merkle_tree_head(ARRAY['\x00', NULL]::bytea[])$$, '22004', NULL,
                 'merkle_tree_head refuses a NULL leaf (22004)');
SELECT throws_ok(format('SELECT fintx.merkle_inclusion_proof(%L, %s, %s)', a, i, n), '22023', NULL,
                 format('merkle_inclusion_proof(8 leaves, %s, %s): %s (22023)', i, n, why))
  FROM l8, (VALUES (-1, 8, 'negative index'), (8, 8, 'index = size'), (9, 8, 'index > size'),
                   (0, 9, 'size beyond the leaves'), (0, 0, 'size 0'), (0, -1, 'negative size'))
             AS c(i, n, why);
SELECT throws_ok(format('SELECT fintx.merkle_consistency_proof(%L, %s, %s)', a, m, n), '22023', NULL,
                 format('merkle_consistency_proof(8 leaves, %s, %s): %s (22023)', m, n, why))
  FROM l8, (VALUES (0, 8, 'first size 0'), (-1, 8, 'negative first size'), (5, 4, 'first > second'),
                   (1, 9, 'second size beyond the leaves'), (1, -1, 'negative second size'))
             AS c(m, n, why);

-- ===========================================================================
-- 3. audit_table() and append_only()
-- ===========================================================================
SELECT is((SELECT count(*)::int FROM fintx.audit_blocks), 0, 'a new log has no blocks');
CREATE TABLE public.t005_notes (id int PRIMARY KEY, note text, amount numeric);
SELECT lives_ok($$SELECT fintx.audit_table('public.t005_notes')$$, 'audit_table attaches the row trigger');
SELECT throws_ok($$SELECT fintx.audit_table('public.t005_notes')$$, '42710', NULL,
                 'auditing a table twice: 42710');
SELECT throws_ok($$SELECT fintx.audit_table(NULL)$$, '22023', NULL, 'audit_table(NULL): 22023');
SELECT throws_ok($$SELECT fintx.append_only(NULL)$$, '22023', NULL, 'append_only(NULL): 22023');
CREATE VIEW public.t005_view AS SELECT 1 AS x;
SELECT throws_ok($$SELECT fintx.audit_table('public.t005_view')$$, '42809', NULL, 'audit_table on a view: 42809');
SELECT throws_ok($$SELECT fintx.append_only('public.t005_view')$$, '42809', NULL, 'append_only on a view: 42809');

INSERT INTO public.t005_notes VALUES (1, 'first', 10.50), (2, 'second', 20);
UPDATE public.t005_notes SET note = 'first, edited', amount = 11 WHERE id = 1;
DELETE FROM public.t005_notes WHERE id = 2;
SAVEPOINT before_rollback;
INSERT INTO public.t005_notes VALUES (3, 'rolled back', 30);
ROLLBACK TO SAVEPOINT before_rollback;

CREATE TEMP VIEW notes_log AS
SELECT * FROM fintx.audit_log WHERE object_type = 'table' AND object_id = 'public.t005_notes';
SELECT is((SELECT count(*)::int FROM notes_log), 4, 'two inserts, an update and a delete: four entries');
SELECT is((SELECT array_agg(action ORDER BY entry_id) FROM notes_log),
          ARRAY['row.inserted', 'row.inserted', 'row.updated', 'row.deleted'], 'entry actions in statement order');
SELECT is((SELECT details FROM notes_log WHERE action = 'row.inserted' AND details->'new'->>'id' = '1'),
          '{"table": "public.t005_notes", "new": {"id": 1, "note": "first", "amount": 10.50}}'::jsonb,
          'row.inserted carries the new row image');
SELECT is((SELECT details FROM notes_log WHERE action = 'row.updated'),
          '{"table": "public.t005_notes", "old": {"id": 1, "note": "first", "amount": 10.50},'
          ' "new": {"id": 1, "note": "first, edited", "amount": 11}}'::jsonb,
          'row.updated carries the old and the new row image');
SELECT is((SELECT details FROM notes_log WHERE action = 'row.deleted'),
          '{"table": "public.t005_notes", "old": {"id": 2, "note": "second", "amount": 20}}'::jsonb,
          'row.deleted carries the old row image only');
SELECT is((SELECT count(*)::int FROM fintx.audit_entries WHERE details::text LIKE '%rolled back%'), 0,
          'a rolled-back insert leaves no entry');
SELECT is((SELECT array_agg(DISTINCT txid) FROM fintx.audit_entries e JOIN notes_log USING (entry_id)),
          ARRAY[pg_current_xact_id()], 'the entries belong to the writing transaction');
SELECT is((SELECT array_agg(DISTINCT e.actor || '/' || e.session_role) FROM fintx.audit_entries e JOIN notes_log USING (entry_id)),
          ARRAY[current_user || '/' || session_user], 'actor is the calling role, session_role the session user');
SELECT ok((SELECT bool_and(recorded_at = transaction_timestamp()) FROM notes_log), 'recorded_at is the transaction start');
SELECT is((SELECT count(*)::int FROM notes_log WHERE leaf_index IS NULL), 4, 'no leaf index before sealing');
SELECT ok((SELECT bool_and(e.entry_hash = sha256('\x00'::bytea || pg_temp.canonical(e)))
            FROM fintx.audit_entries e JOIN notes_log USING (entry_id)),
          'entry_hash = leaf hash of the canonical encoding rebuilt here from the columns');

-- append_only
CREATE TABLE public.t005_journal (id int, v text);
SELECT lives_ok($$SELECT fintx.append_only('public.t005_journal')$$, 'append_only attaches its triggers');
SELECT throws_ok($$SELECT fintx.append_only('public.t005_journal')$$, '42710', NULL, 'append_only twice: 42710');
SELECT lives_ok($$INSERT INTO public.t005_journal VALUES (1, 'a'), (2, 'b')$$, 'an append-only table accepts INSERT');
SELECT throws_ok($$UPDATE public.t005_journal SET v = 'x' WHERE id = 1$$, '42501', NULL, 'append-only: UPDATE refused (42501)');
SELECT throws_ok($$DELETE FROM public.t005_journal WHERE id = 1$$, '42501', NULL, 'append-only: DELETE refused (42501)');
SELECT throws_ok($$TRUNCATE public.t005_journal$$, '42501', NULL, 'append-only: TRUNCATE refused (42501)');
SELECT is((SELECT string_agg(id || v, ',' ORDER BY id) FROM public.t005_journal), '1a,2b', 'append-only rows unchanged');
SELECT is((SELECT count(*)::int FROM fintx.audit_entries WHERE object_id = 'public.t005_journal'), 0,
          'append_only alone writes no audit entries');

-- owners and non-owners
CREATE ROLE t005_admin NOLOGIN IN ROLE fintx_admin;
CREATE ROLE t005_owner NOLOGIN IN ROLE fintx_admin;
CREATE ROLE t005_nobody NOLOGIN;
CREATE TABLE public.t005_owned (id int PRIMARY KEY, v text);
ALTER TABLE public.t005_owned OWNER TO t005_owner;
SELECT throws_ok($$SELECT pg_temp.run_as('t005_admin', 'SELECT fintx.audit_table(''public.t005_notes'')')$$,
                 '42501', 'must be owner of table t005_notes', 'audit_table by a fintx_admin who does not own the table: 42501');
SELECT throws_ok($$SELECT pg_temp.run_as('t005_admin', 'SELECT fintx.append_only(''public.t005_owned'')')$$,
                 '42501', 'must be owner of table t005_owned', 'append_only by a fintx_admin who does not own the table: 42501');
SELECT throws_ok($$SELECT pg_temp.run_as('t005_nobody', 'SELECT fintx.audit_table(''public.t005_owned'')')$$,
                 '42501', NULL, 'audit_table by a role without fintx privileges: 42501');
SELECT throws_ok($$SELECT pg_temp.run_as('t005_nobody', 'SELECT fintx.append_only(''public.t005_owned'')')$$,
                 '42501', NULL, 'append_only by a role without fintx privileges: 42501');
SELECT lives_ok($$SELECT pg_temp.run_as('t005_owner', 'SELECT fintx.audit_table(''public.t005_owned'')')$$,
                'the owning fintx_admin may audit its table');
SELECT lives_ok($$SELECT pg_temp.run_as('t005_owner', 'INSERT INTO public.t005_owned VALUES (1, ''mine'') RETURNING 1')$$,
                'the owner inserts a row into its audited table');
SELECT is((SELECT actor || '|' || action FROM fintx.audit_log WHERE object_id = 'public.t005_owned'),
          't005_owner|row.inserted', 'the entry names the role that made the change');
SELECT is((SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'public.t005_notes'::regclass),
          'fintx_audit,fintx_audit_truncate', 'audit_table by a non-owner attached nothing (the owner''s row and TRUNCATE triggers only)');
SELECT is((SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'public.t005_owned'::regclass),
          'fintx_audit,fintx_audit_truncate', 'append_only by a non-owner attached nothing to t005_owned (its owner''s audit triggers only)');

-- ===========================================================================
-- 4. a log sealed by hand following docs/audit-format.md
-- ===========================================================================
SELECT is(pg_temp.hand_seal(), 5::bigint, 'the five entries of this transaction sealed by hand in SQL');
SELECT is((SELECT format('%s|%s', ok, entries_checked) FROM fintx.verify_audit()), 't|5',
          'verify_audit() accepts the log built from the documented format');
SELECT is(fintx.seal(), 5::bigint, 'seal() finds nothing more to seal');
SELECT is(fintx.tree_size(), 5::bigint, 'tree_size() = 5');
SELECT is((SELECT count(*)::int FROM fintx.audit_blocks), 1, 'one block');
SELECT is((SELECT array_agg(leaf_index ORDER BY leaf_index) FROM fintx.audit_log), ARRAY[0, 1, 2, 3, 4]::bigint[],
          'audit_log shows the leaf indexes 0..4');
CREATE TEMP TABLE leaves AS
SELECT l.leaf_index, fintx.leaf_data(l.leaf_index) AS data, pg_temp.canonical(e) AS canonical, l.entry_hash
  FROM fintx.audit_log l JOIN fintx.audit_entries e USING (entry_id) ORDER BY l.leaf_index;
SELECT is((SELECT count(*)::int FROM leaves WHERE data = canonical), 5,
          'leaf_data(i) = the canonical bytes rebuilt here from the columns, for every leaf');
SELECT is((SELECT count(*)::int FROM leaves WHERE sha256('\x00'::bytea || data) = entry_hash), 5,
          'sha256(0x00 || leaf_data(i)) = entry_hash in audit_log, for every leaf');
SELECT is((SELECT count(*)::int FROM leaves WHERE fintx.merkle_leaf_hash(data) = entry_hash), 5,
          'merkle_leaf_hash(leaf_data(i)) = entry_hash, for every leaf');
CREATE TEMP TABLE leaf_arr AS SELECT array_agg(data ORDER BY leaf_index) AS a FROM leaves;
SELECT is(fintx.root_hash(n), pg_temp.mth(a[1:n]), 'root_hash(' || n || ') = sha256() reference over leaf_data')
  FROM leaf_arr, generate_series(0, 5) n ORDER BY n;
SELECT is(fintx.merkle_tree_head(a), fintx.root_hash(5), 'merkle_tree_head(leaf_data) = root_hash(5)') FROM leaf_arr;
SELECT is((SELECT count(*)::int FROM generate_series(1, 5) n, generate_series(0, n - 1) i
            WHERE fintx.inclusion_proof(i, n) IS DISTINCT FROM fintx.merkle_inclusion_proof(a, i, n)), 0,
          'every inclusion_proof(i, n) of the log equals the proof computed from leaf_data') FROM leaf_arr;
SELECT is((SELECT count(*)::int FROM generate_series(1, 5) n, generate_series(1, n) m
            WHERE fintx.consistency_proof(m, n) IS DISTINCT FROM fintx.merkle_consistency_proof(a, m, n)), 0,
          'every consistency_proof(m, n) of the log equals the proof computed from leaf_data') FROM leaf_arr;
SELECT is(fintx.inclusion_proof(4, 5), ARRAY[pg_temp.mth(a[1:4])], 'inclusion_proof(4, 5) = [head of leaves 0..3]')
  FROM leaf_arr;
SELECT is(fintx.consistency_proof(5, 5), '{}'::bytea[], 'consistency_proof(n, n) is empty');
-- verify_audit() is not vacuous: a changed entry, a changed tree head, a broken chain
SAVEPOINT tamper;
SET LOCAL session_replication_role = replica;
UPDATE fintx.audit_entries SET actor = 'mallory' WHERE entry_id = (SELECT entry_id FROM fintx.audit_leaves WHERE leaf_index = 2);
RESET session_replication_role;
SELECT is((SELECT ok FROM fintx.verify_audit()), false, 'verify_audit() catches a changed actor');
ROLLBACK TO SAVEPOINT tamper;
SET LOCAL session_replication_role = replica;
UPDATE fintx.audit_blocks SET root_hash = fintx.root_hash(4);
RESET session_replication_role;
SELECT is((SELECT ok FROM fintx.verify_audit()), false, 'verify_audit() catches a block with the wrong tree head');
ROLLBACK TO SAVEPOINT tamper;
SET LOCAL session_replication_role = replica;
UPDATE fintx.audit_blocks SET sealed_at = sealed_at + interval '1 microsecond';
RESET session_replication_role;
SELECT is((SELECT ok FROM fintx.verify_audit()), false, 'verify_audit() catches a block that no longer matches its hash');
ROLLBACK TO SAVEPOINT tamper;
RELEASE SAVEPOINT tamper;
SELECT is((SELECT ok FROM fintx.verify_audit()), true, 'rolled back: verify_audit() is ok again');

-- ===========================================================================
-- 2b. error cases of the log functions
-- ===========================================================================
SELECT throws_ok(q, '22023', NULL, q || ': 22023')
  FROM unnest(ARRAY[
    'SELECT fintx.root_hash(NULL)', 'SELECT fintx.root_hash(-1)', 'SELECT fintx.root_hash(6)',
    'SELECT fintx.root_hash(9223372036854775807)',
    'SELECT fintx.leaf_data(NULL)', 'SELECT fintx.leaf_data(-1)', 'SELECT fintx.leaf_data(5)',
    'SELECT fintx.inclusion_proof(NULL, 5)', 'SELECT fintx.inclusion_proof(0, NULL)',
    'SELECT fintx.inclusion_proof(-1, 5)', 'SELECT fintx.inclusion_proof(5, 5)', 'SELECT fintx.inclusion_proof(0, 0)',
    'SELECT fintx.inclusion_proof(0, -1)', 'SELECT fintx.inclusion_proof(0, 6)',
    'SELECT fintx.consistency_proof(NULL, 5)', 'SELECT fintx.consistency_proof(1, NULL)',
    'SELECT fintx.consistency_proof(0, 5)', 'SELECT fintx.consistency_proof(-1, 5)',
    'SELECT fintx.consistency_proof(4, 3)', 'SELECT fintx.consistency_proof(1, 6)',
    'SELECT fintx.consistency_proof(1, -1)',
    'SELECT * FROM fintx.verify_audit(-1)', 'SELECT * FROM fintx.verify_audit(0, 5)',
    'SELECT * FROM fintx.verify_audit(3, 1)', 'SELECT * FROM fintx.verify_audit(6, NULL)']) AS q;
SELECT throws_ok('SELECT fintx.checkpoint()', '55000', 'no signing key is configured',
                 'checkpoint() without fintx.signing_key_file: 55000');
SELECT throws_ok('SELECT fintx.public_key()', '55000', 'no signing key is configured',
                 'public_key() without fintx.signing_key_file: 55000');
SELECT is(fintx.root_hash(0), decode('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'hex'),
          'root_hash(0) is the empty tree head');
SELECT is(fintx.tree_size(), 5::bigint, 'the failed calls sealed nothing and lost nothing');

-- ===========================================================================
-- 5. immutability: every role, the superuser included
-- ===========================================================================
SELECT ok((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), 'these checks run as a superuser');
-- a 5-leaf log has no stored subtree yet (they start at 16 leaves): a stand-in row, rolled
-- back below, gives the row triggers of audit_nodes something to refuse
SAVEPOINT immutable;
INSERT INTO fintx.audit_nodes (level, idx, hash) VALUES (4, 0, sha256('stand-in'));
SELECT throws_ok(q, '42501', NULL, q || ': refused (42501)')
  FROM (VALUES ('UPDATE fintx.audit_entries SET actor = ''mallory'''),
               ('DELETE FROM fintx.audit_entries'),
               ('TRUNCATE fintx.audit_entries'),
               ('UPDATE fintx.audit_leaf_runs SET block_id = block_id'),
               ('DELETE FROM fintx.audit_leaf_runs'),
               ('TRUNCATE fintx.audit_leaf_runs'),
               ('UPDATE fintx.audit_nodes SET hash = hash'),
               ('DELETE FROM fintx.audit_nodes'),
               ('TRUNCATE fintx.audit_nodes'),
               ('UPDATE fintx.audit_blocks SET signature = ''\x00'''),
               ('DELETE FROM fintx.audit_blocks'),
               ('TRUNCATE fintx.audit_blocks')) AS v(q);
ROLLBACK TO SAVEPOINT immutable;
RELEASE SAVEPOINT immutable;
SELECT throws_ok('DELETE FROM fintx.audit_entries', '42501', 'DELETE on table "audit_entries" is not allowed',
                 'the refusal names the operation and the table');
SELECT throws_ok($$SELECT pg_temp.run_as('t005_admin', 'WITH u AS (UPDATE fintx.audit_entries SET actor = ''x'' RETURNING 1) SELECT count(*) FROM u')$$,
                 '42501', NULL, 'a fintx_admin cannot UPDATE audit entries either');
SELECT ok(NOT has_table_privilege('fintx_admin', 'fintx.' || t, 'UPDATE')
          AND NOT has_table_privilege('fintx_admin', 'fintx.' || t, 'DELETE')
          AND NOT has_table_privilege('fintx_admin', 'fintx.' || t, 'TRUNCATE')
          AND NOT has_table_privilege('fintx_admin', 'fintx.' || t, 'INSERT'),
          'fintx_admin holds no write privilege on fintx.' || t)
  FROM unnest(ARRAY['audit_entries', 'audit_leaf_runs', 'audit_nodes', 'audit_blocks']) t;
SELECT is((SELECT format('%s/%s/%s/%s', (SELECT count(*) FROM fintx.audit_entries), (SELECT count(*) FROM fintx.audit_leaves),
                         (SELECT count(*) FROM fintx.audit_nodes), (SELECT count(*) FROM fintx.audit_blocks))),
          '5/5/0/1', 'audit tables unchanged: 5 entries, 5 leaves, no stored subtree (none of 16 leaves yet), 1 block');

-- ===========================================================================
-- 6. views and verification
-- ===========================================================================
SELECT columns_are('fintx', 'audit_log',
    ARRAY['entry_id', 'leaf_index', 'recorded_at', 'actor', 'action', 'object_type', 'object_id', 'details', 'entry_hash'],
    'audit_log has the contract columns');
SELECT is((SELECT entries::int FROM fintx.audit_actor_activity WHERE actor = current_user AND action = 'row.inserted'), 2,
          'audit_actor_activity: two inserts by the current role');
SELECT is((SELECT entries::int FROM fintx.audit_actor_activity WHERE actor = 't005_owner' AND action = 'row.inserted'), 1,
          'audit_actor_activity: one insert by t005_owner');
SELECT is((SELECT format('%s|%s|%s|%s|%s', block_id, tree_size, prev_block_hash = decode(repeat('00', 32), 'hex'),
                         signed, key_name IS NULL)
             FROM fintx.audit_checkpoints), '1|5|t|f|t',
          'audit_checkpoints: block 1 of size 5, chained to zero, unsigned without a key');
SELECT is((SELECT root_hash FROM fintx.audit_checkpoints WHERE block_id = 1), fintx.root_hash(5),
          'audit_checkpoints shows the tree head');
SELECT is((SELECT count(*)::int FROM fintx.audit_account_trail), 0, 'audit_account_trail is readable (no accounts here)');
SELECT is((SELECT format('%s|%s|%s', ok, entries_checked, first_bad_leaf IS NULL) FROM fintx.verify_audit()), 't|5|t',
          'verify_audit(): ok, 5 entries, no bad leaf');
SELECT matches((SELECT detail FROM fintx.verify_audit()), '5 entries', 'verify_audit() detail counts the entries');
SELECT is((SELECT format('%s|%s', ok, entries_checked) FROM fintx.verify_audit(1, 3)), 't|3', 'verify_audit(1, 3) checks 3 entries');
SELECT is((SELECT format('%s|%s', ok, entries_checked) FROM fintx.verify_audit(NULL, NULL)), 't|5',
          'verify_audit(NULL, NULL) checks the whole log');
SELECT is((SELECT array_agg(split_part(line, E'\t', 1) || ':' || (decode(split_part(line, E'\t', 2), 'hex') = l.data)
                            ORDER BY l.leaf_index)
             FROM fintx.audit_export() line JOIN leaves l ON l.leaf_index = split_part(line, E'\t', 1)::bigint),
          ARRAY['0:true', '1:true', '2:true', '3:true', '4:true'], 'audit_export() lists every leaf with its leaf_data');

-- ledger entries: the hash covers the details exactly as stored, whatever the metadata
-- (escapes, unicode, nested values, numbers in every form), for holds with a timeout, their
-- resolutions, and a batch
SELECT fintx.open_account('t005:a', 'EUR', allow_negative => true);
SELECT fintx.open_account('t005:b', 'EUR');
SELECT fintx.transfer('t005-1', 't005:a', 't005:b', 150,
       '{"note": "quote \" backslash \\ tab \t newline \n", "ünïcödé": "€ 𝄞 \u0001",
         "n": [1, 1.50, -0.0, 1e3, 12345678901234567890], "deep": {"a": {"b": [true, false, null]}},
         "": "empty key", "zz": {}, "a": []}'::jsonb);
SELECT fintx.transfer('t005-2', 't005:a', 't005:b', 7, pending => true, timeout => '1 hour');
SELECT fintx.post_pending('t005-3', (SELECT transfer_id FROM fintx.transfer('t005-2', 't005:a', 't005:b', 7, pending => true, timeout => '1 hour')), 5);
SELECT fintx.void_pending('t005-5', (SELECT transfer_id FROM fintx.transfer('t005-4', 't005:a', 't005:b', 9, pending => true)));
SELECT count(*) FROM fintx.transfer_batch('[{"idempotency_key": "t005-6", "from_account": "t005:a", "to_account": "t005:b", "amount": 1, "metadata": {"k\u00e9y": "v"}},
                                            {"idempotency_key": "t005-7", "from_account": "t005:a", "to_account": "t005:b", "amount": 2}]');
SELECT is((SELECT count(*)::int FROM fintx.audit_entries WHERE object_type = 'transfer'
             AND details->>'idempotency_key' LIKE 't005-%'), 7, 'seven ledger entries');
SELECT ok((SELECT bool_and(e.entry_hash = sha256('\x00'::bytea || pg_temp.canonical(e)))
             FROM fintx.audit_entries e WHERE object_type = 'transfer' AND details->>'idempotency_key' LIKE 't005-%'),
          'ledger entries: entry_hash = leaf hash of the canonical encoding rebuilt from the stored details');
SELECT ok((SELECT bool_and(t.entry_hash = e.entry_hash) FROM fintx.transfers t
             JOIN fintx.audit_entries e ON e.object_type = 'transfer' AND e.object_id = t.id::text
            WHERE t.principal = current_user AND e.details->>'idempotency_key' LIKE 't005-%'),
          'each transfer row carries the hash of its audit entry');

-- ===========================================================================
-- 7. (last: it adds an entry) a row image never runs user code as the extension owner
-- ===========================================================================
-- a column whose type has a cast to json: the row image calls it as the role that made the
-- change, never as the extension owner (the table's owner can add such a column)
CREATE TYPE public.t005_tag AS ENUM ('x');
CREATE TABLE public.t005_cast_calls (who text, super boolean);
GRANT ALL ON public.t005_cast_calls TO PUBLIC;
CREATE FUNCTION public.t005_tag_json(public.t005_tag) RETURNS json LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO public.t005_cast_calls
    SELECT current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user;
    RETURN '"x"';
END $f$;
CREATE CAST (public.t005_tag AS json) WITH FUNCTION public.t005_tag_json(public.t005_tag);
ALTER TABLE public.t005_owned ADD COLUMN tag public.t005_tag;
SELECT lives_ok($$SELECT pg_temp.run_as('t005_owner', 'INSERT INTO public.t005_owned VALUES (2, ''tagged'', ''x'') RETURNING 1')$$,
                'the owner inserts a row with such a column');
SELECT is((SELECT count(*)::int FROM public.t005_cast_calls), 0,
          'the cast is not run (the image is the column''s text output)');
SELECT is((SELECT details->'new'->>'tag' FROM fintx.audit_log WHERE object_id = 'public.t005_owned' AND details->'new'->>'id' = '2'),
          'x', 'and the row image holds its value');
-- the same type inside a composite column (to_jsonb() runs the cast for each attribute)
CREATE TYPE public.t005_tagged AS (label text, tag public.t005_tag);
CREATE TABLE public.t005_comp (id int PRIMARY KEY, c public.t005_tagged, cs public.t005_tagged[]);
SELECT fintx.audit_table('public.t005_comp');
INSERT INTO public.t005_comp VALUES (1, ROW('a', 'x'), ARRAY[ROW('b', 'x')::public.t005_tagged]);
SELECT is((SELECT count(*)::int FROM public.t005_cast_calls), 0,
          'a composite column (and an array of it) holding such a type: the cast is not run either');
SELECT is((SELECT (details->'new'->>'c') || ' ' || (details->'new'->>'cs') FROM fintx.audit_log WHERE object_id = 'public.t005_comp'),
          '(a,x) {"(b,x)"}', 'and their images are their text output');
-- partitioned tables: refused (a TRUNCATE of a partition would escape the parent's triggers)
CREATE TABLE public.t005_parted (id int) PARTITION BY RANGE (id);
CREATE TABLE public.t005_part1 PARTITION OF public.t005_parted FOR VALUES FROM (0) TO (100);
SELECT throws_ok($$SELECT fintx.audit_table('public.t005_parted')$$, '0A000', '"t005_parted" is a partitioned table',
                 'audit_table on a partitioned table: 0A000');
SELECT throws_ok($$SELECT fintx.append_only('public.t005_parted')$$, '0A000', '"t005_parted" is a partitioned table',
                 'append_only on a partitioned table: 0A000');
SELECT lives_ok($$SELECT fintx.append_only('public.t005_part1')$$, 'a partition itself can be made append-only');
SELECT throws_ok($$TRUNCATE public.t005_part1$$, '42501', NULL, 'and its TRUNCATE is refused');
-- a relation that does not exist: 42P01 for everyone (a superuser passes the owner check)
SELECT throws_ok($$SELECT fintx.audit_table(999999999)$$, '42P01', 'relation with OID 999999999 does not exist',
                 'audit_table on an OID that names no relation: 42P01');
SELECT throws_ok($$SELECT fintx.append_only(999999999)$$, '42P01', 'relation with OID 999999999 does not exist',
                 'append_only on an OID that names no relation: 42P01');
SELECT throws_ok($$SELECT pg_temp.run_as('t005_admin', 'SELECT fintx.audit_table(999999999)')$$, '42P01',
                 'relation with OID 999999999 does not exist', 'the same for a fintx_admin who is not a superuser');
-- fintx's own tables: refused (fintx writes them without firing triggers)
SELECT throws_ok($$SELECT fintx.audit_table('fintx.transfers')$$, '0A000', '"transfers" is a table of fintx',
                 'audit_table on a table of fintx: 0A000');
SELECT throws_ok($$SELECT fintx.append_only('fintx.accounts')$$, '0A000', '"accounts" is a table of fintx',
                 'append_only on a table of fintx: 0A000');
SELECT is((SELECT count(*)::int FROM pg_catalog.pg_trigger WHERE tgrelid IN ('fintx.transfers'::regclass, 'fintx.accounts'::regclass)
                                                              AND tgname LIKE 'fintx%'), 0,
          'and no trigger was attached');
-- inheritance parents: refused (a change made through the parent to a child's row fires the
-- child's triggers only)
CREATE TABLE public.t005_iparent (id int, v text);
CREATE TABLE public.t005_ichild () INHERITS (public.t005_iparent);
SELECT throws_ok($$SELECT fintx.audit_table('public.t005_iparent')$$, '0A000', '"t005_iparent" has inheritance children',
                 'audit_table on an inheritance parent: 0A000');
SELECT throws_ok($$SELECT fintx.append_only('public.t005_iparent')$$, '0A000', '"t005_iparent" has inheritance children',
                 'append_only on an inheritance parent: 0A000');
SELECT lives_ok($$SELECT fintx.audit_table('public.t005_ichild')$$, 'a child itself can be audited');
-- a row image does not depend on the writer's session settings
CREATE TABLE public.t005_settings (id int PRIMARY KEY, f float8, at timestamptz, b bytea, iv interval);
SELECT fintx.audit_table('public.t005_settings');
SET LOCAL extra_float_digits = -15;
SET LOCAL DateStyle = 'SQL, DMY';
SET LOCAL TimeZone = 'Asia/Kolkata';
SET LOCAL bytea_output = 'escape';
SET LOCAL IntervalStyle = 'sql_standard';
INSERT INTO public.t005_settings VALUES (1, 123.456, '2024-02-01 10:00:00+00', '\x00ff', '1 day 2 hours');
UPDATE public.t005_settings SET f = 149.999 WHERE id = 1;
RESET extra_float_digits; RESET DateStyle; RESET TimeZone; RESET bytea_output; RESET IntervalStyle;
SELECT is((SELECT details->'new' FROM fintx.audit_log WHERE object_id = 'public.t005_settings' AND action = 'row.inserted'),
          '{"id": 1, "f": 123.456, "at": "2024-02-01T10:00:00+00:00", "b": "\\x00ff", "iv": "1 day 02:00:00"}'::jsonb,
          'row images are written with fixed settings (float digits, ISO dates in UTC, hex bytea, postgres intervals)');
SELECT is((SELECT details->'old'->>'f' || ' -> ' || (details->'new'->>'f') FROM fintx.audit_log
            WHERE object_id = 'public.t005_settings' AND action = 'row.updated'),
          '123.456 -> 149.999', 'a change stays visible whatever extra_float_digits the writer set');
-- a write into an audited table from a maintenance command (here REFRESH MATERIALIZED VIEW,
-- which runs the owner's code in a security-restricted operation) is refused: 42501
CREATE FUNCTION public.t005_write_note() RETURNS int LANGUAGE sql VOLATILE
    AS $f$INSERT INTO public.t005_notes VALUES (900, 'from a refresh') RETURNING 1$f$;
CREATE MATERIALIZED VIEW public.t005_mv AS SELECT public.t005_write_note() AS n WITH NO DATA;
SELECT throws_ok($$REFRESH MATERIALIZED VIEW public.t005_mv$$, '42501',
                 'cannot change the audited table "t005_notes" within a security-restricted operation',
                 'an audited write inside REFRESH MATERIALIZED VIEW: 42501');
-- a hold's timeout in its audit entry is UTC ISO text, whatever the writer's TimeZone and DateStyle
SET TimeZone = 'Asia/Kolkata';
SET DateStyle = 'German';
SELECT fintx.open_account('t005:tz-a', 'EUR', allow_negative => true);
SELECT fintx.open_account('t005:tz-b', 'EUR');
SELECT is((SELECT status FROM fintx.transfer('t005-tz', 't005:tz-a', 't005:tz-b', 5, pending => true, timeout => '1 hour')),
          'pending', 'a hold made in Asia/Kolkata');
SELECT matches((SELECT details->>'timeout_at' FROM fintx.audit_entries WHERE action = 'transfer.pending'
                 AND details->>'idempotency_key' = 't005-tz'),
               '^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00$', 'its timeout_at is written in UTC, ISO');
SELECT is((SELECT (details->>'timeout_at')::timestamptz FROM fintx.audit_entries WHERE action = 'transfer.pending'
            AND details->>'idempotency_key' = 't005-tz'),
          (SELECT timeout_at FROM fintx.transfers t JOIN fintx.idempotency_keys k ON k.transfer_id = t.id
            WHERE k.idempotency_key = 't005-tz'), 'and names the same instant as the transfer row');
RESET TimeZone;
RESET DateStyle;

-- a column type's owner adds a cast to json: the audit trigger never runs it (it would run as
-- whoever changes a row, a superuser included, and could write any image it likes); such a
-- column is imaged as its text output
CREATE ROLE t005_typeowner NOLOGIN;
CREATE SCHEMA t005_types AUTHORIZATION t005_typeowner;
SET ROLE t005_typeowner;
CREATE TYPE t005_types.status AS ENUM ('open', 'frozen');
RESET ROLE;
CREATE TABLE public.t005_flags (id int PRIMARY KEY, st t005_types.status, sts t005_types.status[], gone int);
ALTER TABLE public.t005_flags DROP COLUMN gone;
SELECT fintx.audit_table('public.t005_flags');
INSERT INTO public.t005_flags VALUES (1, 'open', '{open}');
CREATE TABLE public.t005_lie_calls (who text);
GRANT INSERT ON public.t005_lie_calls TO t005_typeowner;
SET ROLE t005_typeowner;
CREATE FUNCTION t005_types.lie(s t005_types.status) RETURNS json LANGUAGE plpgsql AS $f$
BEGIN INSERT INTO public.t005_lie_calls VALUES (current_user); RETURN '"open"'::json; END $f$;
CREATE CAST (t005_types.status AS json) WITH FUNCTION t005_types.lie(t005_types.status);
RESET ROLE;
SET quote_all_identifiers = on;
UPDATE public.t005_flags SET st = 'frozen', sts = '{open,frozen}' WHERE id = 1;
RESET quote_all_identifiers;
SELECT is((SELECT count(*)::int FROM public.t005_lie_calls), 0, 'a user-defined cast to json of a column type is never run');
SELECT is((SELECT details->'new' FROM fintx.audit_log WHERE action = 'row.updated' AND details->>'table' = 'public.t005_flags'),
          '{"id": 1, "st": "frozen", "sts": "{open,frozen}"}'::jsonb,
          'the image holds the stored values, as their text output');
SELECT is((SELECT details->'old' FROM fintx.audit_log WHERE action = 'row.updated' AND details->>'table' = 'public.t005_flags'),
          '{"id": 1, "st": "open", "sts": "{open}"}'::jsonb, 'also the old image');
SELECT is((SELECT details->'new' FROM fintx.audit_log WHERE action = 'row.inserted' AND details->>'table' = 'public.t005_flags'),
          '{"id": 1, "st": "open", "sts": ["open"]}'::jsonb, 'before the cast existed: as to_jsonb() images them');
SELECT is((SELECT string_agg(DISTINCT object_id, ',') FROM fintx.audit_log WHERE details->>'table' LIKE '%t005_flags%'),
          'public.t005_flags', 'quote_all_identifiers does not change how the table is named');
SELECT * FROM finish();
ROLLBACK;
