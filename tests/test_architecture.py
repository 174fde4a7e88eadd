"""The package's shape (docs/architecture.md): no module reaches for another module's private names. The layering
itself is import-linter's to check (`make test` runs `lint-imports` on the contracts in pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "seekmoe"


def is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_uses(source: str, name: str = "<source>") -> list[str]:
    """`from seekmoe.x import _y`, and `m._y` where m names a seekmoe module: one line for each."""
    tree = ast.parse(source)
    modules: set[str] = set()  # local names bound to seekmoe modules
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.asname for a in node.names if a.name.startswith("seekmoe.") and a.asname)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "seekmoe":
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append((node.lineno, f"imports {node.module}.{a.name}"))
                elif is_module(f"{node.module}.{a.name}"):
                    modules.add(a.asname or a.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append((node.lineno, f"uses {node.value.id}.{node.attr}"))
    return [f"{name}:{line}: {what}" for line, what in sorted(found)]


def test_the_check_sees_both_ways_of_reaching_a_private_name():
    source = ("from seekmoe.model.checkpoint import _load\nfrom seekmoe.model import weights\n"
              "import seekmoe.model.quant as q\nweights._x()\nq._y\nweights.read_headers\n"
              "from seekmoe import __version__\n")
    assert private_uses(source) == ["<source>:1: imports seekmoe.model.checkpoint._load",
                                    "<source>:4: uses weights._x", "<source>:5: uses q._y"]


def test_no_module_uses_another_modules_private_names():
    files = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py"),
                    *(ROOT / "scripts").glob("*.py")])
    assert len(files) > 60
    found = [use for f in files for use in private_uses(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert found == []
