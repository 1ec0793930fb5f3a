"""Exploratory workspaces (:mod:`sandlot.scratch`): scaffolding made once and never
overwritten, slugs that cannot leave their folder, and the notebook root finder from the
working folders a kernel really starts in. Real files in a temporary repository; the
session tests make real embedded sessions (SANDLOT_HOME from tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import pytest

import sandlot
from sandlot import scratch
from sandlot.errors import InvalidArgumentError, NotFoundError, SandlotError

DAY = date(2026, 12, 7)
ScratchExists = scratch.ScratchExistsError


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root


@pytest.fixture
def cwd() -> Iterator[None]:
    """Restore the test process's folder (setup_notebook changes it)."""
    before = os.getcwd()
    yield
    os.chdir(before)


def test_new_scaffolds_the_folder_and_the_parent_files(repo: Path) -> None:
    made = scratch.new(
        "attention-probe", title="Attention probe", root=repo, day=DAY, session=False
    )
    parent = repo / "notebooks" / "_sandbox"
    assert made.path == parent / "2026-12-07_attention-probe"
    assert made.path.is_dir()
    readme = (made.path / "README.md").read_text()
    assert readme.startswith("# Attention probe\n")
    for heading in ("## Intent", "## Directional statement", "## Risks", "Mode: exploratory"):
        assert heading in readme
    assert 'setup_notebook("attention-probe")' in readme
    assert "*.csv" in (parent / ".gitignore").read_text().splitlines()
    assert "# Exploratory workspaces" in (parent / "README.md").read_text()
    record = made.path / scratch.RECORD
    assert sorted(made.created) == sorted(
        [made.path / "README.md", record, parent / "README.md", parent / ".gitignore"]
    )
    assert made.session_id is None
    assert json.loads(record.read_text()) == {
        "session": None,
        "slug": "attention-probe",
        "date": "2026-12-07",
        "title": "Attention probe",
    }
    assert ".sandlot.json" in (parent / ".gitignore").read_text().splitlines()


def test_same_day_refused_other_day_made_and_nothing_overwritten(repo: Path) -> None:
    first = scratch.new("probe", root=repo, day=DAY, session=False)
    parent = first.path.parent
    # The user edits every file sandlot wrote.
    for path in (first.path / "README.md", parent / "README.md", parent / ".gitignore"):
        path.write_text(f"mine: {path.name}\n")
    with pytest.raises(ScratchExists) as refused:
        scratch.new("probe", root=repo, day=DAY, session=False)
    assert "already exists" in str(refused.value) and str(first.path) in str(refused.value)
    assert isinstance(refused.value, FileExistsError) and isinstance(refused.value, SandlotError)
    assert (first.path / "README.md").read_text() == "mine: README.md\n"

    second = scratch.new("probe", root=repo, day="2026-12-08", session=False)
    assert second.path.name == "2026-12-08_probe"
    # The parent's files were kept.
    assert second.created == [second.path / "README.md", second.path / scratch.RECORD]
    assert (parent / "README.md").read_text() == "mine: README.md\n"
    assert (parent / ".gitignore").read_text() == "mine: .gitignore\n"


