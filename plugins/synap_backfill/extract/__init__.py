"""Reading and planning the source: the relation's rows in the backfill's order, its buckets
counted and fingerprinted, copies of a turn, and the plan by difference against what the
target holds (window bounds, never rows).

Owns: source_copies.
May import: common
"""
