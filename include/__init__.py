"""Local tooling, never packaged: the local Synap API, the demo, the bench, the local stacks.

Run from a checkout (``python -m include.<tool>``); the product is the
``synap-backfill`` wheel built from ``plugins/``.
"""
