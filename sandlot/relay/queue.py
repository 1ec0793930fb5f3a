"""The relay's queue folder on the shared filesystem, and how files move through it.

::

    QUEUE/
      inbox/<id>.json        requests, written by clients
      processing/<id>.json   claimed by the daemon, running (left here if it crashes)
      pending/<id>.json      waiting for a person's consent
      approved/<id>          consent markers, written by ``sandlot relay approve``
      rejected/<id>          ... and ``reject`` (reject wins if both exist)
      outbox/<id>.json       answers, read (and removed) by the client
      stale/<id>.json        requests that expired, crashed or were refused
      log/<time>-<id>.json   one entry per event, for ``sandlot relay status``
      heartbeat              the daemon's pid and time, rewritten every 5 s
      operations.json        the daemon's whitelist, as clients may see it
      daemon.lock            held (flock) by the one running daemon

Every file is written under a temporary name, flushed, synced and renamed into place, so a
reader never sees half a file; a reader also refuses symlinks and oversized files.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..errors import RelayError

FOLDERS = ("inbox", "processing", "pending", "approved", "rejected", "outbox", "stale", "log")
MAX_FILE = 8 * 1024 * 1024  # an answer holds capped output; a request is tiny
DEFAULT_QUEUE = "~/.relay"


class RelayRequest(BaseModel):
    id: str
    op: str
    args: list[str] = Field(default_factory=list)
    cwd: str
    created: float
    host: str = ""
    pid: int = 0


Status = str  # ok | failed | validation | rejected | expired | timeout | crashed


class RelayResult(BaseModel):
    """The answer to one request. ``status`` is ``ok`` or ``failed`` (the command ran; see
    ``returncode``); the client raises for the others. Output is capped per stream, with a
    marker where it was cut (``truncated``)."""

    id: str
    op: str
    status: Status
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    duration_s: float = 0.0
    rule: str | None = None
    message: str = ""
    finished: float = 0.0


def new_id() -> str:
    """Sortable by creation time, unguessable, and safe as a file name."""
    return f"{time.time_ns():016x}-{secrets.token_hex(8)}"


class Queue:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(os.path.expanduser(os.fspath(root or DEFAULT_QUEUE))).absolute()
        self.inbox = self.root / "inbox"
        self.processing = self.root / "processing"
        self.pending = self.root / "pending"
        self.approved = self.root / "approved"
        self.rejected = self.root / "rejected"
        self.outbox = self.root / "outbox"
        self.stale = self.root / "stale"
        self.log_folder = self.root / "log"
        self.heartbeat = self.root / "heartbeat"
        self.operations = self.root / "operations.json"
        self.lock = self.root / "daemon.lock"

    def create(self) -> None:
        """Make the folders, private to this user (the queue carries commands)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in FOLDERS:
            (self.root / name).mkdir(mode=0o700, exist_ok=True)

    def check_private(self) -> None:
        """Refuse a queue another user could write to: they could queue requests as us."""
        for path in (self.root, *(self.root / name for name in FOLDERS)):
            st = path.lstat()
            if path.is_symlink() or not path.is_dir():
                raise RelayError(f"{path} must be a real folder, not a symlink or a file")
            if st.st_uid != os.geteuid():
                raise RelayError(f"{path} belongs to another user")
            if st.st_mode & 0o022:
                raise RelayError(f"{path} is writable by group or others: chmod go-w it")

    # -- files ---------------------------------------------------------------------------------

    def write(self, path: Path, data: dict[str, Any] | BaseModel) -> None:
        """Atomically: a temporary file in the same folder, flushed, synced, renamed."""
        body = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data)
        temporary = path.parent / f".tmp-{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise

    def read(self, path: Path) -> Any:
        """The JSON in ``path``; None if it is gone. Symlinks and huge files are refused."""
        try:
            # O_NONBLOCK: a FIFO planted under a request's name must not hang the reader.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"cannot open {path.name}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder, a FIFO, a device
            os.close(fd)
            raise ValueError(f"{path.name} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            try:
                data = f.read(MAX_FILE + 1)
            except OSError as exc:
                raise ValueError(f"cannot read {path.name}: {exc.strerror}") from None
        if len(data) > MAX_FILE:
            raise ValueError(f"{path.name} is over {MAX_FILE} bytes")
        try:
            return json.loads(data)
        except RecursionError:  # hostile nesting
            raise ValueError(f"{path.name} nests too deeply") from None

    def entries(self, folder: Path, suffix: str = ".json") -> list[Path]:
        """Files in a folder, oldest id first, without temporaries."""
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        return [folder / n for n in sorted(names) if n.endswith(suffix) and not n.startswith(".")]

    # -- liveness ------------------------------------------------------------------------------

    def beat(self, pid: int) -> None:
        self.write(self.heartbeat, {"pid": pid, "time": time.time(), "host": os.uname().nodename})

    def heartbeat_age(self) -> float | None:
        """Seconds since the daemon's last heartbeat, or None if there is none."""
        try:
            beat = self.read(self.heartbeat)
        except ValueError:
            return None
        if not isinstance(beat, dict) or not isinstance(beat.get("time"), int | float):
            return None
        return max(0.0, time.time() - float(beat["time"]))

    def check_atomic_rename(self) -> None:
        """Refuse a filesystem where rename does not replace atomically: readers would see
        missing or half files."""
        probe = self.root / f".rename-probe-{os.getpid()}"
        target = self.root / f".rename-target-{os.getpid()}"
        try:
            target.write_text("old")
            probe.write_text("new")
            os.replace(probe, target)
            if target.read_text() != "new" or probe.exists():
                raise RelayError(f"rename is not atomic on the filesystem of {self.root}")
        except OSError as exc:
            raise RelayError(f"cannot rename files in {self.root}: {exc}") from None
        finally:
            for path in (probe, target):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass

    def log(self, request_id: str, event: str, **details: Any) -> None:
        entry = {"time": time.time(), "id": request_id, "event": event, **details}
        self.write(self.log_folder / f"{time.time_ns():016x}-{request_id}.json", entry)
