"""The deployment's source declaration: what a source is and what document each turn becomes.

Declared once per source, in the user's project (a YAML file beside
``regions.yaml``, or ``SourceDeclaration.of(...)`` in a DAG file), and read the
same way by every DAG built from it: the backfill, each region replay, undo,
erase, rekey. A trigger's conf varies a run (range, windows, dry run, sample,
approval, apply and its guards, verify, resend), never what it may reach: the
connections, the relation and its columns, time zone, tiebreak, the document
settings (mode, length limit, redaction, transform), the ledger and the key
connections are ``DECLARED`` here and fixed in every form built from it.

Validated when the DAG file is parsed, with no I/O but reading the file: an
unknown key, a malformed column name or zone is an import error that names it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from synap_backfill.common.checks import ParamError
from synap_backfill.common.config import COLUMN_NAMES, BackfillConfig

SOURCE_FILE_ENV = "SYNAP_SOURCE_FILE"
# The release that stops taking the source from the trigger form (a DAG built without a declaration).
FORM_SOURCE_REMOVED_IN = "0.3.0"
# The backfill params a declaration fixes: everything a run could otherwise reach or reshape.
DECLARED = (
    "postgres_conn_id", "source_table", "source_query",
    *(f"{name}_column" for name in COLUMN_NAMES),
    "tiebreak_column", "source_timezone", "source_statement_timeout",
    "message_key_column", "created_at_format", "conversation_ids", "messages",
    "mode", "max_document_chars",
    "redact_pii", "pii_entities", "pii_replacement", "pii_phone_regions", "pii_token_key_conn_id",
    "document_transform",
    "synap_conn_id", "ledger_conn_id", "ledger_schema", "person_key_conn_id",
)
# Keys of a declaration that are not backfill params: what it says about deleting.
POLICY = ("approve_deletes",)


class SourceDeclarationError(ValueError):
    """A declaration that cannot be used; the message names where it is and the key."""


@dataclass(frozen=True)
class SourceDeclaration:
    """The declared values of every ``DECLARED`` param (a key left out takes its default), and
    ``approve_deletes``: every undo or erasure that deletes waits for a person's approval."""

    values: Mapping[str, Any]
    approve_deletes: bool = False
    origin: str = "the DAG file"

    @classmethod
    def of(cls, origin: str = "the DAG file", **declared: Any) -> "SourceDeclaration":
        """A declaration from keyword arguments (a DAG file's own); checked as a file's is."""
        return cls.from_mapping(declared, origin)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], origin: str) -> "SourceDeclaration":
        unknown = sorted(set(raw) - set(DECLARED) - set(POLICY))
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, [*DECLARED, *POLICY], n=1)
            raise SourceDeclarationError(
                f"{origin}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; a source declares {', '.join(DECLARED)} and {', '.join(POLICY)}")
        approve = raw.get("approve_deletes", False)
        if not isinstance(approve, bool):
            raise SourceDeclarationError(f"{origin}: 'approve_deletes' must be true or false")
        values = {k: v for k, v in raw.items() if k in DECLARED}
        try:
            checked = BackfillConfig.from_params(values)
        except ParamError as exc:
            raise SourceDeclarationError(f"{origin}: {exc}") from None
        dumped = checked.to_dict()
        return cls(values=MappingProxyType({name: dumped[name] for name in DECLARED}),
                   approve_deletes=approve, origin=origin)

    def overriding(self, origin: str, **changes: Any) -> "SourceDeclaration":
        """This declaration with some values changed explicitly (a region's connection)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        return SourceDeclaration.from_mapping(
            {**self.values, **changes, "approve_deletes": self.approve_deletes}, origin)

    @property
    def ledger_conn_id(self) -> str:
        """Where the ledger is: its own connection, else the source's."""
        return str(self.values["ledger_conn_id"] or self.values["postgres_conn_id"])

    def ledger_params(self) -> dict[str, Any]:
        """The declared values of an undo's, erasure's or rekey's ledger params."""
        return {"ledger_conn_id": self.ledger_conn_id, "ledger_schema": self.values["ledger_schema"],
                "person_key_conn_id": self.values["person_key_conn_id"]}

    def fixed(self, params: Any, *, backfill: bool) -> dict[str, Any]:
        """What this declaration fixes among a DAG's ``params``: a backfill's declared values;
        for a DAG that works on the ledger (undo, erase, rekey) its ledger params, and with
        ``approve_deletes`` its ``require_approval`` (undo's and erase's)."""
        every = dict(self.values)
        if not backfill:
            every.update(self.ledger_params())
            if self.approve_deletes:
                every["require_approval"] = True
        return {name: every[name] for name in params if name in every}

    def apply(self, params: Mapping[str, Any], conf: Mapping[str, Any] | None,
              fixed: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with ``fixed`` as declared. A ``conf`` giving one of them another value is
        refused (``ParamError`` naming it, never the value): the form sends the declared
        values back unchanged, so only a hand-written conf can differ."""
        refused = sorted(k for k, v in (conf or {}).items() if k in fixed and v != fixed[k])
        if refused:
            raise ParamError(refused[0], f"declared by the deployment ({self.origin}); a run"
                                         " cannot set it: change the declaration to change it")
        return {**params, **fixed}


def declared_form(model: Any, source: SourceDeclaration | None, *, backfill: bool = False,
                  **defaults: Any) -> dict[str, Any]:
    """A DAG's trigger form (``model``: its ``ParamsModel``) without a say in what ``source``
    declares; ``defaults`` change what the rest shows.

    A backfill's declared params are left off its form (its first task merges the declaration:
    nothing else reads them). A ledger DAG's (undo, erase, rekey) are ``const`` params, which
    Airflow's form hides and its API server holds to, since their tasks read them as params.
    """
    fixed = source.fixed(model.params(), backfill=backfill) if source else None
    if not (backfill and fixed):
        form: dict[str, Any] = model.form(fixed=fixed, **defaults)
        return form
    declared = sorted(set(defaults) & set(fixed))
    if declared:
        raise ParamError(declared[0], "declared by the deployment: not a default to change")
    form = model.form(**defaults)
    return {name: param for name, param in form.items() if name not in fixed}


def form_source_warning(dag_id: str) -> str:
    """What a DAG built without a declaration warns of: at parse time, and in each run's log."""
    return (f"DAG {dag_id!r} has no source declaration: it takes the source, connections, ledger "
            "and transform from the trigger form, so anyone who may trigger it can point it at "
            "any table its connections reach. Declare the source (synap_source.yaml, or source= "
            f"in build_backfill_dag); the form's source goes in {FORM_SOURCE_REMOVED_IN}")


