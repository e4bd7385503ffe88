"""One partition's work, stage by stage: read the window, skip what the target holds, build
and redact documents, batch and send them paced, apply the answers in order and checkpoint;
and the partition's set-up and time limit.

Owns no ledger table (it writes through the store and the holdings).
May import: common, store, planner, extract, privacy, delivery, holdings, identity, deletion
"""
