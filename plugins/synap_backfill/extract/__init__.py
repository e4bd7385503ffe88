"""Reading the source: every SQL statement against it (``source_sql``, ``message_sql``), the
relation's rows in the backfill's order, its buckets counted and fingerprinted for the
planner, and copies of a turn.

Owns: source_copies.
May import: common, planner
"""
