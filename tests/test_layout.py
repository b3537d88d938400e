"""The package layout is the architecture: imports point down only.

    experiments/, benchmarks/  ->  seqjax.nn, seqjax.analysis  ->  seqjax.train  ->
    seqjax.models  ->  seqjax.core, seqjax.data  ->  seqjax.kernels (imports nothing of seqjax)

Read from the source with ``ast`` (no import runs), so a new upward import fails here with the
file and the line.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What each layer may import from seqjax (itself always allowed; ``seqjax`` alone means the
#: top-level package, which re-exports the core).
ALLOWED = {
    "kernels": set(),
    "seqjax.core": {"seqjax.kernels"},
    "seqjax.data": set(),
    "seqjax.models": {"seqjax.core", "seqjax.data", "seqjax.kernels", "seqjax"},
    "seqjax.train": {"seqjax.core", "seqjax.data", "seqjax.models", "seqjax"},
    "seqjax.analysis": {"seqjax.core", "seqjax.data", "seqjax.models", "seqjax.train", "seqjax"},
    "seqjax.nn": {"seqjax.core", "seqjax.models", "seqjax"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts
    if parts[0] == "kernels":
        return "kernels"
    return ".".join(parts[:2])


def _seqjax_imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name == "seqjax" or name.startswith("seqjax."):
                yield node.lineno, name


def _target(name: str) -> str:
    parts = name.split(".")
    return "seqjax" if len(parts) == 1 else ".".join(parts[:2])


FILES = sorted((ROOT / "kernels").glob("*.py")) + sorted(
    p for p in (ROOT / "seqjax").rglob("*.py")
    if len(p.relative_to(ROOT / "seqjax").parts) > 1)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    layer = _layer(path)
    if layer not in ALLOWED:
        pytest.fail(f"{path.relative_to(ROOT)} is in no known layer: add it to ALLOWED")
    for line, name in _seqjax_imports(path):
        target = _target(name)
        assert target == layer or target in ALLOWED[layer], (
            f"{path.relative_to(ROOT)}:{line} imports {name}: {layer} may import only "
            f"{sorted(ALLOWED[layer]) or 'nothing of seqjax'}")


def test_every_layer_has_files():
    assert {_layer(p) for p in FILES} == set(ALLOWED)


#: The longest a library function may be (issue #20): longer ones hide several ideas. Counted
#: from ``def`` to the end, less the docstring (an argument list documented in full is not
#: complexity).
MAX_FUNCTION_LINES = 100


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_library_function_over_100_lines():
    long = []
    for path in FILES + [ROOT / "seqjax" / "__init__.py", ROOT / "seqjax" / "cli.py"]:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _code_lines(node)
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
