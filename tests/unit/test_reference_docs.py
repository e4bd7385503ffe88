"""The docs name only params and extras the models declare, with the models' defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from include.reference_docs import REFERENCE, render
from synap_backfill.common.config import BackfillConfig
from synap_backfill.deletion.erase_config import EraseConfig
from synap_backfill.deletion.undo_config import UndoConfig
from synap_backfill.rekeying.config import RekeyConfig
from synap_provider.connection_fields import SynapExtras

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
PARAMS = {**BackfillConfig.params(), **UndoConfig.params(), **EraseConfig.params(),
          **RekeyConfig.params()}
EXTRAS = SynapExtras.model_fields

# How the prose names a param or an extra, and states its default.
PARAM_NAMED = (re.compile(r"param `(\w+)`"), re.compile(r"param '(\w+)'"),
               re.compile(r"`(\w+)`\**\s+\(param\b"))
EXTRA_NAMED = (re.compile(r"extra `(\w+)`"), re.compile(r"`(\w+)`\**\s+\(connection extra\b"))
DEFAULT_STATED = re.compile(r"`(\w+)`\**\s+\((?:param|connection extra), (?:default )?([\w.]+)")


def named(patterns: tuple[re.Pattern[str], ...]) -> list[tuple[str, str]]:
    return [(doc.name, match.group(1)) for doc in DOCS for pattern in patterns
            for match in pattern.finditer(doc.read_text())]


def test_the_reference_is_what_the_models_generate():
    assert REFERENCE.read_text() == render(), "docs/reference.md is stale: run make docs"


def test_the_reference_lists_every_param_and_extra():
    text = REFERENCE.read_text()
    for name in [*BackfillConfig.params(), *UndoConfig.params(), *EraseConfig.params(),
                 *RekeyConfig.params(), *EXTRAS]:
        assert f"| `{name}` |" in text


@pytest.mark.parametrize("doc, name", named(PARAM_NAMED))
def test_a_param_the_docs_name_is_declared(doc, name):
    assert name in PARAMS, f"{doc} names param {name!r}, which no model declares"


@pytest.mark.parametrize("doc, name", named(EXTRA_NAMED))
def test_an_extra_the_docs_name_is_declared(doc, name):
    assert name in EXTRAS, f"{doc} names extra {name!r}, which SynapExtras does not declare"


@pytest.mark.parametrize("doc, name, stated", [
    (doc.name, m.group(1), m.group(2)) for doc in DOCS for m in DEFAULT_STATED.finditer(doc.read_text())])
def test_a_default_the_docs_state_is_the_models(doc, name, stated):
    info = PARAMS.get(name) or EXTRAS.get(name)
    assert info is not None, f"{doc} states a default for {name!r}, which nothing declares"
    default = info.default
    words = {"off": False, "on": True, "empty": None}
    expected = words[stated] if stated in words else type(default)(stated) if default is not None else stated
    assert default == expected, f"{doc}: {name} defaults to {default!r}, not {stated!r}"
