"""The import graph: no cycle at module level, nothing imports back up, and rest, logs and the CLI's client side never
load torch (rest's image has none, and it starts in well under a second)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import import_graph

from conftest import ROOT

PACKAGE = ROOT / "msaas"


def torch_side() -> set[str]:
    return import_graph.torch_side(ROOT)


def module_name(path: Path) -> str:
    return import_graph.module_name(path, ROOT)


def imports(top_level_only: bool) -> dict[str, set[str]]:
    return import_graph.imports(ROOT, top_level_only)


def test_no_cycle_among_module_level_imports():
    graph = imports(top_level_only=True)
    visiting, done = set(), set()

    def visit(node, trail):
        if node in done:
            return
        assert node not in visiting, "import cycle: " + " -> ".join([*trail, node])
        visiting.add(node)
        for nxt in graph.get(node, ()):
            visit(nxt, [*trail, node])
        visiting.discard(node)
        done.add(node)

    for node in graph:
        visit(node, [])


def test_nothing_imports_back_up():
    graph, heavy = imports(top_level_only=False), torch_side()
    assert {"msaas.separation", "msaas.separation.demucs", "msaas.worker"} <= heavy and not {
        n for n in heavy if n.startswith("msaas.rest")
    }
    for name, targets in graph.items():
        if name.startswith("msaas.rest") or name in ("msaas.logs", "msaas.client", "msaas.metrics"):
            assert not targets & heavy, f"{name} imports {targets & heavy}"
        entry_point = name in ("msaas.cli", "msaas.embedded", "msaas.__main__")  # the top: they start everything
        if (name in heavy and not entry_point) or name.startswith(("msaas.jobs", "msaas.storage", "msaas.config", "msaas.keys")):
            assert not {t for t in targets if t.startswith(("msaas.rest", "msaas.cli", "msaas.embedded"))}, name


def test_rest_logs_and_the_client_load_no_torch():
    code = (
        "import sys\n"
        "import msaas.rest, msaas.rest.api, msaas.rest.web, msaas.rest.server, msaas.logs, msaas.client, msaas.cli\n"
        "from msaas.config import Settings\n"
        "msaas.rest.create_app(Settings(), client=__import__('redis').Redis(port=1))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_no_caller_checks_an_engines_class():
    """Callers use the engine interface (`separation/engine.py`'s Separator: warm-up, device, forward-pass time, whether
    it can be split, reading a song): no isinstance, hasattr or getattr on an engine, and an engine's class is named only
    in its own module, the loader, and splitting (which works on Demucs' chunks, and is only asked when `can_split`)."""
    engines = {"DemucsSeparator", "SpleeterSeparator"}
    allowed = {"msaas.separation.demucs", "msaas.separation.spleeter", "msaas.separation.engine", "msaas.splitting"}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        tree = ast.parse(path.read_text())
        named = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        named |= {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
        assert name in allowed or not named & engines, f"{name} names {named & engines}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "hasattr", "getattr")
            ):
                call = ast.unparse(node)
                assert not engines & set(re.findall(r"\w+", call)), f"{name}: {call}"
                assert not re.search(r"\b(sep|separator)\b", ast.unparse(node.args[0])), f"{name}: {call}"


def test_only_the_job_system_reaches_into_its_redis_client():
    """Workers, rest and metrics ask JobQueue, WorkerRegistry, Splits and ModelDirectory; none uses their client (`.r`)."""
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name.startswith("msaas.jobs"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "r" and isinstance(node.value, ast.Attribute):
                assert node.value.attr not in ("jobs", "registry", "directory", "splits"), f"{name}: {ast.unparse(node)}"


def test_the_environment_is_read_in_config_only():
    """Every setting is read once, in config.py (the command line's own REST and MSAAS_API_KEY too); `msaas up` hands the
    environment on to its children (PATH and the rest), which is the only other mention."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if path.name == "config.py":
            continue
        mentions = text.count("os.environ") + text.count("getenv")
        assert mentions == (1 if path.name == "embedded.py" else 0), f"{path.name} reads the environment itself"
