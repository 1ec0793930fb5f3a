"""``sandlot scratch new``, run for real: a subprocess per call in a temporary repository,
its own state folder (the session it makes is a real embedded one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "sandlot.cli", "scratch"]


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    return root


def scratch(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SANDLOT_HOME": str(home)},
        stdin=subprocess.DEVNULL,
    )


def one_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_new_prints_the_folder_then_refuses_the_same_day(home: Path, repo: Path) -> None:
    sub = repo / "src"
    sub.mkdir()
    done = scratch(home, sub, "new", "probe", "--title", "A probe", "--date", "2026-12-07")
    assert done.returncode == 0, done.stderr
    folder = repo / "notebooks" / "_sandbox" / "2026-12-07_probe"
    # One line, `cd "$(sandlot scratch new ...)"` works: relative below the current folder,
    # else absolute.
    assert done.stdout == f"{folder}\n"
    assert (folder / "README.md").read_text().startswith("# A probe\n")
    record = json.loads((folder / ".sandlot.json").read_text())
    assert f"session {record['session']}" in done.stderr
    assert 'setup_notebook("probe")' in done.stderr

    readme = folder / "README.md"
    readme.write_text("edited\n")
    again = scratch(home, repo, "new", "probe", "--date", "2026-12-07")
    assert scratch(home, repo, "new", "probe2", "--no-session").stdout.startswith("notebooks/")
    line = one_error(again, 1)
    assert "already exists" in line and "2026-12-07_probe" in line
    assert readme.read_text() == "edited\n"

    other_day = scratch(home, repo, "new", "probe", "--date", "2026-12-08", "--json")
    assert other_day.returncode == 0, other_day.stderr
    made = json.loads(other_day.stdout)
    assert made["name"] == "2026-12-08_probe" and made["root"] == str(repo)
    folder = repo / "notebooks/_sandbox/2026-12-08_probe"
    assert made["created"] == [str(folder / "README.md"), str(folder / ".sandlot.json")]
    shown = subprocess.run(
        [sys.executable, "-m", "sandlot.cli", "sessions", "show", made["session_id"]],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "SANDLOT_HOME": str(home)},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["metadata"]["scratch"] == made["path"]


@pytest.mark.parametrize("slug", ["../escape", "Bad", "a/b", "-x"])
def test_bad_slug_exits_2_and_writes_nothing(home: Path, repo: Path, slug: str) -> None:
    line = one_error(scratch(home, repo, "new", "--", slug), 2)
    assert "bad scratch slug" in line
    assert not (repo / "notebooks").exists()


def test_bad_date_exits_2(home: Path, repo: Path) -> None:
    assert "YYYY-MM-DD" in one_error(scratch(home, repo, "new", "probe", "--date", "soon"), 2)


def test_parent_dir_and_no_session(home: Path, repo: Path) -> None:
    done = scratch(home, repo, "new", "probe", "--parent-dir", "lab/tmp", "--no-session", "--json")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["session_id"] is None
    assert Path(made["path"]).parent == repo / "lab" / "tmp"
    assert sorted(p.name for p in (repo / "lab" / "tmp").iterdir()) == sorted(
        [".gitignore", "README.md", made["name"]]
    )


def test_outside_a_repository_exits_2(home: Path, tmp_path: Path) -> None:
    lost = tmp_path / "lost"
    lost.mkdir()
    assert "no repository root" in one_error(scratch(home, lost, "new", "probe"), 2)


def test_help_lists_new_and_ls(home: Path, repo: Path) -> None:
    done = scratch(home, repo, "--help")
    assert done.returncode == 0 and "new" in done.stdout and "ls" in done.stdout


def test_ls(home: Path, repo: Path) -> None:
    empty = scratch(home, repo, "ls")
    assert empty.returncode == 0 and empty.stdout == "" and "no scratch folders" in empty.stderr
    made = json.loads(scratch(home, repo, "new", "probe", "-t", "Probe [x]", "--json").stdout)
    listed = scratch(home, repo / "notebooks", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(f["name"], f["title"], f["session_id"]) for f in json.loads(listed.stdout)] == [
        (made["name"], "Probe [x]", made["session_id"])
    ]
    table = scratch(home, repo, "ls")
    assert made["name"] in table.stdout and "Probe [x]" in table.stdout
    assert made["session_id"] in table.stdout


def test_setup_notebook_in_a_real_kernel_started_in_the_notebooks_folder(
    home: Path, repo: Path
) -> None:
    """The trap itself: Jupyter starts a kernel in the notebook's own folder, where
    the repository's relative paths would double; the first cell fixes it."""
    from jupyter_client.manager import start_new_kernel

    done = scratch(home, repo, "new", "probe", "--no-session", "--json")
    folder = Path(json.loads(done.stdout)["path"])
    (folder / "data.csv").write_text("a,b\n1,2\n")
    (repo / "projmod.py").write_text("VALUE = 42\n")  # the project's own module, at its root
    rel = f"notebooks/_sandbox/{folder.name}/data.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SANDLOT_HOME": str(home)}
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(folder), env=env)
    try:
        outputs: list[str] = []

        def cell(code: str) -> str:
            outputs.clear()
            reply = kc.execute_interactive(
                code,
                timeout=60,
                output_hook=lambda m: outputs.append(m["content"].get("text", "")),
            )
            assert reply["content"]["status"] == "ok", reply["content"]
            return "".join(outputs)

        assert cell("import os; print(os.getcwd())").strip() == str(folder)
        first = 'from sandlot.scratch import setup_notebook\nHERE = setup_notebook("probe")\n'
        cell(first)
        cell(first)  # a re-run of the first cell changes nothing
        out = cell(f"print(HERE); print(os.getcwd()); print(open({rel!r}).read())")
        assert out.splitlines() == [str(folder), str(repo), "a,b", "1,2", ""]
        assert cell("import projmod; print(projmod.VALUE)").strip() == "42"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_the_scratch_sandbox_sees_its_folder_read_write(repo: Path) -> None:
    import sandlot
    import sandlot.scratch

    made = sandlot.scratch.new("bound", root=repo)
    assert made.session_id is not None
    try:
        (made.path / "data.csv").write_text("a\n1\n")
        inside = "/project/" + made.path.relative_to(repo).as_posix()
        with sandlot.scratch.sandbox("bound", start=made.path) as sb:
            run = sb.commands.run(f"cat {inside}/data.csv && echo out > {inside}/result.txt")
            assert (run.exit_code, run.stdout) == (0, "a\n1\n"), run
        assert (made.path / "result.txt").read_text() == "out\n"
        assert (made.path / "result.txt").stat().st_uid == os.getuid()
    finally:
        sandlot.Session.connect(made.session_id).delete()
