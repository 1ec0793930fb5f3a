"""Exploratory workspaces: dated scratch folders for work that is not tracked yet.

``sandlot scratch new SLUG`` (:func:`new`) makes ``<root>/<parent>/<YYYY-MM-DD>_<slug>/``
with a README to fill in (intent, directional statement, risks, "Mode: exploratory"), and,
once per parent folder, a README saying what the folder is and a ``.gitignore`` that keeps
data files out of git. Nothing that exists is ever overwritten: a slug already made today
is refused (:class:`ScratchExistsError`), the parent's files are written only when absent.
Each folder gets a durable sandlot session whose metadata names it (see
:func:`bind_for`); :func:`sandbox` attaches it with the folder bound read-write.

:func:`setup_notebook` is a notebook's first cell: it finds the repository root from
whatever folder the kernel started in (Jupyter starts it in the notebook's own folder, so
``open("notebooks/_sandbox/...")`` would look for the path twice over), changes to it, and
returns the scratch folder.

This module imports only the standard library and :mod:`sandlot.errors` (the SDK loads
when a session is made), so a notebook's first cell stays fast.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgumentError, NotFoundError, SandlotError

if TYPE_CHECKING:
    from .remote import Client

__all__ = [
    "DEFAULT_PARENT",
    "Scratch",
    "ScratchExistsError",
    "bind_for",
    "find_root",
    "folders",
    "new",
    "setup_notebook",
    "validate_slug",
]

DEFAULT_PARENT = "notebooks/_sandbox"
MAX_SLUG = 64
ROOT_MARKERS = (".git", "pyproject.toml")  # .git first: a repository beats a sub-project
RECORD = ".sandlot.json"  # in each scratch folder: title, session id (host-local, git-ignored)
BIND_PATH = "/project"  # where the future project bind mounts the repository root

_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_FOLDER = re.compile(r"(\d{4}-\d{2}-\d{2})_([a-z0-9]+(?:-[a-z0-9]+)*)")


class ScratchExistsError(SandlotError, FileExistsError):
    """A scratch folder of that slug was already made that day: it is never reused or
    overwritten (pick another slug, or keep working in the existing folder)."""


@dataclass(frozen=True)
class Scratch:
    """A scratch folder :func:`new` made: where it is, what it wrote, its session."""

    path: Path  # absolute
    root: Path  # the repository root the parent folder is relative to
    slug: str
    date: str  # YYYY-MM-DD
    title: str
    session_id: str | None
    created: list[Path] = field(default_factory=list)  # files written now (absolute)

    @property
    def name(self) -> str:
        return self.path.name

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(
            path=str(self.path),
            root=str(self.root),
            created=[str(p) for p in self.created],
            name=self.name,
        )
        return record


def validate_slug(slug: object) -> str:
    """``slug`` if it is lowercase letters, digits and single dashes (at most 64
    characters, no dash at either end); else :class:`~sandlot.errors.InvalidArgumentError`.
    So a slug is always one plain folder name: no ``/``, ``..``, dots or spaces."""
    if not isinstance(slug, str) or not slug:
        raise InvalidArgumentError("a scratch slug must be a non-empty string")
    if len(slug) > MAX_SLUG or _SLUG.fullmatch(slug) is None:
        raise InvalidArgumentError(
            f"bad scratch slug {slug[:80]!r}: use lowercase letters, digits and single "
            f"dashes, at most {MAX_SLUG} characters (e.g. 'attention-probe')"
        )
    return slug


def find_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The repository root above ``start`` (default: the current folder): the nearest
    folder holding ``.git`` (a folder, or a worktree's file); failing that, the nearest
    holding ``pyproject.toml``. :class:`~sandlot.errors.NotFoundError` if neither."""
    here = Path(os.getcwd() if start is None else start).resolve()
    chain = [here, *here.parents]
    for marker in ROOT_MARKERS:
        for folder in chain:
            if (folder / marker).exists():
                return folder
    raise NotFoundError(
        f"no repository root above {here} (no .git or pyproject.toml in it or its parents)"
    )


