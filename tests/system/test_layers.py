"""The house by role: each subpackage imports only what its ``__init__`` docstring allows, so the folders
are the architecture. Read from the source (every import, including those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import flight_writer

ROOT = Path(flight_writer.__file__).parent

# what each role may import besides itself (the leaves _version and the standard library aside)
ALLOWED = {
    "config": set(),
    "lake": {"config"},
    "queue": {"config"},
    "write": {"config", "queue", "lake"},
    "ingest": {"config", "queue", "lake"},
}
LAYERS = set(ALLOWED)


def imports_of(path: Path) -> set[str]:
    """The flight_writer modules a file imports, as dotted names below flight_writer."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flight_writer"):
            base = node.module.split(".")[1:]
            found.add(".".join(base) if base else next(a.name for a in node.names))
            if not base:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("flight_writer."))
    return found


def role_of(module: str) -> str:
    return module.split(".")[0]


def test_every_role_imports_only_the_roles_below_it():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        role = role_of(path.relative_to(ROOT).as_posix().replace("/", "."))
        if role not in LAYERS:
            continue  # the edge (service, cli, status, metrics, console, ...) wires everything
        for module in imports_of(path):
            target = role_of(module)
            if target not in (role, "_version") and target not in ALLOWED[role]:
                wrong.append(f"{path.relative_to(ROOT)} imports flight_writer.{module}")
    assert wrong == []


def test_ingest_and_write_never_meet_but_through_the_queue():
    """The rule that lets them run as separate processes, stated on its own."""
    for role, other in (("ingest", "write"), ("write", "ingest")):
        for path in (ROOT / role).rglob("*.py"):
            assert not any(role_of(m) == other for m in imports_of(path)), path


def test_every_role_says_its_job_and_what_it_may_import():
    for package in sorted(p.parent for p in ROOT.rglob("__init__.py") if p.parent != ROOT):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
        assert len(doc) > 80, f"{package.relative_to(ROOT)}: no docstring saying its job"
        if package.name in LAYERS or package.parent.name in LAYERS:
            assert "May import" in doc, f"{package.relative_to(ROOT)}: says nothing of its imports"


def test_the_checker_sees_a_wrong_import(tmp_path):
    """A file in the lake that imports the writer is caught (the check can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    from flight_writer.write.writer import Writer\n    from flight_writer import config\n"
    )
    assert imports_of(bad) == {"write.writer", "config"}
    assert not {role_of(m) for m in imports_of(bad)} <= {"lake", *ALLOWED["lake"]}
