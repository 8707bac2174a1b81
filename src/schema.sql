/*
 * src/schema.sql — roles, schema objects and privileges shared by every module.
 * Assembled first into fintx--<version>.sql by the Makefile.
 */
\echo Use "CREATE EXTENSION fintx" to load this file. \quit

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
