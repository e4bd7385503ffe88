"""``make bench``: the vendor's recipe against this project's backfill, measured, not asserted."""
