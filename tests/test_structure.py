"""The package boundary: modelport.protocol at the bottom, client / server / converter on it,
none importing another (the `modelport` command loads a subcommand's module only when it runs),
and no import circle inside the server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"protocol": "protos", "client": "client", "server": "server", "converter": "converter"}


def imports(folder: str) -> dict[str, set[str]]:
    """{module file: absolute modules it imports anywhere (function bodies included)}."""
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        if "generated" in path.parts:
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        path: sorted(n for n in names if n.startswith(forbidden))
        for path, names in imports(folder).items()
        if any(n.startswith(forbidden) for n in names)
    }


def test_server_and_converter_import_nothing_from_the_client() -> None:
    assert offenders("server", ("modelport.client", "modelport.converter")) == {}
    assert offenders("converter", ("modelport.client", "modelport.server")) == {}


def test_protocol_imports_no_other_part() -> None:
    assert offenders("protos", ("modelport.client", "modelport.server", "modelport.converter")) == {}


def test_client_imports_neither_server_nor_converter() -> None:
    # client/cli.py names subcommand modules as strings and imports the one being run.
    assert offenders("client", ("modelport.server", "modelport.converter")) == {}


def test_only_deploy_packaging_reaches_the_converter() -> None:
    """`Client.deploy` converts Keras sources with the converter (the `convert` extra, issue 19):
    besides the `modelport` command's table of subcommands, client/packaging.py alone names it,
    importing it by name while a conversion runs, so the client install works without it."""
    naming = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "client").rglob("*.py")
                    if "modelport.converter" in p.read_text())  # fmt: skip
    assert naming == ["client/cli.py", "client/packaging.py"], naming


def test_no_import_circle_in_the_server() -> None:
    graph = {}
    for path in sorted((ROOT / "server").glob("*.py")):
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:  # module level only: imports in functions or TYPE_CHECKING run later
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        graph[path.stem] = deps
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph.get(module, ())):
            if dep in path:
                circles.append(path[path.index(dep):] + [dep])
            else:
                visit(dep, [*path, dep])

    for module in graph:
        visit(module, [module])
    assert circles == []


def test_client_commands_load_neither_server_nor_converter() -> None:
    code = (
        "import sys\n"
        "from modelport.client.cli import main\n"
        "for argv in (['--help'], ['predict', '--help'], ['bench', '--help'], ['evaluate', '--help'], "
        "['models', '--help'], ['deploy', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "loaded = [m for m in ('modelport.server', 'modelport.converter', 'pydantic_settings', 'onnxruntime', "
        "'tensorflow', 'onnx', 'cryptography')\n"
        "          if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
