"""What leaves a turn before it is sent: personal values found and replaced (redact_pii),
and the operator's document_transform.

Owns no ledger table.
May import: common
"""
