"""Reading and planning the source: every SQL statement against it (``source_sql``, alone),
the relation's rows in the backfill's order, its buckets
counted and fingerprinted, copies of a turn, and the plan by difference against what the
target holds (window bounds, never rows).

Owns: source_copies.
May import: common
"""
