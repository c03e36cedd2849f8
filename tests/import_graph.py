"""MSaaS's import graph, read from the code with `ast` (nothing is imported): `python tests/import_graph.py [ROOT]`
prints each module with what it imports from the package, the modules that load torch, and any cycle among module-level
imports. Give another checkout's root (e.g. a `git worktree` of an older commit) to compare before and after.
tests/test_architecture.py asserts its rules on the same graph."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(root: Path, dotted: str) -> bool:
    path = root / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(root: Path, top_level_only: bool) -> dict[str, set[str]]:
    """msaas module -> the msaas modules it imports (at module level only, or anywhere in it)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "msaas").rglob("*.py")):
        name = module_name(path, root)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        found = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("msaas")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                if base.startswith("msaas"):
                    found.add(base)
                    found |= {f"{base}.{a.name}" for a in node.names if _is_module(root, f"{base}.{a.name}")}
        graph[name] = found - {name}
    return graph


def torch_side(root: Path) -> set[str]:
    """The modules that load torch (or demucs) when used: those that import it themselves (at any level), and those that
    import one of them."""
    found = set()
    for path in (root / "msaas").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "torch" or n.startswith("torch.") or n.startswith("demucs") for n in names):
                found.add(module_name(path, root))
    graph = imports(root, top_level_only=False)
    while more := {name for name, targets in graph.items() if targets & found} - found:
        found |= more
    return found


def cycles(root: Path) -> list[list[str]]:
    graph, found, done = imports(root, top_level_only=True), [], set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            found.append([*trail[trail.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*trail, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def main() -> int:
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE
    graph, heavy = imports(root, top_level_only=False), torch_side(root)
    for name in sorted(graph):
        path = (root / name.replace(".", "/")).with_suffix(".py")
        lines = len((path if path.exists() else path.with_suffix("") / "__init__.py").read_text().splitlines())
        mark = " [torch]" if name in heavy else ""
        print(f"{name}{mark} ({lines} lines) -> {', '.join(sorted(graph[name])) or '-'}")
    print(f"\n{len(graph)} modules; {len(heavy)} load torch; cycles at module level: {cycles(root) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
