"""docs/reference.md, generated from the models that declare every param and extra.

    python -m include.reference_docs          # rewrite docs/reference.md
    python -m include.reference_docs --check  # exit 1 when it differs from the models

``tests/unit/test_reference_docs.py`` fails when the file and the models differ,
so a setting documented there is the setting the code reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = REPO_ROOT / "docs" / "reference.md"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _value(value: Any) -> str:
    """A default as JSON writes it (what a run's conf takes); empty for none."""
    return "empty" if value in (None, "") else f"`{json.dumps(value)}`"


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _set_by(model: Any, name: str) -> str:
    """Who sets a param in a DAG built from a source declaration: the deployment or the run."""
    from synap_backfill.common.config import BackfillConfig
    from synap_backfill.common.source import SourceDeclaration

    source = SourceDeclaration.of(approve_deletes=True)
    if name in source.fixed(model.params(), backfill=model is BackfillConfig):
        return "run, or the deployment" if name == "require_approval" else "deployment"
    return "run"


def _params_table(model: Any) -> list[str]:
    from synap_backfill.common.params import form_schema, param_meta

    fields = model.params()
    sectioned = any((param_meta(info) or {}).get("section") for info in fields.values())
    head = ["param", "set by", "type", "default", "allowed",
            *(["section"] if sectioned else []), "meaning"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, info in fields.items():
        meta = param_meta(info) or {}
        schema = form_schema(info)
        kind = schema["type"]
        kind = " or ".join(reversed(kind)) if isinstance(kind, list) else kind
        if "enum" in schema:
            allowed = ", ".join(f"`{v}`" for v in schema["enum"])
        elif "examples" in schema:
            allowed = "some of " + ", ".join(f"`{v}`" for v in schema["examples"])
        elif meta.get("minimum") is not None:
            allowed = f"{_number(meta['minimum'])} to {_number(meta['maximum'])}"
        else:
            allowed = ""
        default = "required" if meta.get("required") else _value(schema.get("default"))
        cells = [f"`{name}`", _set_by(model, name), kind, default, allowed,
                 *([meta.get("section") or ""] if sectioned else []), info.description or info.title]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return out


def _extras_table() -> list[str]:
    from synap_provider.connection_fields import SynapExtras, field_schema

    out = ["| extra | form label | type | default | allowed | meaning |", "|---|---|---|---|---|---|"]
    for name, info in SynapExtras.model_fields.items():
        schema = field_schema(info)
        meta = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        allowed = ""
        if meta.get("minimum") is not None:
            allowed = f"at least {_number(meta['minimum'])}"
            if meta.get("off") is not None:
                allowed += f", or {_number(meta['off'])} for off"
        default = _value(info.default)
        cells = [f"`{name}`", info.title, schema["type"][0], default, allowed, info.description]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return out


def render() -> str:
    """The whole of docs/reference.md."""
    from synap_backfill.common.config import BackfillConfig
    from synap_backfill.deletion.erase_config import EraseConfig
    from synap_backfill.deletion.undo_config import UndoConfig
    from synap_backfill.rekeying.config import RekeyConfig

    parts = [
        "# Reference: params and connection extras",
        "",
        "Generated from the models that declare them (`python -m include.reference_docs`);"
        " do not edit by hand: `tests/unit/test_reference_docs.py` fails when this file and"
        " the code differ.",
        "",
        "## Declared by the deployment (`include/synap_source.yaml`)",
        "",
        "The params whose \"set by\" below is *deployment* are the source declaration's keys"
        " (`synap_backfill.common.source.DECLARED`), declared once under `source:` in"
        " `include/synap_source.yaml` (or `SYNAP_SOURCE_FILE`, or `SourceDeclaration.of(...)` in"
        " a DAG file), with the same names, types and defaults as the tables give. Every DAG"
        " built from the declaration reads them from it: they are not on a backfill's trigger"
        " form (an undo's, erasure's or rekey's are hidden `const` params), and a"
        " run whose conf gives one another value is refused. An undo's, erasure's and rekey's"
        " ledger params are the declaration's `ledger_conn_id` (else `postgres_conn_id`),"
        " `ledger_schema` and `person_key_conn_id`. One more key is not a param:"
        " `approve_deletes` (default `false`): every undo and erasure that deletes waits for"
        " a person's approval (their `require_approval` is fixed on). A region's"
        " `regions.yaml` entry changes `synap_conn_id`, and `postgres_conn_id` or"
        " `source_table` where it names them. A DAG built without a declaration takes every"
        " param from the form, until 0.3.0.",
        "",
        "## Backfill params (`synap_backfill`, `synap_replay_<region>`)",
        "",
        "Declared once in `synap_backfill.common.config.BackfillConfig`: the trigger form (each field's"
        " JSON schema, checked by the API server when a run is triggered), the first task's"
        " validation (an error names the param, never its value), the defaults and the XCom"
        " that carries them. A region replay changes only the defaults its `regions.yaml` entry"
        " sets.",
        "",
        *_params_table(BackfillConfig),
        "",
        "## Undo params (`synap_undo`)",
        "",
        "Declared once in `synap_backfill.deletion.undo_config.UndoConfig`.",
        "",
        *_params_table(UndoConfig),
        "",
        "## Erase params (`synap_erase`)",
        "",
        "Declared once in `synap_backfill.deletion.erase_config.EraseConfig`. A `user_id` stays in the"
        " run's conf (Airflow's metadata) and goes nowhere else: the tasks pass the person's"
        " keyed hashes. The Synap page's \"Erase a user\" form triggers with `person` instead,"
        " so no id in clear is kept at all.",
        "",
        *_params_table(EraseConfig),
        "",
        "## Rekey params (`synap_rekey`)",
        "",
        "Declared once in `synap_backfill.rekeying.config.RekeyConfig`. The person key connection's"
        " password is the current key; its `previous_passwords` extra (a list) holds the keys"
        " before it, until this DAG retires them.",
        "",
        *_params_table(RekeyConfig),
        "",
        "## Synap connection extras (connection type `synap`)",
        "",
        "Declared once in `synap_provider.connection_fields.SynapExtras`: the Add Connection"
        " form's typed fields, the check when a connection is saved, the hook's settings and"
        " the retry policy's defaults. The host is the API base URL (empty: hosted Synap), the"
        " password the API key.",
        "",
        *_extras_table(),
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if REFERENCE.read_text() != text:
            print(f"{REFERENCE.relative_to(REPO_ROOT)} differs from the models: "
                  "run python -m include.reference_docs")
            return 1
        return 0
    REFERENCE.write_text(text)
    print(f"written {REFERENCE.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
