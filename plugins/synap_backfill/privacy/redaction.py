"""The run's redaction and ``document_transform``, built from its config once per task.

``check`` runs in preflight: it imports the transform and reads the token key,
so a wrong path or a missing key stops the run in one line before anything is
read. ``shaper_for`` builds the same in each partition: the key is read there
from its connection again and never crosses XCom (only its id does).
"""

from __future__ import annotations

from synap_backfill.common.config import BackfillConfig
from synap_backfill.privacy.pii import RedactionSettings, Redactor, key_id
from synap_backfill.privacy.turns import TransformNotUsable, TurnShaper, load_transform


class ShapingNotReady(ValueError):
    """A transform that does not import, or a token key that is missing: one line, named."""


def token_key(config: BackfillConfig) -> bytes:
    from synap_backfill.common.secrets import password_of

    key = password_of(config.pii_token_key_conn_id)
    if key is None:
        raise ShapingNotReady(
            f"connection {config.pii_token_key_conn_id!r} (param 'pii_token_key_conn_id') is"
            " missing or has no password: pii_replacement token keys its tokens with it, and there"
            " is no default key. Create it (any type; the password is the key, a long random"
            " string) and keep it: another key makes other tokens")
    return key


def check(config: BackfillConfig) -> str:
    """Preflight: the transform imports and is callable; the token key exists. Its id, or ""."""
    if config.document_transform:
        load_transform(config.document_transform)  # TransformNotUsable: a ValueError, one line
    if config.redact_pii and config.pii_replacement == "token":
        return key_id(token_key(config))
    return ""


def shaper_for(config: BackfillConfig) -> TurnShaper | None:
    """What the partition does to each turn's texts; None: nothing (sent as written)."""
    redactor = None
    if config.redact_pii:
        key = token_key(config) if config.pii_replacement == "token" else None
        if key is not None and key_id(key) != config.pii_key_id:
            raise ShapingNotReady(
                f"connection {config.pii_token_key_conn_id!r} holds another token key than when"
                " this run was planned: its tokens would not match the ones sent before."
                " Restore the key, or trigger a new run")
        redactor = Redactor(RedactionSettings(
            kinds=frozenset(config.pii_entities), replacement=config.pii_replacement,
            phone_regions=tuple(config.pii_phone_regions), token_key=key, scope=config.target))
    try:  # it imported in preflight; a worker without the module fails here, in one line
        transform = load_transform(config.document_transform) if config.document_transform else None
    except TransformNotUsable as exc:
        raise ShapingNotReady(f"{exc} on this worker") from None
    if redactor is None and transform is None:
        return None
    return TurnShaper(redactor, transform)
