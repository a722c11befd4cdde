-- PostgreSQL only (the usage function checks what the foreign keys of usage_records
-- checked); SQLite keeps its foreign keys.
SELECT 1;
