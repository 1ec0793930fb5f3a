"""The relay client, used on the compute node: drop a request, wait for its answer."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..errors import (
    InvalidArgumentError,
    RelayCrashed,
    RelayDown,
    RelayError,
    RelayRejected,
    RelayTimeout,
    RelayValidationError,
)
from .queue import Queue, RelayRequest, RelayResult, new_id

STALE_AFTER = 30.0  # a heartbeat older than this means nobody serves the queue
CLIENT_POLL = 0.1
DEFAULT_TIMEOUT = 60.0
MARGIN = 30.0  # waited beyond an operation's own timeout: queueing, polling, writing
CONSENT_WAIT = 24 * 3600.0


class RelayClient:
    """Runs whitelisted operations through a relay daemon that shares this queue folder.

    ``cwd`` is where operations run (``~`` is expanded); ``queue`` defaults to ``~/.relay``.
    A command that runs and fails is a result with its ``returncode``; the other outcomes
    raise: :class:`RelayDown` at once when no daemon beats, :class:`RelayValidationError`,
    :class:`RelayRejected`, :class:`RelayTimeout`, :class:`RelayCrashed`.
    """

    def __init__(
        self,
        cwd: str | os.PathLike[str] = ".",
        *,
        queue: str | os.PathLike[str] | None = None,
        poll: float = CLIENT_POLL,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.cwd = str(Path(os.path.expanduser(os.fspath(cwd))).absolute())
        self.queue = Queue(queue)
        self.poll = poll
        self.stale_after = stale_after

    # -- the operations ----------------------------------------------------------------------------

    def pull(self, remote: str | None = None, branch: str | None = None) -> RelayResult:
        """``git pull --ff-only`` [remote [branch]] (a branch alone pulls from origin)."""
        if branch is not None:
            return self.request("git_pull", args=[remote or "origin", branch])
        return self.request("git_pull", args=[remote] if remote else [])

    def push(self, branch: str, remote: str | None = None) -> RelayResult:
        """``git push remote branch`` (remote: origin)."""
        return self.request("git_push", args=[branch] + ([remote] if remote else []))

    def fetch(self, remote: str | None = None, branch: str | None = None) -> RelayResult:
        if branch is not None:
            return self.request("git_fetch", args=[remote or "origin", branch])
        return self.request("git_fetch", args=[remote] if remote else [])

    def status(self) -> RelayResult:
        return self.request("git_status")

    def rebase(self, onto: str) -> RelayResult:
        return self.request("git_rebase", args=[onto])

    # -- any operation -----------------------------------------------------------------------------

    def request(
        self, op: str, args: list[str] | tuple[str, ...] = (), *, timeout: float | None = None
    ) -> RelayResult:
        """Run ``op`` with ``args`` and wait for the answer. ``timeout`` defaults to the
        operation's own (plus a margin), and for an operation that needs consent, to a
        day: the wait for a person."""
        if not isinstance(op, str) or not op:
            raise InvalidArgumentError("op must be an operation name")
        if isinstance(args, str) or not all(isinstance(a, str) for a in args):
            raise InvalidArgumentError("args must be a list of strings")
        self._check_alive()
        wait = timeout if timeout is not None else self._default_wait(op)
        request = RelayRequest(
            id=new_id(),
            op=op,
            args=list(args),
            cwd=self.cwd,
            created=time.time(),
            host=os.uname().nodename,
            pid=os.getpid(),
        )
        inbox = self.queue.inbox / f"{request.id}.json"
        self.queue.write(inbox, request)
        try:
            answer = self._wait(request.id, wait)
        except BaseException:
            # Withdraw it if the daemon has not run it yet: nobody waits for the answer, and a
            # request left awaiting consent must not run later, unobserved.
            inbox.unlink(missing_ok=True)
            (self.queue.pending / inbox.name).unlink(missing_ok=True)
            raise
        return _outcome(answer)

    def _default_wait(self, op: str) -> float:
        try:
            published = self.queue.read(self.queue.operations) or {}
        except ValueError:
            published = {}
        meta = published.get("operations", {}).get(op) if isinstance(published, dict) else None
        if not isinstance(meta, dict):
            return DEFAULT_TIMEOUT  # unknown here: the daemon will say so at once
        wait = float(meta.get("timeout", DEFAULT_TIMEOUT)) + MARGIN
        return wait + CONSENT_WAIT if meta.get("consent") else wait

    def _check_alive(self) -> None:
        age = self.queue.heartbeat_age()
        if age is None:
            raise RelayDown(f"no relay daemon serves {self.queue.root} (no heartbeat)")
        if age > self.stale_after:
            raise RelayDown(
                f"the relay daemon of {self.queue.root} last beat {age:.0f} s ago: it is down"
            )

    def _wait(self, request_id: str, wait: float) -> dict[str, Any]:
        answer_path = self.queue.outbox / f"{request_id}.json"
        deadline = time.monotonic() + wait
        next_check = time.monotonic() + 1.0
        while True:
            try:
                answer = self.queue.read(answer_path)
            except ValueError as exc:
                raise RelayError(f"unreadable answer: {exc}") from None
            if isinstance(answer, dict):
                answer_path.unlink(missing_ok=True)
                return answer
            now = time.monotonic()
            if now >= deadline:
                raise RelayTimeout(f"no answer from the relay within {wait:g} s")
            if now >= next_check:  # a daemon that died mid-wait: say so, don't sit it out
                self._check_alive()
                next_check = now + 1.0
            time.sleep(min(self.poll, max(0.0, deadline - now)))


def _outcome(answer: dict[str, Any]) -> RelayResult:
    try:
        result = RelayResult.model_validate(answer)
    except ValueError as exc:
        raise RelayError(f"malformed answer from the relay: {exc}") from None
    details = {"request_id": result.id, "op": result.op}
    if result.status in ("ok", "failed"):
        return result
    if result.status == "validation":
        raise RelayValidationError(result.message, rule=result.rule, **details)
    if result.status in ("rejected", "expired"):
        raise RelayRejected(result.message, **details)
    if result.status == "timeout":
        raise RelayTimeout(result.message, stdout=result.stdout, stderr=result.stderr, **details)
    if result.status == "crashed":
        raise RelayCrashed(result.message, **details)
    raise RelayError(f"unknown relay status {result.status!r}: {result.message}", **details)
