"""No module imports from a layer above it (docs/architecture.md, "The parts").

The layers, from the bottom: each module may import modules of its own layer
or of a layer below.  A module added to the package must be placed here.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nrgloops"

LAYERS: list[list[str]] = [
    [
        "nrgloops._errors",
        "nrgloops._checks",
        "nrgloops._machine",
        "nrgloops._native",
        "nrgloops._origin",
        "nrgloops._attributes",
        "nrgloops._forksafe",
    ],
    ["nrgloops._ffi", "nrgloops.meters._sysfs"],
    ["nrgloops.meters*"],
    ["nrgloops.sampler"],
    ["nrgloops.constraints", "nrgloops.carbon", "nrgloops.control", "nrgloops.report"],
    ["nrgloops.loops"],
    # test helpers (nrgloops._fakes: the kernel-format trees of tests and benchmarks)
    ["nrgloops.testing", "nrgloops._fakes*", "nrgloops.measure", "nrgloops.cluster"]
    + ["nrgloops.governors*"],
    ["nrgloops.export"],
    ["nrgloops"],  # the public namespace: re-exports
    ["nrgloops.bench*"],
    ["nrgloops.cli", "nrgloops.__main__"],
]


def _layer(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        for pattern in layer:
            if module == pattern or (
                pattern.endswith("*") and (module + ".").startswith(pattern[:-1] + ".")
            ):
                return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The nrgloops modules a file imports (``from nrgloops import _checks``
    is the module ``nrgloops._checks``, not the public namespace)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "nrgloops"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "nrgloops":
                continue
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                spec_path = PACKAGE.parent / Path(*sub.split("."))
                is_module = spec_path.with_suffix(".py").exists() or spec_path.is_dir()
                out.add(sub if is_module or sub == "nrgloops._native" else node.module)
    return out


def test_no_module_imports_from_a_layer_above_it() -> None:
    assert importlib.util.find_spec("nrgloops") is not None
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _name(path)
        for dep in sorted(_imports(path)):
            if _layer(dep) > _layer(module):
                wrong.append(f"{module} (layer {_layer(module)}) imports {dep} ({_layer(dep)})")
    assert not wrong, "imports that run upwards:\n" + "\n".join(wrong)
