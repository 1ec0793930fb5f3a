"""The agent runs inside images we do not control: Python 3.9+, standard library only."""

import ast
import sys
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "sandlot" / "agent"
SOURCES = sorted(AGENT.glob("*.py"))
ALLOWED_TOP_LEVEL = set(sys.stdlib_module_names)
# Used by code contexts only when the user's own code already imported them.
# Imported only when present, with a fallback: matplotlib for charts; cloudpickle, which sandlot
# ships beside the agent (agent_files.py), for functions and classes in a persisted state.
OPTIONAL = {"display.py": {"matplotlib"}, "persist.py": {"cloudpickle"}}


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_parses_as_python_39(source):
    ast.parse(source.read_text(), filename=str(source), feature_version=(3, 9))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_imports_only_the_standard_library_and_itself(source):
    tree = ast.parse(source.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        allowed = ALLOWED_TOP_LEVEL | OPTIONAL.get(source.name, set())
        for name in names:
            assert name.split(".")[0] in allowed, f"{source.name} imports {name}"


def test_start_up_avoids_heavy_modules():
    """asyncio, subprocess, json (re), socket and signal (enum) cost the agent milliseconds."""
    heavy = {"asyncio", "subprocess", "json", "socket", "signal", "re", "typing", "selectors"}
    for source in SOURCES:
        tree = ast.parse(source.read_text())
        for node in tree.body:  # module level only: lazy imports inside functions are fine
            if isinstance(node, ast.Import):
                found = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not found & heavy, f"{source.name} imports {found & heavy} at start-up"
