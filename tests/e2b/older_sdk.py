"""The older E2B pair (e2b 2.31, e2b-code-interpreter 2.8) that openai-agents[e2b] 0.24 pins
cannot share an environment with the current one: scripts/setup.sh makes a virtual environment
for it (same path as here), and the tests run their scripts with its python, as a user would.
Without it the tests fail rather than skip: CI runs setup, so a missing one is a broken set-up.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from remote.server import ServerProcess

HERE = Path(__file__).parent
# What scripts/setup.sh installs and stamps into the environment's `sandlot-pins`.
PINS = "openai-agents[e2b]==0.24.0 e2b==2.31.0 e2b-code-interpreter==2.8.1"


def older_python() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = Path(os.environ.get("SANDLOT_E2B_OLD_VENV") or cache / "sandlot/e2b-old-venv")
    stamp = venv / "sandlot-pins"
    if not stamp.is_file() or stamp.read_text().strip() != PINS:
        pytest.fail(f"no virtual environment with {PINS} at {venv}: run scripts/setup.sh")
    return venv / "bin/python"


def run_script(name: str, server: ServerProcess, timeout: float = 240) -> dict[str, object]:
    """Run tests/e2b/``name`` with the older pair against ``server``; the JSON object it prints
    last."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("E2B_", "SANDLOT_", "PYTHON", "OPENAI_"))
    }
    env |= {
        "E2B_API_URL": server.url,
        "E2B_SANDBOX_URL": server.url,
        "E2B_API_KEY": server.api_key,  # type: ignore[attr-defined]
        # e2b 2.31 checks a key's format on the client (`e2b_` and hex; 2.63 no longer does):
        # sandlot's keys need this switch with it (docs/e2b.md).
        "E2B_VALIDATE_API_KEY": "false",
    }
    done = subprocess.run(
        [older_python(), HERE / name],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, (
        f"{name} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )
    seen: dict[str, object] = json.loads(lines[-1])
    seen["stderr"] = done.stderr[-6000:]
    return seen
