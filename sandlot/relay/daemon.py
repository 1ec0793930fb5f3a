"""The relay daemon, run on the login node: claims requests, checks them, runs them, answers.

One daemon per queue (an flock on ``daemon.lock``). It beats every 5 s and polls every 0.5 s.
A request is claimed by renaming it from ``inbox`` to ``processing``, so it runs at most once:
after a crash, what is left in ``processing`` is answered ``crashed``, never run again.
Commands run without a shell, with a fixed minimal environment, in their own process group,
with their output in temporary files (so a chatty command costs no memory) and capped in the
answer.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from ..errors import RelayError
from .ops import Whitelist
from .queue import Queue, RelayResult
from .validate import (
    REQUEST_ID,
    Checked,
    Refused,
    check,
    check_git_repository,
    environment,
    git_identity,
    hardened,
)

POLL = 0.5
HEARTBEAT = 5.0
CONSENT_EXPIRY = 24 * 3600.0
RETENTION = 7 * 24 * 3600.0
CLEANUP_EVERY = 3600.0
OUTPUT_CAP = 1024 * 1024  # per stream: the first and last half are kept
WORKERS = 4


class Daemon:
    def __init__(
        self,
        queue: Queue,
        whitelist: Whitelist,
        *,
        home: Path | None = None,
        poll: float = POLL,
        heartbeat: float = HEARTBEAT,
        consent_expiry: float = CONSENT_EXPIRY,
        retention: float = RETENTION,
        output_cap: int = OUTPUT_CAP,
        workers: int = WORKERS,
        consent_codes: bool = True,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.queue = queue
        self.whitelist = whitelist
        self.home = (home or Path.home()).resolve()
        self.poll = poll
        self.heartbeat_every = heartbeat
        self.consent_expiry = consent_expiry
        self.retention = retention
        self.output_cap = output_cap
        self.env = environment(self.home, whitelist.roots)
        self.git_identity = git_identity(self.home)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="relay-op")
        self._stop = threading.Event()
        self._lock_fd: int | None = None
        # Consent codes live only in this process and its terminal, never in the shared
        # queue: the compute node (or the agent on it) cannot approve its own requests.
        self.consent_codes = consent_codes
        self._codes: dict[str, str] = {}
        self._say = say or (lambda text: None)

    # -- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the queue and take it over; raises RelayError if it cannot serve it."""
        queue = self.queue
        queue.create()
        queue.check_private()
        queue.check_atomic_rename()
        self._take_lock()
        queue.write(
            queue.operations,
            {
                "operations": {n: op.public() for n, op in self.whitelist.operations.items()},
                "poll": self.poll,
                "heartbeat": self.heartbeat_every,
            },
        )
        queue.beat(os.getpid())
        self._recover()
        self._cleanup()
        for path in queue.entries(queue.pending):  # codes of a previous run are gone
            self._ask_consent(path.name[: -len(".json")], self._read_quietly(path))

    def run(self) -> None:
        """Serve until :meth:`stop`; then wait for running operations."""
        if self._lock_fd is None:
            self.start()
        next_beat = time.monotonic() + self.heartbeat_every
        next_cleanup = time.monotonic() + CLEANUP_EVERY
        try:
            while not self._stop.is_set():
                self.tick()
                now = time.monotonic()
                if now >= next_beat:
                    self.queue.beat(os.getpid())
                    next_beat = now + self.heartbeat_every
                if now >= next_cleanup:
                    self._cleanup()
                    next_cleanup = now + CLEANUP_EVERY
                self._stop.wait(self.poll)
        finally:
            self._pool.shutdown(wait=True)
            try:
                self.queue.heartbeat.unlink()  # clients see at once that nobody serves
            except FileNotFoundError:
                pass

    def stop(self) -> None:
        self._stop.set()

    def _take_lock(self) -> None:
        import fcntl

        fd = os.open(self.queue.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RelayError(f"another relay daemon serves {self.queue.root}") from None
        self._lock_fd = fd  # held until the process exits

    # -- one turn ----------------------------------------------------------------------------------

    def tick(self) -> None:
        for handle, folder in ((self._claim, self.queue.inbox), (self._decide, self.queue.pending)):
            for path in self.queue.entries(folder):
                try:
                    handle(path)
                except Exception as exc:  # one hostile file must not stop the daemon
                    self._quarantine(path, exc)

    def _quarantine(self, path: Path, exc: Exception) -> None:
        request_id = path.name[: -len(".json")]
        reason = f"{type(exc).__name__}: {exc}"[:300]
        self.queue.log(
            request_id if REQUEST_ID.fullmatch(request_id) else "-", "quarantined", reason=reason
        )
        for candidate in (path, self.queue.processing / path.name):
            try:
                os.replace(candidate, self.queue.stale / f".quarantined-{time.time_ns()}")
            except OSError:
                continue
        if REQUEST_ID.fullmatch(request_id):
            try:
                self._answer(request_id, {}, "validation", rule="request", message=reason)
            except OSError:
                pass

    def _claim(self, path: Path) -> None:
        request_id = path.name[: -len(".json")]
        if not REQUEST_ID.fullmatch(request_id):
            self._discard(path, "a request file name that is not an id")
            return
        claimed = self.queue.processing / path.name
        try:
            os.rename(path, claimed)  # the claim: only one rename of a file succeeds
        except FileNotFoundError:
            return  # withdrawn by its client
        try:
            request = self.queue.read(claimed)
        except ValueError as exc:
            self._refuse(claimed, request_id, "?", Refused("request", f"unreadable: {exc}"))
            return
        op = str(request.get("op", "?"))[:64] if isinstance(request, dict) else "?"
        try:
            checked = check(request, self.whitelist)
        except Refused as refusal:
            self._refuse(claimed, request_id, op, refusal)
            return
        if checked.operation.consent:
            os.rename(claimed, self.queue.pending / path.name)
            self.queue.log(request_id, "awaiting_consent", op=op, args=checked.args)
            self._ask_consent(request_id, request)
            return
        self._submit(claimed, request_id, checked)

    def _decide(self, path: Path) -> None:
        request_id = path.name[: -len(".json")]
        if (self.queue.rejected / request_id).exists():  # reject wins over approve
            request = self._read_quietly(path)
            self._answer(request_id, request, "rejected", message="a person rejected the request")
            self.queue.log(request_id, "rejected")
            path.unlink(missing_ok=True)
            return
        marker = self.queue.approved / request_id
        if marker.exists():
            if self.consent_codes and not self._code_matches(request_id, marker):
                request = self._read_quietly(path)
                self._answer(
                    request_id,
                    request,
                    "rejected",
                    message="approved without the right consent code (shown only in the "
                    "daemon's terminal): taken as a rejection",
                )
                self.queue.log(request_id, "rejected", reason="wrong consent code")
                path.unlink(missing_ok=True)
                return
            self._codes.pop(request_id, None)
            claimed = self.queue.processing / path.name
            os.rename(path, claimed)
            self.queue.log(request_id, "approved")
            request = self._read_quietly(claimed)
            try:
                checked = check(request, self.whitelist)  # the world may have changed
            except Refused as refusal:
                self._refuse(claimed, request_id, str(request.get("op", "?")), refusal)
                return
            self._submit(claimed, request_id, checked)
            return
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return
        if age > self.consent_expiry:
            request = self._read_quietly(path)
            self._answer(
                request_id,
                request,
                "expired",
                message=f"nobody approved the request within {self.consent_expiry:g} s",
            )
            self.queue.log(request_id, "expired")
            os.replace(path, self.queue.stale / path.name)

    def _ask_consent(self, request_id: str, request: dict[str, Any]) -> None:
        args = " ".join(str(a) for a in request.get("args") or [])
        command = f"sandlot relay approve {request_id}"
        if self.consent_codes:
            code = self._codes.setdefault(request_id, secrets.token_hex(4))
            command += f" --code {code}"
        self._say(
            f"consent needed: {request.get('op')} {args} in {request.get('cwd')} "
            f"(from {request.get('host') or '?'}): {command}   or: sandlot relay reject "
            f"{request_id}"
        )

    def _code_matches(self, request_id: str, marker: Path) -> bool:
        try:
            decision = self.queue.read(marker)
        except ValueError:
            return False
        expected = self._codes.get(request_id)
        given = decision.get("code") if isinstance(decision, dict) else None
        return (
            expected is not None
            and isinstance(given, str)
            and secrets.compare_digest(given, expected)
        )

    # -- running -----------------------------------------------------------------------------------

    def _submit(self, claimed: Path, request_id: str, checked: Checked) -> None:
        self.queue.log(request_id, "started", op=checked.operation.name, args=checked.args)
        self._pool.submit(self._run, claimed, request_id, checked)

    def _run(self, claimed: Path, request_id: str, checked: Checked) -> None:
        request: dict[str, Any] = {"op": checked.operation.name}
        try:
            result = self._execute(request_id, checked)
        except Refused as refusal:
            result = self._result(
                request_id, request, "validation", rule=refusal.rule, message=refusal.message
            )
        except Exception as exc:  # a daemon bug must still answer, not leave the client hanging
            result = self._result(request_id, request, "failed", message=f"relay error: {exc}")
        self.queue.write(self.queue.outbox / f"{request_id}.json", result)
        self.queue.log(
            request_id,
            "finished",
            op=result.op,
            status=result.status,
            returncode=result.returncode,
            duration_s=round(result.duration_s, 3),
        )
        claimed.unlink(missing_ok=True)

    def _execute(self, request_id: str, checked: Checked) -> RelayResult:
        operation = checked.operation
        request = {"op": operation.name}
        if checked.argv[0] == "git":
            check_git_repository(checked.cwd, self.env, self.whitelist.roots)
        argv = hardened(checked.argv, self.git_identity)
        program = shutil.which(argv[0], path=self.env["PATH"])
        if program is None:
            return self._result(
                request_id,
                request,
                "failed",
                returncode=127,
                message=f"{argv[0]} is not installed where the relay looks ({self.env['PATH']})",
            )
        started = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(
                [program, *argv[1:]],
                cwd=checked.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a timeout kills everything it started
            )
            try:
                returncode = process.wait(timeout=operation.timeout)
                status = "ok" if returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                returncode = process.wait()
                status = "timeout"
            stdout, cut_out = _capped(out, self.output_cap)
            stderr, cut_err = _capped(err, self.output_cap)
        return self._result(
            request_id,
            request,
            status,
            returncode=returncode,
            stdout=stdout,
            stderr=stderr,
            truncated=cut_out or cut_err,
            duration_s=time.monotonic() - started,
            message=f"ran past its timeout of {operation.timeout:g} s"
            if status == "timeout"
            else "",
        )

    # -- answers -----------------------------------------------------------------------------------

    def _result(self, request_id: str, request: Any, status: str, **fields: Any) -> RelayResult:
        op = str(request.get("op", "?"))[:64] if isinstance(request, dict) else "?"
        return RelayResult(id=request_id, op=op, status=status, finished=time.time(), **fields)

    def _answer(self, request_id: str, request: Any, status: str, **fields: Any) -> None:
        result = self._result(request_id, request, status, **fields)
        self.queue.write(self.queue.outbox / f"{request_id}.json", result)

    def _refuse(self, claimed: Path, request_id: str, op: str, refusal: Refused) -> None:
        self._answer(
            request_id, {"op": op}, "validation", rule=refusal.rule, message=refusal.message
        )
        self.queue.log(request_id, "refused", op=op, rule=refusal.rule, message=refusal.message)
        os.replace(claimed, self.queue.stale / claimed.name)

    def _discard(self, path: Path, why: str) -> None:
        self.queue.log("-", "discarded", file=path.name[:100], reason=why)
        try:
            os.replace(path, self.queue.stale / f".discarded-{time.time_ns()}")
        except FileNotFoundError:
            pass

    def _read_quietly(self, path: Path) -> dict[str, Any]:
        try:
            request = self.queue.read(path)
        except ValueError:
            return {}
        return request if isinstance(request, dict) else {}

    # -- recovery and retention --------------------------------------------------------------------

    def _recover(self) -> None:
        """Requests a dead daemon left running: answered ``crashed``, never run again."""
        for path in self.queue.entries(self.queue.processing):
            request_id = path.name[: -len(".json")]
            if not (self.queue.outbox / path.name).exists():
                self._answer(
                    request_id,
                    self._read_quietly(path),
                    "crashed",
                    message="the relay daemon stopped while this ran; it was not run again",
                )
                self.queue.log(request_id, "crashed")
            os.replace(path, self.queue.stale / path.name)

    def _cleanup(self) -> None:
        """Old answers, log entries, markers and stale requests go after the retention period;
        temporaries that a crashed writer left in the inbox, after an hour."""
        now = time.time()
        queue = self.queue
        folders = (queue.outbox, queue.log_folder, queue.approved, queue.rejected, queue.stale)
        for folder in folders:
            _remove_older(folder, now - self.retention, lambda name: True)
        _remove_older(queue.inbox, now - 3600, lambda name: name.startswith(".tmp-"))


def _remove_older(folder: Path, cutoff: float, wanted: Callable[[str], bool]) -> None:
    for entry in os.scandir(folder):
        try:
            if wanted(entry.name) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass


def _capped(stream: IO[bytes], cap: int) -> tuple[str, bool]:
    """The output in a temporary file: all of it, or its head and tail around a marker."""
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    if size <= cap:
        return stream.read().decode("utf-8", "replace"), False
    half = cap // 2
    head = stream.read(half)
    stream.seek(size - half)
    tail = stream.read(half)
    marker = f"\n[relay: {size - 2 * half} bytes cut here]\n".encode()
    return (head + marker + tail).decode("utf-8", "replace"), True