def source_file(default: Path | str | None = None) -> Path | None:
    """``SYNAP_SOURCE_FILE`` when set, else the DAG file's own choice (None: none)."""
    chosen = os.environ.get(SOURCE_FILE_ENV) or default
    return Path(chosen) if chosen else None


def load_source(default: Path | str | None = None) -> SourceDeclaration | None:
    """The declaration in ``source_file(default)``.

    A file named by ``SYNAP_SOURCE_FILE`` must exist (a typo must not fall back to the
    form). Without that variable, no default file means no declaration: the DAGs take
    the source from the trigger form, deprecated (``FORM_SOURCE_REMOVED_IN``).
    """
    import yaml

    path = source_file(default)
    if path is None or not path.exists():
        if os.environ.get(SOURCE_FILE_ENV):
            raise SourceDeclarationError(f"{SOURCE_FILE_ENV} names {path}, which does not exist")
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SourceDeclarationError(f"{path}: not YAML ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("source"), dict):
        raise SourceDeclarationError(f"{path}: must hold a mapping under 'source'")
    extra = sorted(set(raw) - {"source"})
    if extra:
        raise SourceDeclarationError(f"{path}: unknown top-level key {extra[0]!r}; only 'source'")
    return SourceDeclaration.from_mapping(raw["source"], str(path.name))