def _parent(root: Path, parent_dir: str | os.PathLike[str]) -> Path:
    text = os.fspath(parent_dir)
    if not text or "\0" in text:
        raise InvalidArgumentError("the parent folder must be a non-empty path")
    return (root / text).resolve()  # absolute stays absolute


def _today(when: date | str | None) -> str:
    if when is None:
        return date.today().isoformat()  # the user's own day, not UTC's
    if isinstance(when, str):
        try:
            return date.fromisoformat(when).isoformat()
        except ValueError:
            raise InvalidArgumentError(f"bad date {when[:40]!r}: use YYYY-MM-DD") from None
    if isinstance(when, datetime):  # a datetime is a date too, but its isoformat has a time
        when = when.date()
    return when.isoformat()


def _write_once(path: Path, text: str, created: list[Path]) -> None:
    """Write ``path`` unless something (a file, a folder, a link) is there already."""
    try:
        with open(path, "x", encoding="utf-8") as out:
            out.write(text)
    except FileExistsError:
        return
    created.append(path)


def new(
    slug: str,
    *,
    title: str | None = None,
    parent_dir: str | os.PathLike[str] = DEFAULT_PARENT,
    root: str | os.PathLike[str] | None = None,
    day: date | str | None = None,
    session: bool = True,
    client: Client | None = None,
) -> Scratch:
    """Make ``<root>/<parent_dir>/<day>_<slug>/`` with its README, the parent's README and
    ``.gitignore`` when absent, and (``session=True``) a durable session for it.

    ``root``: the repository root (default: :func:`find_root` from the current folder; a
    relative ``parent_dir`` is taken from there, so running from a sub-folder does not nest
    a second ``notebooks/``). ``day``: the date in the name (default: today, local time).
    Raises :class:`ScratchExistsError` when that folder exists, and
    :class:`~sandlot.errors.InvalidArgumentError` for a bad slug or date."""
    slug = validate_slug(slug)
    today = _today(day)
    title = (title or "").strip() or slug.replace("-", " ").capitalize()
    if "\n" in title or len(title) > 200:
        raise InvalidArgumentError("a scratch title is one line of at most 200 characters")
    base = Path(root).resolve() if root is not None else find_root()
    parent = _parent(base, parent_dir)
    folder = parent / f"{today}_{slug}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder should be, no permission, ...
        raise InvalidArgumentError(
            f"cannot make the parent folder {parent}: {exc.strerror}"
        ) from None
    try:
        folder.mkdir()
    except FileExistsError:
        raise ScratchExistsError(
            f"{folder} already exists: a scratch slug is made once a day "
            f"(pick another slug, or keep working in that folder)"
        ) from None
    except OSError as exc:
        raise SandlotError(f"cannot make {folder}: {exc.strerror}") from None
    created: list[Path] = []
    try:
        session_id = _session(folder, base, slug, today, client) if session else None
        _write_once(folder / "README.md", _readme(title, today, slug, session_id), created)
        record = {"session": session_id, "slug": slug, "date": today, "title": title}
        _write_once(folder / RECORD, json.dumps(record, indent=2) + "\n", created)
    except BaseException:
        for path in created:  # the folder is ours (made above): leave no half-made one
            path.unlink(missing_ok=True)
        folder.rmdir()
        raise
    rel = os.path.relpath(parent, base)
    _write_once(parent / "README.md", _parent_readme(rel), created)
    _write_once(parent / ".gitignore", GITIGNORE, created)
    return Scratch(folder, base, slug, today, title, session_id, created)


