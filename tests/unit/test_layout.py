"""The engine's layout holds: no import circle, no import upward between its concerns.

The graph is read from the code (every import, at the top of a module or inside a
function), and what a package may import from its own docstring's ``May import:`` line,
so the layout the docstrings describe is the layout the code has.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest

import synap_backfill

PACKAGE = Path(synap_backfill.__file__).parent
ENGINE = "synap_backfill"
SIDE = {"backfill", "undo", "erase"}  # the Airflow side's packages, one per DAG


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join((ENGINE, *path.relative_to(PACKAGE).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = {name: path for name, path in modules().items() if name != ENGINE}  # not the root


def imports(name: str, path: Path) -> set[str]:
    """The engine's modules ``name`` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name and t != ENGINE}
    return found


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def concern(name: str) -> str:
    """``synap_backfill.holdings.inventory`` → ``holdings``; a top-level module → ``(top)``."""
    parts = name.split(".")
    if len(parts) == 2:
        return "(top)" if not (PACKAGE / parts[1]).is_dir() else parts[1]
    return parts[1]


def allowed(package: str) -> set[str] | None:
    """What a concern's docstring says it may import (None: anything)."""
    if package in ("(top)", "airflow"):
        return None
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text())) or ""
    match = re.search(r"^May import: (.+)$", doc, re.MULTILINE)
    assert match, f"synap_backfill.{package}'s docstring says nothing of what it may import"
    names = match.group(1).strip()
    return set() if names == "nothing" else {n.strip() for n in names.split(",")}


CONCERNS = sorted({concern(m) for m in MODULES} - {"(top)", "airflow"})


def test_every_concern_says_what_it_owns_and_may_import_and_names_real_concerns():
    for package in CONCERNS:
        doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text())) or ""
        assert re.search(r"^Owns", doc, re.MULTILINE), f"{package}: say what it owns"
        assert allowed(package) <= set(CONCERNS), f"{package} may import an unknown concern"


def test_no_concern_imports_one_above_it_and_the_top_imports_no_airflow():
    upward = []
    for name, targets in GRAPH.items():
        mine, may = concern(name), allowed(concern(name))
        for target in targets:
            theirs = concern(target)
            if theirs == mine:
                continue
            if (may is not None and theirs not in may) or (mine == "(top)" and theirs == "airflow"):
                upward.append(f"{name} -> {target}")
    assert upward == []


def side(name: str) -> str | None:
    """``synap_backfill.airflow.undo.tasks`` → ``undo``; None outside a DAG's package."""
    parts = name.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "airflow" and parts[2] in SIDE else None


def test_the_airflow_side_of_one_dag_does_not_load_another_dags():
    crossing = [f"{name} -> {target}" for name, targets in GRAPH.items() for target in targets
                if side(name) and side(target) and side(name) != side(target)]
    assert crossing == []


