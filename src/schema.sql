/*
 * src/schema.sql — roles, schema objects and privileges shared by every module.
 * Assembled first into fintx--<version>.sql by the Makefile.
 */
\echo Use "CREATE EXTENSION fintx" to load this file. \quit

-- The audit log hashes text as the database stores it, and auditors verify it offline as
-- UTF-8 (docs/audit-format.md): in another encoding a non-ASCII account code or metadata
-- value would make an honest log fail offline verification. Refuse up front.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() OPERATOR(pg_catalog.<>) 'UTF8' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = pg_catalog.format('fintx needs a UTF8 database, not %s', pg_catalog.getdatabaseencoding()),
            DETAIL = 'Audit entries carry text as the database stores it, and offline verification reads it as UTF-8.',
            HINT = 'Create the database with ENCODING ''UTF8'' (and TEMPLATE template0).';
    END IF;
END
$encoding$;

-- Cluster-wide roles, created once and kept across DROP EXTENSION.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'fintx_admin') THEN
        CREATE ROLE fintx_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'fintx_service') THEN
        CREATE ROLE fintx_service NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'fintx_auditor') THEN
        CREATE ROLE fintx_auditor NOLOGIN;
    END IF;
END
$roles$;

REVOKE ALL ON SCHEMA fintx FROM PUBLIC;
GRANT USAGE ON SCHEMA fintx TO fintx_admin, fintx_service, fintx_auditor;
