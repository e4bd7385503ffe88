"""The Synap target and what reaches it: documents built as the recipe does, the one paced
call every request to Synap goes through (``calls``: the shared pacing schedule, one retry
policy), batches sent, answers classified, what a partition counts, extraction verified,
credits.

Owns: pacing.
May import: common, store, planner, extract, privacy
"""