def test_the_module_graph_has_no_circle():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(c.removeprefix(ENGINE + ".")
                                                          for c in cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("old, new", sorted(synap_backfill.MOVED.items()))
def test_a_moved_module_is_still_importable_by_its_old_path_with_a_warning_naming_its_removal(
        old, new):
    sys.modules.pop(f"{ENGINE}.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"{ENGINE}.{old}")
    real = importlib.import_module(f"{ENGINE}.{new}")
    assert module is real
    # A FutureWarning: shown by default, where a DeprecationWarning in a DAG file is not.
    assert any(issubclass(w.category, FutureWarning) and new in str(w.message)
               and synap_backfill.MOVED_REMOVED_IN in str(w.message) for w in caught)
    # The real module keeps its own spec (importlib.reload finds a module by it).
    assert real.__spec__.name == f"{ENGINE}.{new}" and real.__spec__.origin == real.__file__


EXTERNAL = ("maximem_synap", "airflow", "synap_provider", "stdnum", "phonenumbers", "sdk",
            "memories", "data", "credits", "package", "my_project", "pyproject", "regions",
            "self", "tests", "dataclasses", "database")
# A ``table.column`` reference names a ledger table, not a module.
TABLES = {m.group(1) for path in MODULES.values() for m in re.finditer(
    r"CREATE TABLE IF NOT EXISTS \{s\}\.(\w+)", path.read_text())}
DOTTED = re.compile(r"``(\w+(?:\.\w+)+)``")
FILE = re.compile(r"``([\w/]+)\.py``|\(([\w/]+)\.py\)")


def resolves(reference: str, module: str) -> bool:
    """A ``module.name`` reference, from the engine's root or from ``module``'s own package."""
    parts = reference.split(".")
    for base in (ENGINE, module.rsplit(".", 1)[0], module):
        for k in range(len(parts), 0, -1):
            if f"{base}.{'.'.join(parts[:k])}" in MODULES:
                return True
    return reference.startswith(ENGINE + ".") and any(
        ".".join(parts[:k]) in MODULES for k in range(len(parts), 1, -1))


def test_a_docstring_names_only_modules_that_exist():
    stems = {path.stem for path in MODULES.values()} | {p.name for p in PACKAGE.rglob("*") if p.is_dir()}
    stale = []
    for name, path in MODULES.items():
        text = path.read_text()
        for match in DOTTED.finditer(text):
            ref = match.group(1)
            first = ref.split(".")[0]
            if (first in EXTERNAL or first in TABLES or not first[0].islower()
                    or ref.endswith((".py", ".yaml", ".toml", ".md"))):
                continue
            if not resolves(ref, name):
                stale.append(f"{name}: {ref}")
        for match in FILE.finditer(text):
            ref = next(g for g in match.groups() if g)
            if ref.split("/")[-1] not in stems and ref.split("/")[0] not in EXTERNAL:
                stale.append(f"{name}: {ref}.py")
    assert stale == []


SOURCE_SQL_MODULE = f"{ENGINE}.extract.source_sql"
MESSAGE_SQL_MODULE = "synap_backfill.extract.message_sql"
PROVIDER = Path(synap_backfill.__file__).resolve().parents[1] / "synap_provider"


def reads_a_whole_relation(tree: ast.AST) -> list[int]:
    """Lines of f-strings with ``FROM {x}`` or ``JOIN {x}`` not followed by ``.table``: a
    relation given whole (the source's). Ledger SQL names ``{schema}.its_table``."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.JoinedStr):
            continue
        parts = node.values
        for i, part in enumerate(parts[:-1]):
            text = part.value if isinstance(part, ast.Constant) else None
            after = parts[i + 2] if i + 2 < len(parts) else None
            if isinstance(text, str) and re.search(r"\b(FROM|JOIN)\s*\(?$", text) and \
                    isinstance(parts[i + 1], ast.FormattedValue) and not (
                        isinstance(after, ast.Constant) and str(after.value).startswith(".")):
                lines.append(node.lineno)
    return lines


def test_the_rule_for_source_sql_tells_a_source_read_from_a_ledger_read():
    assert reads_a_whole_relation(ast.parse('f"SELECT 1 FROM {relation} WHERE x"')) == [1]
    assert reads_a_whole_relation(ast.parse('f"SELECT 1 FROM {s}.held_turns"')) == []
    assert reads_a_whole_relation(ast.parse('f"must be from {low} to {high}"')) == []
    assert reads_a_whole_relation(ast.parse(MODULES[SOURCE_SQL_MODULE].read_text()))


def test_sql_against_the_source_is_written_in_its_one_module_alone():
    """``source_sql`` and its message-table implementation (``message_sql``): nowhere else."""
    paths = {**MODULES, **{f"synap_provider.{p.stem}": p for p in PROVIDER.glob("*.py")}}
    offenders = [f"{name}:{line}" for name, path in sorted(paths.items())
                 if name not in (SOURCE_SQL_MODULE, MESSAGE_SQL_MODULE)
                 for line in reads_a_whole_relation(ast.parse(path.read_text()))]
    assert offenders == [], "SQL against the source belongs in extract/source_sql.py"


# The SDK calls that read or change a Synap instance, and the one module allowed each: the
# send in delivery.sending, the status the verify step polls in delivery.verify, the rest in
# the undo's client. Each of those modules makes them through the one paced call.
SDK_CALLS = re.compile(r"\.(memories\.(batch_create|status|delete|get|create)|data\.delete)\(")
SDK_CALLERS = {"synap_backfill.delivery.sending", "synap_backfill.delivery.verify",
               "synap_backfill.deletion.undo"}


def test_synap_is_called_only_through_the_one_paced_call_from_delivery_and_deletion():
    import synap_provider

    callers = {name for name, path in MODULES.items() if SDK_CALLS.search(path.read_text())}
    provider = [p.name for p in Path(synap_provider.__file__).parent.rglob("*.py")
                if SDK_CALLS.search(p.read_text())]
    assert callers == SDK_CALLERS and provider == []
    # In the undo's client, every such call is made through its ``_call`` (``Calls``).
    undo = MODULES["synap_backfill.deletion.undo"].read_text()
    for line in undo.splitlines():
        if SDK_CALLS.search(line):
            assert "self._call(lambda: self.sdk." in line, line.strip()
    # The send and the status are handed to ``deliver`` (``Calls``) and ``check_extraction``
    # (``paced``), their only users.
    sending = MODULES["synap_backfill.delivery.sending"].read_text()
    assert "await calls(lambda: submit(docs), attempts" in sending
    verify = MODULES["synap_backfill.delivery.verify"].read_text()
    assert "await paced(pacer, lambda: status(ingestion_id)" in verify


SHARED_SIDE = {"shared", "compat", "approval", "lineage", "metrics", "source_hook",
               "verify_extraction"}


@pytest.mark.parametrize("dag_package", sorted(SIDE))
def test_each_dags_package_says_what_it_is_and_imports_only_what_its_docstring_allows(dag_package):
    doc = ast.get_docstring(ast.parse((PACKAGE / "airflow" / dag_package / "__init__.py").read_text()))
    assert doc and "TODO" not in doc
    match = re.search(r"^May import: (.+?)$(?:\n(.+?)$)?", doc, re.MULTILINE)
    assert match, f"airflow.{dag_package}: say what it may import"
    named = {n.strip() for n in " ".join(g for g in match.groups() if g).replace("(", ",")
             .replace(")", ",").replace(";", ",").split(",") if n.strip()}
    shared = {n.removeprefix("airflow.") for n in named} & SHARED_SIDE
    for name, targets in GRAPH.items():
        if side(name) != dag_package:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[1] == "airflow" and len(parts) > 2 and side(target) is None:
                assert parts[2] in shared, f"{name} -> {target}: not in its docstring"


def test_the_provider_sits_below_the_engine_and_only_its_ui_app_reads_the_engines_concerns():
    """``synap_provider``'s connection type, hook and assets are what the engine's concerns
    build on (``common.config`` imports them): they import nothing of the engine but
    ``common``. Its UI app sits above everything and reads the ledger through the concerns."""
    import synap_provider

    provider = Path(synap_provider.__file__).parent
    below = []
    for path in sorted(provider.glob("*.py")):
        if path.stem in ("ui_app",):  # the operator's view: the top of the stack
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(ENGINE + "."):
                if not node.module.startswith(f"{ENGINE}.common"):
                    below.append(f"synap_provider.{path.stem} -> {node.module}")
    assert below == []
    # And the engine never imports the UI app.
    assert not [name for name, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module == "synap_provider.ui_app"]
