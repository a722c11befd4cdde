-- PostgreSQL only (a function writing a usage batch in one round trip, the change feed of
-- credit grants); nothing to do on SQLite.
SELECT 1;
