"""The package's layers: every import points down (or within its own layer), and no two packages import each
other. The layer list is the one docs/architecture.md states; the test fails when the two disagree.

Imports are read from the source (module level, inside functions, under TYPE_CHECKING alike), so a lazy
import that runs back up counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# bottom first; units on one line form one layer (they may import each other, never in a cycle)
LAYERS = [
    ["errors", "stats", "assets"],
    ["runtime"],
    ["config"],
    ["data", "model"],
    ["runs", "track"],
    ["train", "evaluation"],
    ["reuse"],
    ["packed", "sweep"],
    ["experiment"],
    ["run", "cli", "__main__"],
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}
PLUGINS = "hydra_plugins"  # Hydra's plugin shells sit above everything of dpo_lab's


def unit_of(module: str) -> str | None:
    """``dpo_lab.train.trainer`` -> ``train``; ``dpo_lab`` itself (its __init__) -> None."""
    parts = module.split(".")
    if parts[0] == PLUGINS:  # the bare namespace (dpo_lab.packed.discovery extends its path) is no unit
        return PLUGINS if len(parts) > 1 else None
    if parts[0] != "dpo_lab" or len(parts) < 2:
        return None
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import of dpo_lab in the file, resolved to absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            # `from dpo_lab import runs` imports the package dpo_lab.runs
            if base == "dpo_lab":
                found += [(node.lineno, f"dpo_lab.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in ("dpo_lab", PLUGINS)]


def source_files() -> list[Path]:
    files = sorted((ROOT / "dpo_lab").rglob("*.py")) + sorted((ROOT / PLUGINS).rglob("*.py"))
    return [f for f in files if "assets" not in f.parts and "conf" not in f.relative_to(ROOT).parts[:2]]


def edges() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, where) for every import between two different units."""
    out = []
    for path in source_files():
        source = unit_of(module_name(path))
        for line, target_module in imports(path):
            target = unit_of(target_module)
            if target is not None and source != target:
                out.append((source, target, f"{path.relative_to(ROOT)}:{line} imports {target_module}"))
    return out


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(p)) for p in source_files()} - {None, PLUGINS}
    assert units <= set(LEVEL), f"units without a layer: {sorted(units - set(LEVEL))}"


def test_the_package_itself_imports_nothing_of_its_own() -> None:
    """``import dpo_lab`` (which every submodule import runs first) stays free of side effects and loads."""
    assert imports(ROOT / "dpo_lab" / "__init__.py") == []


def test_no_import_runs_back_up() -> None:
    upward = []
    for source, target, where in edges():
        if target == PLUGINS:
            upward.append(where)  # nothing of dpo_lab's imports the plugin shells
        elif source != PLUGINS and LEVEL[target] > LEVEL[source]:
            upward.append(f"{where} ({source}: layer {LEVEL[source]}, {target}: layer {LEVEL[target]})")
    assert upward == []


def test_units_of_one_layer_do_not_import_each_other_both_ways() -> None:
    pairs = {(s, t) for s, t, _ in edges()}
    both = sorted({tuple(sorted(p)) for p in pairs if (p[1], p[0]) in pairs})
    assert both == []


def test_the_errors_module_is_the_bottom() -> None:
    assert [name for _, name in imports(ROOT / "dpo_lab" / "errors.py")] == []


def test_architecture_doc_states_these_layers() -> None:
    """docs/architecture.md's layer block lists the same layers, bottom last (as it is read, top down)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- layers -->\n```\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no layer block (<!-- layers --> then a fenced block)"
    stated = []
    for line in block.group(1).strip().splitlines():
        units = line.split("#")[0].strip()
        stated.append([u.strip().removesuffix("/").removesuffix(".py") for u in units.split(",")])
    assert stated == [[*units] for units in reversed(LAYERS)]
