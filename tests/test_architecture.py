"""The rooms and their import rules (docs/architecture.md), checked on the source: a module that
reaches into a room it may not import, or a package folder missing from pyproject.toml, fails."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# room folder -> import name; the rooms below may import only what ALLOWED says.
ROOMS = {"bitswarm": "bitswarm", "kernels": "bitswarm.kernels", "formats": "bitswarm.formats",
         "federation": "bitswarm.federation", "training": "bitswarm.training",
         "node": "bitswarm.node", "simulations": "bitswarm.simulations"}
ALLOWED = {
    "bitswarm": set(),
    "kernels": {"bitswarm", "kernels"},
    "formats": {"bitswarm", "kernels", "formats"},
    "federation": {"bitswarm", "federation"},
    # the pretraining script evaluates with the node's eval protocol (node/data, node/evaluate);
    # the node never imports training
    "training": {"bitswarm", "kernels", "formats", "node", "training"},
    "node": {"bitswarm", "kernels", "formats", "federation", "node"},
    "simulations": {"bitswarm", "node", "federation", "kernels", "formats", "simulations"},
}


def _room_of(module: str) -> str | None:
    best = None
    for room, name in ROOMS.items():
        if (module == name or module.startswith(name + ".")) and (
                best is None or len(name) > len(ROOMS[best])):
            best = room
    return best


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_rooms_import_only_what_they_may():
    bad = []
    for room in ROOMS:
        files = [p for p in (ROOT / room).rglob("*.py") if room != "bitswarm" or p.parent.name == "bitswarm"]
        assert files, room
        for f in files:
            for mod in _imports(f):
                target = _room_of(mod)
                if target is not None and target not in ALLOWED[room]:
                    bad.append(f"{f.relative_to(ROOT)} imports {mod} ({room} may not reach {target})")
    assert not bad, "\n".join(bad)


def test_every_package_folder_is_packaged():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for room, name in ROOMS.items():
        for init in (ROOT / room).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / room).parts
            if room == "bitswarm" and rel:
                continue
            found.add(".".join((name, *rel)))
    assert found == listed, f"missing from pyproject: {sorted(found - listed)}; stale: {sorted(listed - found)}"
    # every shader ships, and only from the op families
    shaders = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.wgsl") if ".venv" not in p.parts)
    assert shaders and all(s.startswith("kernels/ops/") for s in shaders), shaders
    assert "*.wgsl" in cfg["package-data"]["*"]
