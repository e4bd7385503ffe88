"""Persons as the ledger names them: keyed hashes under a keyring (never an id), the key ids,
the erased held back under every holding's fence (``rekeying`` moves them to a new key).

Owns: suppressions, fences, erasures, person_keys.
May import: common, store, planner, extract, holdings
"""