def _session(folder: Path, root: Path, slug: str, day: str, client: Client | None) -> str:
    """A durable session for the folder. Its metadata is what a read-write bind of the
    folder needs later (:func:`bind_for`): the host path, the root, the path between."""
    from .sdk import Session

    metadata = {
        "scratch": str(folder),
        "scratch_root": str(root),
        "scratch_rel": Path(os.path.relpath(folder, root)).as_posix(),
        "scratch_slug": slug,
        "scratch_date": day,
        "scratch_mode": "exploratory",
    }
    return Session.create(metadata, client=client).id


def bind_for(metadata: dict[str, str]) -> dict[str, str]:
    """The read-write bind a scratch session's sandbox should get, from the session's
    metadata: the folder at the same place under ``/project`` as under the repository
    root, so a notebook's relative paths mean the same inside and out (:func:`sandbox` passes
    it; see docs/sdk.md for binds)."""
    folder = metadata.get("scratch")
    rel = metadata.get("scratch_rel")
    if not folder or not rel:
        raise InvalidArgumentError("not a scratch session's metadata (no 'scratch' entry)")
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts:
        raise InvalidArgumentError(f"bad scratch_rel {rel[:200]!r}")
    return {"host": folder, "path": f"{BIND_PATH}/{Path(rel).as_posix()}", "mode": "rw"}


def sandbox(
    name: str,
    *,
    parent_dir: str | os.PathLike[str] = DEFAULT_PARENT,
    start: str | os.PathLike[str] | None = None,
    client: Client | None = None,
    **options: Any,
) -> Any:
    """The sandbox of scratch folder ``name``'s session (its live one, else a new one from
    its last checkpoint), with the folder bound read-write at ``/project/<path from the
    root>`` (:func:`bind_for`). ``with`` detaches it at the end; ``options`` go to
    :meth:`sandlot.Session.sandbox`. :class:`~sandlot.errors.NotFoundError` for a folder made
    without a session."""
    from .sdk import Session

    if not isinstance(name, str):
        raise InvalidArgumentError("name must be a scratch folder's name or slug")
    root = _notebook_root(start)
    folder = _pick(_parent(root, parent_dir), name)
    session_id = _record(folder / RECORD).get("session")
    if not isinstance(session_id, str):
        raise NotFoundError(f"{folder.name} has no session (it was made with --no-session)")
    session = Session.connect(session_id, client=client)
    options.setdefault("reuse", True)
    return session.sandbox(binds=[bind_for(session.info.metadata)], **options)


