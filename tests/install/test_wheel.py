"""sandlot installs like a library: a wheel built from the source, installed with pip into a
clean virtual environment, runs the README's quickstart from a folder outside the checkout.

Everything is real: pip builds the wheel with setuptools, the dependencies come from the
package index, the sandbox is a bwrap sandbox whose agent is the installed wheel's. The
downloaded wheels are kept under /tmp, keyed on pyproject.toml, so only the first run on a
machine (or after a change to pyproject.toml) fetches them: about 50 s then, 25 s (18 s of CPU)
after, on a busy 2-core machine.
"""

from __future__ import annotations

import configparser
import contextlib
import email.parser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/tmp/sandlot-wheel-test")
JUNK = re.compile(r"(^\.|~$|\.py[co]$|\.sw[po]$|\.orig$|\.rej$)")  # never shipped
EXTRAS = {"server", "docker", "ssh", "sessions", "s3", "all"}
# What a sandbox cannot start without, named (besides the check that every file ships).
REQUIRED = [
    "sandlot/py.typed",
    "sandlot/agent/__main__.py",
    "sandlot/providers/agent_files.py",
    "sandlot/providers/ssh_remote.py",  # copied to the far host as a file
    "sandlot/store/migrations/script.py.mako",
    "sandlot/store/migrations/env.py",
]

QUICKSTART = textwrap.dedent(
    """
    import sandlot

    print(sandlot.__file__)
    with sandlot.Sandbox.create(provider="bwrap") as sb:
        r = sb.commands.run("echo hi; echo oops >&2; exit 3")
        assert (r.stdout, r.stderr, r.exit_code) == ("hi\\n", "oops\\n", 3), r
        sb.files.write("/workspace/a.txt", "hello")
        assert sb.files.read("/workspace/a.txt") == "hello"
        print(sb.provider, r.stdout.strip())
    """
)

# The README's durable session: its records go through Alembic's migrations, read from the
# installed package.
SESSION = textwrap.dedent(
    """
    import sandlot

    s = sandlot.Session.create(metadata={"user": "ana"})
    with s.sandbox(provider="bwrap") as sb:
        sb.commands.run("echo x > /workspace/note")
    with sandlot.Session.connect(s.id).sandbox(provider="bwrap") as sb:
        print(sb.files.read("/workspace/note").strip())
    print(sorted({e.kind for e in s.events()}))
    """
)


def _env() -> dict[str, str]:
    """This process's environment without what would make Python import the checkout (the
    suite runs with PYTHONPATH set to the worktree) or another environment's packages."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(argv: list[str | Path], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (argv, done.returncode, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


def _pip(*args: str | Path, cwd: Path, python: Path | None = None) -> None:
    """This interpreter's pip; ``python`` aims it at a virtual environment (pip 22.3+), which
    then needs no pip of its own: ensurepip would cost 5 s of CPU, and Debian ships it apart."""
    target: list[str | Path] = ["--python", python] if python else []
    _run([sys.executable, "-m", "pip", *target, *args, "-q"], cwd)


def _wheelhouse(work: Path) -> Path:
    """The wheels the build and the installs need (setuptools, sandlot's dependencies),
    downloaded from the package index once per pyproject.toml and kept under /tmp: pip's own
    cache does not keep them on this machine, and fetching them again costs 10-15 s a run."""
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    house = CACHE / hashlib.sha256(pyproject).hexdigest()[:16]
    if not house.is_dir():
        config = tomllib.loads(pyproject.decode())
        project = config["project"]
        needs = [
            *config["build-system"]["requires"],
            *project["dependencies"],
            *project["optional-dependencies"]["sessions"],
        ]
        _pip("download", "-d", work / "download", *needs, cwd=work)
        CACHE.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # a parallel run filled it meanwhile: keep theirs
            shutil.copytree(work / "download", work / "copy")  # /tmp may be another filesystem
            (work / "copy").rename(house)
    return house


def _source_copy(target: Path) -> Path:
    """The files a build reads, copied away from the checkout: setuptools keeps a build/
    folder there whose stale modules would ship, and the build must need nothing else."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "sandlot", target / "sandlot", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    return target


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """(the wheel, a virtual environment with it installed, an empty folder outside the
    checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    offline: list[str | Path] = ["--no-index", "--find-links", _wheelhouse(base)]
    source = _source_copy(base / "src")
    _pip("wheel", "--no-deps", "-w", base / "dist", *offline, source, cwd=base)
    (wheel,) = (base / "dist").glob("sandlot-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], base)  # no system site-packages
    _pip("install", "--no-compile", *offline, wheel, cwd=base, python=venv / "bin/python")
    outside = base / "elsewhere"
    outside.mkdir()
    yield wheel, venv, outside


@pytest.fixture(scope="module")
def with_sessions(built: tuple[Path, Path, Path]) -> tuple[Path, Path, Path]:
    """The same environment with the ``sessions`` extra added: it runs after the tests of the
    default install, which it must not mask."""
    wheel, venv, outside = built
    house = _wheelhouse(wheel.parent)
    python = venv / "bin/python"
    _pip(
        "install",
        "--no-compile",
        "--no-index",
        "--find-links",
        house,
        f"{wheel}[sessions]",
        cwd=outside,
        python=python,
    )
    return built


def test_wheel_holds_every_file_of_the_package(built: tuple[Path, Path, Path]) -> None:
    wheel, _, _ = built
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    tree = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "sandlot").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and not JUNK.search(path.name)
    }
    assert not tree - names, f"not in the wheel (add a package-data glob): {sorted(tree - names)}"
    assert [n for n in REQUIRED if n not in names] == []
    assert any(n.startswith("sandlot/store/migrations/versions/") for n in names)
    assert [n for n in names if not n.startswith(("sandlot/", "sandlot-"))] == []

    (info,) = {n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA")}
    metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
    assert set(metadata.get_all("Provides-Extra") or []) >= EXTRAS
    entry_points = configparser.ConfigParser()
    entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
    assert "sandlot" in entry_points["console_scripts"]
    assert set(entry_points["sandlot.providers"]) >= {"bwrap", "process", "docker", "ssh"}


def test_quickstart_runs_from_the_installed_wheel(built: tuple[Path, Path, Path]) -> None:
    _, venv, outside = built
    out = _run([venv / "bin/python", "-c", QUICKSTART], outside, timeout=120).splitlines()
    imported = Path(out[0]).resolve()
    assert imported.is_relative_to(venv.resolve()), imported
    assert not imported.is_relative_to(ROOT), imported
    assert out[-1] == "bwrap hi"

    # The README's main job, copied away from the checkout.
    shutil.copy2(ROOT / "examples" / "quickstart.py", outside / "quickstart.py")
    out = _run([venv / "bin/python", "quickstart.py"], outside, timeout=120).splitlines()
    assert out[-1] == "async: ['0', '1', '2', '3', '4']"


def test_console_script_runs_a_command(built: tuple[Path, Path, Path]) -> None:
    _, venv, outside = built
    assert _run([venv / "bin/sandlot", "run", "--", "echo", "hi"], outside, timeout=120) == "hi\n"


def test_session_runs_its_migrations_from_the_installed_wheel(
    with_sessions: tuple[Path, Path, Path],
) -> None:
    _, venv, outside = with_sessions
    out = _run([venv / "bin/python", "-c", SESSION], outside, timeout=120).splitlines()
    assert out[0] == "x"
    assert "checkpoint" in out[1]