def test_a_file_or_link_where_the_folder_goes_is_refused_untouched(
    repo: Path, tmp_path: Path
) -> None:
    parent = repo / "notebooks" / "_sandbox"
    parent.mkdir(parents=True)
    (parent / "2026-12-07_taken").write_text("a file\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (parent / "2026-12-07_linked").symlink_to(outside)
    (parent / "README.md").symlink_to(tmp_path / "nowhere.md")  # a dangling link: not followed
    for slug in ("taken", "linked"):
        with pytest.raises(ScratchExists):
            scratch.new(slug, root=repo, day=DAY, session=False)
    assert (parent / "2026-12-07_taken").read_text() == "a file\n"
    assert list(outside.iterdir()) == []
    scratch.new("free", root=repo, day=DAY, session=False)
    assert not (tmp_path / "nowhere.md").exists()


@pytest.mark.parametrize(
    "slug",
    [
        "", "..", ".", "../evil", "a/b", "/abs", "Upper", "with space", "under_score",
        "-lead", "trail-", "double--dash", "dot.ted", "a\nb", "tab\t", "ünï", "x" * 65,
        "2026-12-07_x", "a\0b",
    ],
)  # fmt: skip
def test_bad_slugs_are_refused_before_anything_is_written(repo: Path, slug: str) -> None:
    with pytest.raises(InvalidArgumentError, match="slug"):
        scratch.new(slug, root=repo, day=DAY, session=False)
    assert not (repo / "notebooks").exists()


def test_good_slugs(repo: Path) -> None:
    for slug in ("a", "x1", "2026", "attention-probe-v2", "y" * 64):
        assert scratch.validate_slug(slug) == slug
    with pytest.raises(InvalidArgumentError):
        scratch.validate_slug(None)


def test_bad_date_and_title_refused(repo: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="YYYY-MM-DD"):
        scratch.new("probe", root=repo, day="07/12/2026", session=False)
    with pytest.raises(InvalidArgumentError, match="title"):
        scratch.new("probe", root=repo, day=DAY, title="two\nlines", session=False)
    assert not (repo / "notebooks").exists()


def test_a_datetime_day_names_the_date_only(repo: Path) -> None:
    made = scratch.new("probe", root=repo, day=datetime(2026, 12, 7, 23, 59), session=False)
    assert made.path.name == "2026-12-07_probe"


def test_a_parent_that_cannot_be_a_folder_is_a_clear_error(repo: Path) -> None:
    (repo / "notebooks").write_text("a file\n")
    with pytest.raises(InvalidArgumentError, match="cannot make the parent folder"):
        scratch.new("probe", root=repo, day=DAY, session=False)
    assert (repo / "notebooks").read_text() == "a file\n"


def test_new_from_a_subfolder_goes_under_the_repository_root(repo: Path, cwd: None) -> None:
    deep = repo / "src" / "pkg"
    deep.mkdir(parents=True)
    os.chdir(deep)
    made = scratch.new("probe", day=DAY, session=False)
    assert made.root == repo
    assert made.path == repo / "notebooks" / "_sandbox" / "2026-12-07_probe"
    assert not (deep / "notebooks").exists()


def test_custom_parent_dir(repo: Path) -> None:
    made = scratch.new("probe", root=repo, parent_dir="research/tmp", day=DAY, session=False)
    assert made.path == repo / "research" / "tmp" / "2026-12-07_probe"
    assert (repo / "research" / "tmp" / ".gitignore").exists()


# -- the root finder: the three working folders a kernel really starts in -------------------


def _notebook_folder(repo: Path) -> Path:
    return scratch.new("probe", root=repo, day=DAY, session=False).path


@pytest.mark.parametrize("where", ["root", "notebook", "nested"])
def test_setup_notebook_from_three_working_folders(repo: Path, cwd: None, where: str) -> None:
    folder = _notebook_folder(repo)
    nested = folder / "figures" / "v1"
    nested.mkdir(parents=True)
    os.chdir({"root": repo, "notebook": folder, "nested": nested}[where])
    found = scratch.setup_notebook("probe")
    assert found == folder and found.is_absolute()
    assert Path.cwd() == repo
    # The trap: a path relative to the repository now resolves once, not doubled.
    (folder / "data.csv").write_text("a,b\n")
    rel = "notebooks/_sandbox/2026-12-07_probe/data.csv"
    assert Path(rel).resolve() == folder / "data.csv"
    assert Path(rel).read_text() == "a,b\n"
    # Running the first cell again changes nothing.
    assert scratch.setup_notebook("probe") == folder and Path.cwd() == repo


def test_setup_notebook_without_chdir_returns_paths(repo: Path, cwd: None) -> None:
    folder = _notebook_folder(repo)
    os.chdir(folder)
    assert scratch.setup_notebook("2026-12-07_probe", chdir=False) == folder
    assert Path.cwd() == folder


def test_setup_notebook_picks_the_newest_folder_of_a_slug(repo: Path, cwd: None) -> None:
    scratch.new("probe", root=repo, day="2026-11-30", session=False)
    newest = scratch.new("probe", root=repo, day=DAY, session=False).path
    scratch.new("probe-two", root=repo, day="2026-12-09", session=False)  # another slug
    assert scratch.setup_notebook("probe", start=repo / "notebooks") == newest
    older = scratch.setup_notebook("2026-11-30_probe", start=repo)
    assert older.name == "2026-11-30_probe"


def test_setup_notebook_errors(repo: Path, tmp_path: Path, cwd: None) -> None:
    with pytest.raises(NotFoundError, match="sandlot scratch new probe"):
        scratch.setup_notebook("probe", start=repo)
    _notebook_folder(repo)
    with pytest.raises(NotFoundError, match="no scratch folder"):
        scratch.setup_notebook("other", start=repo)
    with pytest.raises(NotFoundError):
        scratch.setup_notebook("2026-01-01_probe", start=repo)
    with pytest.raises(InvalidArgumentError):
        scratch.setup_notebook("../probe", start=repo)
    lost = tmp_path / "lost"
    lost.mkdir()
    with pytest.raises(NotFoundError, match="no repository root"):
        scratch.setup_notebook("probe", start=lost)


def test_setup_notebook_falls_back_to_jupyters_notebook_path(
    repo: Path, tmp_path: Path, cwd: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _notebook_folder(repo)
    lost = tmp_path / "lost"
    lost.mkdir()
    os.chdir(lost)  # a kernel started outside the repository
    monkeypatch.setenv("JPY_SESSION_NAME", str(folder / "explore.ipynb"))
    assert scratch.setup_notebook("probe") == folder
    assert Path.cwd() == repo


def test_find_root_prefers_git_over_a_nearer_pyproject(repo: Path, tmp_path: Path) -> None:
    sub = repo / "packages" / "lib"
    sub.mkdir(parents=True)
    (sub / "pyproject.toml").write_text("")
    assert scratch.find_root(sub) == repo
    loose = tmp_path / "loose" / "inner"
    loose.mkdir(parents=True)
    (tmp_path / "loose" / "pyproject.toml").write_text("")
    assert scratch.find_root(loose) == tmp_path / "loose"
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / ".git").write_text("gitdir: /elsewhere\n")  # a git worktree's .git is a file
    assert scratch.find_root(worktree) == worktree


def test_folders_lists_them_oldest_first_and_survives_odd_records(repo: Path) -> None:
    assert scratch.folders(root=repo) == []
    scratch.new("b-probe", root=repo, day=DAY, title="Second", session=False)
    scratch.new("a-probe", root=repo, day="2026-12-01", title="First", session=False)
    parent = repo / "notebooks" / "_sandbox"
    (parent / "not-a-scratch").mkdir()
    (parent / "2026-12-02_a-file").write_text("")
    odd = parent / "2026-12-03_odd"
    odd.mkdir()
    os.mkfifo(odd / scratch.RECORD)  # must not block
    broken = parent / "2026-12-04_broken"
    broken.mkdir()
    (broken / scratch.RECORD).write_text("[1, 2")
    listed = scratch.folders(root=repo)
    assert [(f.name, f.title, f.session_id) for f in listed] == [
        ("2026-12-01_a-probe", "First", None),
        ("2026-12-03_odd", "", None),
        ("2026-12-04_broken", "", None),
        ("2026-12-07_b-probe", "Second", None),
    ]


# -- the session ---------------------------------------------------------------------------


def test_new_records_a_durable_session_for_the_folder(repo: Path) -> None:
    made = scratch.new("with-session", root=repo, day=DAY)
    assert made.session_id is not None
    try:
        info = sandlot.Session.connect(made.session_id).info
        assert info.metadata["scratch"] == str(made.path)
        assert info.metadata["scratch_root"] == str(repo)
        assert info.metadata["scratch_rel"] == "notebooks/_sandbox/2026-12-07_with-session"
        assert info.metadata["scratch_mode"] == "exploratory"
        record = json.loads((made.path / scratch.RECORD).read_text())
        assert record["session"] == made.session_id
        assert made.session_id in (made.path / "README.md").read_text()
        assert [s.id for s in sandlot.Session.list({"scratch": str(made.path)})] == [
            made.session_id
        ]
        assert scratch.bind_for(info.metadata) == {
            "host": str(made.path),
            "path": "/project/notebooks/_sandbox/2026-12-07_with-session",
            "mode": "rw",
        }
        # A refused same-day run makes no second session.
        with pytest.raises(ScratchExists):
            scratch.new("with-session", root=repo, day=DAY)
        assert len(sandlot.Session.list({"scratch": str(made.path)})) == 1
    finally:
        sandlot.Session.connect(made.session_id).delete()


def test_bind_for_refuses_what_is_not_a_scratch_session() -> None:
    with pytest.raises(InvalidArgumentError):
        scratch.bind_for({"user": "ana"})
    with pytest.raises(InvalidArgumentError):
        scratch.bind_for({"scratch": "/x", "scratch_rel": "../../etc"})
    with pytest.raises(InvalidArgumentError):
        scratch.bind_for({"scratch": "/x", "scratch_rel": "/etc"})


def test_a_failed_session_leaves_no_half_made_folder(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDLOT_URL", "http://127.0.0.1:9")  # nothing listens: remote fails
    monkeypatch.setenv("SANDLOT_API_KEY", "x")
    with pytest.raises(SandlotError):
        scratch.new("doomed", root=repo, day=DAY)
    assert not (repo / "notebooks" / "_sandbox" / "2026-12-07_doomed").exists()
    # The slug is free again once the session can be made.
    monkeypatch.delenv("SANDLOT_URL")
    monkeypatch.delenv("SANDLOT_API_KEY")
    made = scratch.new("doomed", root=repo, day=DAY)
    assert made.session_id is not None
    sandlot.Session.connect(made.session_id).delete()


def test_importing_scratch_stays_light() -> None:
    script = "import json, sys\nimport sandlot.scratch\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    assert [m for m in loaded if m.startswith("sandlot")] == [
        "sandlot",
        "sandlot._lazy",
        "sandlot.errors",
        "sandlot.scratch",
    ]
    assert "pydantic" not in loaded
