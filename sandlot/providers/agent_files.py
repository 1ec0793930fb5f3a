"""Stage the agent's source for a given interpreter: copied once into the state folder and
byte-compiled by that interpreter, so a sandbox (whose view is read-only) never recompiles it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import ProviderUnavailableError, SandboxStartError

AGENT_SOURCE = Path(__file__).resolve().parent.parent / "agent"
MOUNT_POINT = "/.sandlot"
BOOTSTRAP = "import sys;sys.path[:0]=[{root!r}];import agent.__main__"

_prepared: dict[tuple[Path, str], Path] = {}


def _sources() -> list[Path]:
    return sorted(AGENT_SOURCE.glob("*.py"))


def vendored() -> list[Path]:
    """The host's ``cloudpickle`` (pure Python), shipped beside the agent so that every
    sandbox's Python can persist cell-defined functions (agent/persist.py imports it from
    ``vendor/``). Empty when the host lacks it: persistence then falls back."""
    spec = importlib.util.find_spec("cloudpickle")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations)))
    return sorted(folder.glob("*.py"))


def prepare(home: Path, python: str) -> Path:
    """Return a folder holding ``agent/`` compiled for ``python``; build it if needed."""
    key = (home, python)
    if key in _prepared:
        return _prepared[key]
    if not os.access(python, os.X_OK):
        raise ProviderUnavailableError(
            f"no Python interpreter at {python} on the host (it runs the sandbox's agent)"
        )
    digest = hashlib.sha256(python.encode())
    for source in _sources() + vendored():
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    target = home / "agent" / digest.hexdigest()[:16]
    if not (target / "agent").is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
        package = staging / "agent"
        package.mkdir()
        for source in _sources():
            shutil.copy2(source, package / source.name)
        vendor = _stage_vendored(staging / "vendor" / "cloudpickle")
        # One interpreter start compiles both (a build per new SANDLOT_HOME: tests make many).
        compiled = _compile(python, package, *([vendor] if vendor else []))
        if compiled.returncode != 0 and vendor is not None:
            # A Python too old for this copy of cloudpickle: persistence falls back to pickle.
            shutil.rmtree(vendor.parent, ignore_errors=True)
            compiled = _compile(python, package)
        if compiled.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise SandboxStartError(
                f"{python} cannot compile the agent: {compiled.stderr.strip() or compiled.stdout}"
            )
        os.chmod(staging, 0o755)
        try:
            staging.rename(target)
        except OSError:  # another process got there first
            shutil.rmtree(staging, ignore_errors=True)
    _prepared[key] = target
    return target


def _stage_vendored(package: Path) -> Path | None:
    """Copy the host's cloudpickle into ``package``; None if the host has none."""
    sources = vendored()
    if not sources:
        return None
    package.mkdir(parents=True)
    for source in sources:
        shutil.copy2(source, package / source.name)
    return package


def _compile(python: str, *folders: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-I", "-S", "-m", "compileall", "-q", *map(str, folders)],
        capture_output=True,
        text=True,
    )


def command(python: str, root: str, *args: str) -> list[str]:
    """The argv that starts the agent from a prepared folder visible at ``root``."""
    return [python, "-I", "-S", "-c", BOOTSTRAP.format(root=root), *args]
