"""The Synap target and what reaches it: documents built as the recipe does, batches sent and
retried, the shared pacing schedule and its paced calls, answers classified, what a
partition counts, extraction verified, credits.

Owns: pacing.
May import: common, store, planner, extract, privacy
"""
