-- setup: install fintx (pg_regress runs the other files in this database)
CREATE EXTENSION fintx;
SELECT extname, extversion, extrelocatable, n.nspname
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE extname = 'fintx';
SELECT count(*) >= 150 AS full_iso4217_table FROM fintx.currencies;
SELECT code, numeric_code, exponent FROM fintx.currencies
 WHERE code IN ('EUR', 'USD', 'JPY', 'KWD', 'CLF', 'BHD', 'ISK') ORDER BY code;
SELECT rolname FROM pg_roles WHERE rolname LIKE 'fintx\_%' ORDER BY 1;
