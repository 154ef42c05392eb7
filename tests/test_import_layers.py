"""The package's import order: a module never imports from a higher layer (read with ast, not run).

Layers, lowest first (the README's "Package layers"): utils, config and cli (0: helpers, the
config keys every layer reads, the tools' command-line rules), data (1), evaluation (2: scores
predictions against the data's ground truth, never needs the model), modeling (3), sam (4),
engine (5), tools (6: scripts outside the package). The package root ``dearli/__init__.py`` imports data and modeling to register them and is
not part of any layer.
"""
import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "dearli"
LAYERS = {"utils": 0, "config": 0, "cli": 0, "data": 1, "evaluation": 2, "modeling": 3, "sam": 4, "engine": 5,
          "tools": 6}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path):
    """(line, absolute dotted name) of every import in ``path``, relative ones resolved."""
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from dearli import data" imports the module dearli.data
            yield from ((node.lineno, f"{base}.{alias.name}" if base == root.name else base) for alias in node.names)


def layer_of(module: str, root_name: str):
    parts = module.split(".")
    if parts[0] == "tools":
        return "tools"
    if parts[0] != root_name or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def layer_violations(root: Path):
    """"file:line: <layer> imports <module> (<higher layer>)" for every upward import under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        own = layer_of(module_name(path, root), root.name)
        if own is None:  # the package root
            continue
        for line, target in imported_modules(path, root):
            other = layer_of(target, root.name)
            if other is not None and LAYERS[other] > LAYERS[own]:
                found.append(f"{path.relative_to(root.parent)}:{line}: {own} imports {target} ({other})")
    return found


def test_every_package_module_belongs_to_a_layer():
    top = {p.stem if p.is_file() else p.name for p in PACKAGE_ROOT.iterdir()
           if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.name != "__init__.py"}
    assert top == set(LAYERS) - {"tools"}


def test_dearli_never_imports_from_a_higher_layer():
    assert layer_violations(PACKAGE_ROOT) == []


@pytest.mark.parametrize("source, expected", [
    ("from ..engine.trainer import DEARLiTrainer\n", "data imports dearli.engine.trainer (engine)"),
    ("from dearli import modeling\n", "data imports dearli.modeling (modeling)"),
    ("import dearli.sam.generator\n", "data imports dearli.sam.generator (sam)"),
    ("def late():\n    from tools import train_net\n", "data imports tools (tools)"),
])
def test_checker_reports_an_upward_import(tmp_path, source, expected):
    package = tmp_path / "dearli"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "loader.py").write_text("from .. import utils\nfrom ..config import x\n" + source)
    [violation] = layer_violations(package)
    assert violation.endswith(expected) and violation.startswith("dearli/data/loader.py:")
