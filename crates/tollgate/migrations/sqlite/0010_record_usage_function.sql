-- PostgreSQL only (a function writing a usage batch in one round trip); nothing to do on SQLite.
SELECT 1;
