"""The layering rules of DESIGN.md, checked on the source tree itself.

ruff's banned-api rule (dkron/proto_sansio/ruff.toml) enforces the sans-IO
rule when linting; this test enforces it again from the AST so that the rule
holds even where ruff is not run, and checks the directions ruff cannot
express (testing/ and the cores never import the adapters).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "dkron"

SANSIO_BANNED = {
    "trio",
    "asyncio",
    "socket",
    "threading",
    "time",
    "select",
    "selectors",
    "subprocess",
    "h11",
    "trio_websocket",
    "dkron.io_trio",
}
SANSIO_BANNED_CALLS = {
    ("random", "random"),
    ("random", "randint"),
    ("random", "choice"),
    ("random", "shuffle"),
    ("random", "uniform"),
    ("random", "sample"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("time", "time"),
    ("time", "monotonic"),
}


def _imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _banned(name: str, banned: set[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


def _files(sub: str) -> list[pathlib.Path]:
    return sorted((PKG / sub).rglob("*.py"))


@pytest.mark.parametrize("path", _files("proto_sansio"), ids=lambda p: p.name)
def test_sansio_cores_do_no_io(path: pathlib.Path) -> None:
    bad = [n for n in _imports(path) if _banned(n, SANSIO_BANNED)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and (node.func.value.id, node.func.attr) in SANSIO_BANNED_CALLS
        ):
            pytest.fail(
                f"{path.relative_to(ROOT)}:{node.lineno} calls "
                f"{node.func.value.id}.{node.func.attr}"
            )


@pytest.mark.parametrize(
    "path",
    [p for p in PKG.glob("*.py")] + _files("testing"),
    ids=lambda p: str(p.relative_to(PKG)),
)
def test_lower_layers_never_import_adapters(path: pathlib.Path) -> None:
    bad = [n for n in _imports(path) if _banned(n, {"dkron.io_trio"})]
    if path.name in {"__main__.py", "cli.py", "jobcli.py"}:
        return  # the command line starts the adapters, or uses their HTTP client
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_checker_catches_a_violation(tmp_path: pathlib.Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import trio\nfrom dkron.io_trio import agent\n")
    assert [n for n in _imports(probe) if _banned(n, SANSIO_BANNED)] == ["trio", "dkron.io_trio"]
