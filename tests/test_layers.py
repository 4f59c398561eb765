"""The package's layering: imports only point down the chain functional -> ops -> attention ->
models -> data / viz / export / train -> bench -> cli, so the math knows no modules, the modules
no networks and the networks no training loop. Read from the source with ast, lazy imports too."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "src" / "cbam"
# rank of each top-level unit; a unit may import itself, lower ranks, and _io (file writing, rank -1)
RANK = {"_io": -1, "functional": 0, "ops": 1, "attention": 2, "models": 3, "data": 3, "viz": 4, "export": 4,
        "train": 5, "bench": 6, "cli": 7, "__main__": 8}
SAME_UNIT = {"bench_matrix": "bench"}  # one tool in two files (stage shapes, network matrix)
PACKAGE_API = {"functional", "ops", "attention", "models"}  # what `import cbam` re-exports


def _unit(parts):
    name = parts[0].removesuffix(".py")
    return SAME_UNIT.get(name, name)


def _imports(path: pathlib.Path):
    """(line, unit) of every import of cbam code in ``path``, resolved to its top-level unit."""
    pkg = list(path.relative_to(ROOT).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[: len(pkg) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [])
            for name in ([target[0]] if target else [a.name for a in node.names]):
                yield node.lineno, _unit([name])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cbam."):
            yield node.lineno, _unit([node.module.split(".")[1]])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cbam."):
                    yield node.lineno, _unit([a.name.split(".")[1]])


FILES = sorted(p for p in ROOT.rglob("*.py"))


def test_every_unit_has_a_rank():
    units = {_unit(p.relative_to(ROOT).parts) for p in FILES} - {"__init__"}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to RANK"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_chain(path):
    unit = _unit(path.relative_to(ROOT).parts)
    bad = []
    for line, target in _imports(path):
        if unit == "__init__":
            ok = target in PACKAGE_API
        else:
            ok = target == unit or RANK.get(target, 99) < RANK[unit]
        if not ok:
            bad.append(f"line {line}: {unit} imports {target}")
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(bad)


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """The parser resolves relative imports: a models module importing the training loop is caught."""
    fake = ROOT / "models" / "_probe.py"
    src = "from ..train.loop import train\nfrom . import registry\n"
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self, encoding=None: src)
    assert list(_imports(fake)) == [(1, "train"), (2, "models")]
