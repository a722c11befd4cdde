-- PostgreSQL only (a leaner usage function); nothing to do on SQLite.
SELECT 1;
