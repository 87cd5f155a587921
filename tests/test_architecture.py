"""The import contracts of docs/architecture.md, checked by import-linter.

Each contract is also run on a small stand-in for ``backends`` that breaks it, so that a
contract that no longer matches anything (a renamed package, a typo) fails here instead
of passing forever.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

import backends

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def importlinter_config() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["importlinter"]
    return config


def contract(contract_id: str) -> dict[str, Any]:
    contracts: list[dict[str, Any]] = importlinter_config()["contracts"]
    (found,) = [c for c in contracts if c["id"] == contract_id]
    return found


def lint_imports(cwd: Path, *contract_ids: str) -> subprocess.CompletedProcess[str]:
    chosen = [arg for cid in contract_ids for arg in ("--contract", cid)]
    # A fresh interpreter: grimp finds the package through sys.path, and in this one
    # ``backends`` is already the real package.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", *chosen],
        cwd=cwd,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def stand_in(tmp_path: Path, modules: dict[str, str]) -> Path:
    """A ``backends`` package with every module the contracts name, empty but for
    ``modules`` (dotted name -> source), beside a pyproject.toml with our contracts."""
    tmp_path.mkdir()
    config = importlinter_config()
    names = {"backends.core.gallery", "backends.services.jobs", "backends.web.pages"}
    sources: dict[str, list[str]] = {}
    for entry in config["contracts"]:
        for key in ("source_modules", "forbidden_modules", "modules"):
            names.update(n for n in entry.get(key, []) if n.startswith("backends"))
        for ignored in entry.get("ignore_imports", []):
            importer, _, imported = (part.strip() for part in ignored.partition("->"))
            names.add(importer)
            sources.setdefault(importer, []).append(f"import {imported}")
    # Every external package a contract forbids must be in the graph to be checked.
    externals = {
        n
        for entry in config["contracts"]
        for n in entry.get("forbidden_modules", [])
        if not n.startswith("backends")
    }
    sources.setdefault("backends.urls", []).extend(f"import {n}" for n in externals)
    for name, source in modules.items():
        names.add(name)
        sources.setdefault(name, []).append(textwrap.dedent(source))
    for name in names:
        parts = name.split(".")
        for depth in range(1, len(parts)):
            package = tmp_path.joinpath(*parts[:depth])
            package.mkdir(exist_ok=True)
            (package / "__init__.py").touch()
        path = tmp_path.joinpath(*parts).with_suffix(".py")
        if path.with_suffix("").is_dir():
            path = path.with_suffix("") / "__init__.py"
        path.write_text("\n".join(sources.get(name, [])) + "\n")
    lines = ["[tool.importlinter]"]
    lines += [
        f"{key} = {value!r}" for key, value in config.items() if key != "contracts"
    ]
    for entry in config["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        lines += [f"{key} = {value!r}" for key, value in entry.items()]
    text = "\n".join(lines).replace("True", "true").replace("False", "false")
    (tmp_path / "pyproject.toml").write_text(text + "\n")
    return tmp_path


def test_the_project_keeps_every_import_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_core_contract_names_every_other_part_of_the_app() -> None:
    # The core may import only itself: a new module beside it must join the list.
    top_level = {
        f"backends.{path.stem}"
        for path in Path(backends.__file__).parent.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path / "__init__.py").is_file()
    }
    forbidden = set(contract("core-is-pure")["forbidden_modules"])
    assert top_level - {"backends.core"} == {
        name for name in forbidden if name.startswith("backends.")
    }


BREACHES = {
    "the core imports Django": (
        "core-is-pure",
        {"backends.core.gallery": "from django.conf import settings"},
    ),
    "the core imports the models": (
        "core-is-pure",
        {"backends.core.gallery": "from backends import models"},
    ),
    "the models dispatch lazily, inside a method": (
        "models-hold-data",
        {
            "backends.models": """
            def enqueue():
                from backends.services import dispatch
            """
        },
    ),
    "the models import a Huey task": (
        "models-hold-data",
        {"backends.models": "import backends.tasks"},
    ),
    "a service imports a page": (
        "services-serve-both",
        {"backends.services.jobs": "from backends.web import pages"},
    ),
    "a page imports the API": (
        "pages-and-api-apart",
        {"backends.web.pages": "import backends.api"},
    ),
    "two modules of one package import each other": (
        "no-cycles",
        {
            "backends.services.jobs": "from backends.services import nodes",
            "backends.services.nodes": """
            def later():
                from backends.services import jobs
            """,
        },
    ),
    "a service and a module beside the layers import each other": (
        "no-cycles",
        {
            "backends.services.jobs": "import backends.fixedsql",
            "backends.fixedsql": "def later():\n    import backends.services.jobs",
        },
    ),
}


@pytest.mark.parametrize("breach", BREACHES, ids=list(BREACHES))
def test_each_contract_fails_on_the_import_it_forbids(
    tmp_path: Path, breach: str
) -> None:
    contract_id, modules = BREACHES[breach]

    kept = lint_imports(stand_in(tmp_path / "kept", {}), contract_id)
    broken = lint_imports(stand_in(tmp_path / "broken", modules), contract_id)

    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"{contract(contract_id)['name']} BROKEN" in broken.stdout
