"""What each Synap target holds of each source: the inventory by bucket, held turns one by
one, the source's edits and deletions found turn by turn, the reads checked against the
source, and the guard on what an apply would delete.

Owns: holdings, runs, inventory, plan_buckets, held_turns, source_changes.
May import: common, store, planner, extract
"""
