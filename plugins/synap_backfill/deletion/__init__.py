"""Deleting what was written, for good: the one memory-deletion path (status, then each memory,
paced, write-ahead, resumable) that an apply, an undo and an erasure all take; the undo of
one run; the erasure of one person in every target.

Owns: undo_checkpoints, undo_unreached, undone, undos, erase_documents.
May import: common, store, planner, extract, privacy, delivery, holdings, identity
"""
