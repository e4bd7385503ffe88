"""Rekeying: moving every person hash the ledger keeps from the person key it was made with
to a new one, so a rotated key leaves no person unreachable for erasure.

``config`` declares the rekey DAG's params; ``process`` rewrites one holding's hashes in
bounded transactions, resumable.

Owns: nothing (it rewrites identity's and holdings' hashes through their own rules).
May import: common, holdings, identity
"""