def folders(
    *,
    parent_dir: str | os.PathLike[str] = DEFAULT_PARENT,
    root: str | os.PathLike[str] | None = None,
) -> list[Scratch]:
    """The scratch folders under the parent, oldest first, with the title and session each
    one's ``.sandlot.json`` names (a missing or unreadable one gives none: it is the
    user's file, read only up to 64 KiB)."""
    base = Path(root).resolve() if root is not None else find_root()
    parent = _parent(base, parent_dir)
    try:
        entries = sorted(os.scandir(parent), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        named = _FOLDER.fullmatch(entry.name)
        if named is None or not entry.is_dir(follow_symlinks=False):
            continue
        record = _record(Path(entry.path) / RECORD)
        session_id = record.get("session")
        title = record.get("title")
        title = title if isinstance(title, str) else ""
        session_id = session_id if isinstance(session_id, str) else None
        slug, day = named.group(2), named.group(1)
        found.append(Scratch(Path(entry.path), base, slug, day, title, session_id))
    return found


def _record(path: Path) -> dict[str, Any]:
    """A folder's record, if it is a regular file (a FIFO there must not hang ``ls``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        data = json.loads(os.read(fd, 64 * 1024))
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else {}


def setup_notebook(
    name: str,
    *,
    parent_dir: str | os.PathLike[str] = DEFAULT_PARENT,
    chdir: bool = True,
    start: str | os.PathLike[str] | None = None,
) -> Path:
    """A notebook's first cell: the scratch folder ``name`` (absolute), found from the
    repository root whatever folder the kernel runs in, and (``chdir=True``) the kernel
    moved to that root, so paths relative to the repository work as in a terminal there.
    Running the cell again changes nothing.

    ``name``: a folder's full name (``2026-12-07_attention-probe``) or its slug (the
    newest folder of that slug). ``start``: where to look from (default: the current
    folder; then the folder of the notebook Jupyter names in ``JPY_SESSION_NAME``).
    :class:`~sandlot.errors.NotFoundError` if no such folder."""
    if not isinstance(name, str):
        raise InvalidArgumentError("name must be a scratch folder's name or slug")
    root = _notebook_root(start)
    parent = _parent(root, parent_dir)
    folder = _pick(parent, name)
    if chdir and Path(os.getcwd()).resolve() != root:
        os.chdir(root)
    return folder


def _notebook_root(start: str | os.PathLike[str] | None) -> Path:
    if start is not None:
        return find_root(start)
    try:
        return find_root()
    except NotFoundError:
        notebook = os.environ.get("JPY_SESSION_NAME", "")  # set by jupyter_server >= 2
        if not notebook or not os.path.isabs(notebook):
            raise
        return find_root(os.path.dirname(notebook))


def _pick(parent: Path, name: str) -> Path:
    hint = f"make one with `sandlot scratch new {name}`"
    if _FOLDER.fullmatch(name):
        folder = parent / name
        if folder.is_dir():
            return folder
        raise NotFoundError(f"no scratch folder {folder}")
    slug = validate_slug(name)
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        raise NotFoundError(
            f"no scratch folder for {slug!r}: {parent} does not exist ({hint})"
        ) from None
    dated = sorted(
        entry.name
        for entry in entries
        if entry.is_dir()
        and (found := _FOLDER.fullmatch(entry.name)) is not None
        and found.group(2) == slug
    )
    if not dated:
        raise NotFoundError(f"no scratch folder for {slug!r} in {parent} ({hint})")
    return parent / dated[-1]


def _readme(title: str, day: str, slug: str, session_id: str | None) -> str:
    session = (
        f"- Session: `{session_id}` (`sandlot sessions show {session_id}`)\n" if session_id else ""
    )
    return f"""# {title}

- Mode: exploratory
- Date: {day}
{session}
First cell of a notebook here:

```python
from sandlot.scratch import setup_notebook

HERE = setup_notebook("{slug}")  # the kernel now runs at the repository root
```

## Intent

What question is this exploration for? One or two sentences.

## Directional statement

What do you expect to find, and what will you do next if it holds, or if it does not?

## Risks

What could make a result here misleading (a small sample, leakage between splits, a
cherry-picked run), and what must not leave this folder without being checked again.

## Notes

"""


def _parent_readme(rel: str) -> str:
    return f"""# Exploratory workspaces

Each folder here is one exploration, named `YYYY-MM-DD_slug`, made by
`sandlot scratch new SLUG` (run from the repository root or below it). Its README says
what it is for (intent, directional statement, risks); "Mode: exploratory" means it is not
tracked work yet: when a result matters, move it into the project properly.

A notebook's first cell finds the repository root whatever folder the kernel starts in,
and runs from there (paths relative to the repository, never doubled):

```python
from sandlot.scratch import setup_notebook

HERE = setup_notebook("my-slug")  # this folder's `{rel}/<date>_my-slug`
```

Data files are kept out of git by `.gitignore` here; code, notebooks and READMEs are not.
Nothing here is overwritten by sandlot: edit these files as you like.
"""


GITIGNORE = """\
# Data files stay out of git (written once by `sandlot scratch new`; edit freely).
*.csv
*.tsv
*.parquet
*.feather
*.arrow
*.h5
*.hdf5
*.nc
*.npy
*.npz
*.pkl
*.pickle
*.joblib
*.pt
*.ckpt
*.safetensors
*.sqlite
*.sqlite3
*.db
*.xlsx
*.xls
*.jsonl
*.zip
*.gz
*.tar
*.bz2
*.xz
*.zst
data/
outputs/
.ipynb_checkpoints/
.sandlot.json
"""
