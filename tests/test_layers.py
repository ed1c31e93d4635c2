"""The layering and the 'declared, not coded' rule, checked on the source tree itself."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from foundations.catalog import list_configs
from foundations.profile import load_profile

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("foundations", "simulator", "quality", "training", "pipelines")
# What each package may import from this repository (layers run one way, bottom up).
ALLOWED = {
    "foundations": set(),
    "simulator": {"foundations"},
    "quality": {"foundations"},
    "training": {"foundations", "simulator"},
    "pipelines": set(PACKAGES),
}
PRODUCT = ("foundations", "quality", "training", "pipelines")  # the simulator may name its own robots


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_layers_run_one_way(package):
    bad = {f"{p.relative_to(REPO)} imports {sorted(imp - ALLOWED[package] - {package})}"
           for p in _modules(package) if (imp := _imported_packages(p)) - ALLOWED[package] - {package}}
    assert not bad, "\n".join(sorted(bad))


def _declared_names() -> set[str]:
    names = set()
    for kind in ("recipes", "sources", "robots", "targets"):
        names |= set(list_configs(kind))
    for robot in list_configs("robots"):
        names |= set(load_profile(robot).skills)
    return names


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """String literals that are not docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_source_recipe_robot_target_or_skill_name_in_product_code():
    names = _declared_names()
    assert {"ant", "ant_fleet_ros2", "ant_skills", "walk forward"} <= names  # the check sees the real catalog
    pattern = re.compile(r"(?<![\w-])(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")(?![\w-])")
    hits = [f"{p.relative_to(REPO)}:{line}: {text!r}"
            for package in PRODUCT for p in _modules(package)
            for line, text in _string_constants(p) if pattern.search(text)]
    assert not hits, "declare these in datasets/ instead:\n" + "\n".join(hits)
