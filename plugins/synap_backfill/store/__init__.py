"""The ledger's shared store: one partition's checkpoint, sent mark, fence, rejected rows and
accepted ingestion ids, kept in PostgreSQL. Below every concern that writes with a
checkpoint: those writes come to it as functions of the transaction (``Ledger.save``'s
``writes``), so it imports none of them.

Owns: checkpoints, rejected_rows, ingestions.
May import: common
"""
