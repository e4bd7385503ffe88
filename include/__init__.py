"""The backfill engine and its local stand-ins, importable without a scheduler."""
