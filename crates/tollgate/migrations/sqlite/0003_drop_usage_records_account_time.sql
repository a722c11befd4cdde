-- Nothing reads usage_records by account and time: the activity endpoint reads the daily
-- roll-up (usage_daily) and a record is looked up by its request id. The index still cost
-- every usage commit a page of its own (one of eight for a one-record batch) and every
-- record an insertion into it.
DROP INDEX usage_records_account_time;
