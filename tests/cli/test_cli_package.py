"""The CLI package: one module per command family, no import cycle, every command registered."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

import pipeline.cli
from pipeline.cli import cli

CLI_DIR = Path(pipeline.cli.__file__).parent
COMMANDS = {"synth", "ingest", "import-images", "info", "classify", "run", "demo", "query",
            "plan", "train", "evaluate", "compare", "ood-fit", "catalogue", "report", "cluster",
            "submit"}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            names.add(node.module or "")
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_command_modules_import_base_only() -> None:
    modules = sorted(p for p in CLI_DIR.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert {p.stem for p in modules} >= {"base", "stages", "models", "catalogue", "cluster"}
    for path in modules:
        own = {n for n in _imports(path) if n == "pipeline.cli" or n.startswith("pipeline.cli.")}
        allowed = set() if path.stem == "base" else {"pipeline.cli.base"}
        # `from pipeline.cli.base import X` also yields `pipeline.cli.base.X`
        own = {n for n in own if not n.startswith("pipeline.cli.base.")}
        assert own <= allowed, f"{path.name} imports {sorted(own - allowed)}"


def test_the_package_holds_the_group_and_registration_only() -> None:
    tree = ast.parse((CLI_DIR / "__init__.py").read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert functions == {"cli", "main"}


def test_every_command_is_registered_and_listed() -> None:
    assert set(cli.commands) == COMMANDS
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines()
              if line.strip()}
    assert listed == COMMANDS
    for name, command in cli.commands.items():
        assert isinstance(command, click.Command)
        sub = CliRunner().invoke(cli, [name, "-h"])
        assert sub.exit_code == 0, (name, sub.output)


def test_python_m_pipeline_cli_and_no_cycle_in_a_fresh_process() -> None:
    # Importing a command module first (as tests and `skysieve submit` do) must work too.
    code = ("import pipeline.cli.cluster, pipeline.cli.stages, pipeline.cli.base; "
            "import pipeline.cli as c; print(sorted(c.cli.commands))")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    assert ast.literal_eval(fresh.stdout) == sorted(COMMANDS)
    help_ = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True,
                           text=True, timeout=120)
    assert help_.returncode == 0, help_.stderr
    assert all(name in help_.stdout for name in COMMANDS)
