"""The shared parts every concern uses: the run's params and their checks, the backfill's
config, the inventory's buckets and the partition calendar, document ids, database helpers
(quoting, DDL, naming an error without its text), error scrubbing, connection secrets.

Owns no ledger table.
May import: nothing
"""
