"""The soak load: rounds of concurrent remote clients against one real ``sandlot serve``.

Shared by the CI test (``tests/soak/test_soak.py``, a few short rounds) and the benchmark
(``benchmarks/bench_soak.py``, the issue's numbers for half an hour or more). Nothing here is
faked: a real server process (SQLite in its state folder, or a PostgreSQL URL), real bwrap
sandboxes, the remote-mode SDK, and CPU hogs (busy loops at the server's niceness) so the
server works under contention, as in the field report of issue 16.

A round runs at once, each as an asyncio task of this process:

- ``clients`` clients, each creating a sandbox and running ``commands`` commands whose output
  is checked exactly, then killing it;
- ``streams`` clients, each streaming ``stream_mib`` MiB out of a sandbox and counting it;
- one churn task creating, using and killing ``churn`` sandboxes one after the other.

Every call is bounded (``asyncio.wait_for``); a bound hit is a hang, not an error. After the
round, once no sandbox is left, :meth:`Soak.measure` reads what must not grow: the server's
RSS and descriptors, the processes and cgroup folders of its sandboxes, mounts, and the
database rows retention should have dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from remote.server import ServerProcess

import sandlot
from sandlot.errors import RemoteUnavailableError
from sandlot.providers import procinfo

REPO = Path(__file__).resolve().parents[2]
CGROUP_ROOT = Path("/sys/fs/cgroup")
MiB = 1024 * 1024
HANG_KILL = 20.0  # seconds a kill may take once the round has hung
# After the last round, before the final measure: the server keeps an ended execution's run
# 60 s (ServerState._pump) and gives its heap's free memory back every 30 s (memory.py), so
# rounds shorter than that pile up runs that RSS right after a round counts.
REST = 95.0
PROBE = 30.0  # seconds each step of the wedge probe may take
T = TypeVar("T")


class Hang(Exception):
    """A call did not answer within its bound."""


@dataclass
class SoakConfig:
    rounds: int = 3
    clients: int = 16
    commands: int = 10  # per client
    streams: int = 2
    stream_mib: int = 8
    churn: int = 8  # sandboxes created, used and killed one after the other, per round
    hogs: int = 2  # busy-loop processes beside the server
    call_bound: float = 120.0  # seconds any one SDK call may take before it counts as a hang
    stream_bound: float = 300.0  # a whole stream
    settle_bound: float = 60.0  # for the sandboxes to be gone after a round
    retention_seconds: float = 8.0  # the server's; its pruning then runs every 2 s
    database_url: str | None = None  # None: SQLite in the server's state folder
    server_env: dict[str, str] = field(default_factory=dict)  # e.g. MALLOC_ARENA_MAX

    @property
    def maintenance_seconds(self) -> float:
        # ServerState._maintain's interval, as it derives it from the retention.
        return max(1.0, min(300.0, self.retention_seconds / 4))


@dataclass
class Snapshot:
    """What the server holds with no sandbox left."""

    rss_kb: int = 0
    hwm_kb: int = 0  # peak RSS so far
    threads: int = 0
    fds: int = 0
    fd_kinds: dict[str, int] = field(default_factory=dict)  # what they are (socket, a path)
    children: int = 0  # the server's descendants
    cgroup_procs: int = 0  # processes in the cgroups of its state folder
    bwrap_host: int = 0  # bwrap processes on the whole host (other users' too: information)
    cgroup_folders: int = 0  # folders of its state folder's scope, the scope itself included
    cgroup_folders_host: int = 0  # everything under the sandlot groups (information)
    mounts: int = 0  # lines of the server's mountinfo
    sandboxes_listed: int = 0  # GET /v1/sandboxes
    running_metric: float = math.nan  # sandlot_sandboxes{state="running"}
    db: dict[str, int] = field(default_factory=dict)


@dataclass
class RoundResult:
    round: int
    wall_s: float = 0.0
    commands: int = 0  # checked command results (clients, streams and churn)
    command_phase_s: float = 0.0  # first client command started to last one ended
    latencies: list[float] = field(default_factory=list)  # client commands, seconds
    stream_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)  # new tracebacks in the server log
    wedged: bool = False  # after hangs, a fresh create hung too
    leftover: str = ""  # what was still there when settling gave up
    snapshot: Snapshot = field(default_factory=Snapshot)

    @property
    def per_second(self) -> float:
        client_commands = len(self.latencies)
        return client_commands / self.command_phase_s if self.command_phase_s > 0 else 0.0

    def p(self, q: int) -> float:
        """The q-th percentile, interpolated between closest ranks (as numpy's default)."""
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else math.nan
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latencies"]
        data.update(
            per_second=self.per_second,
            p50_ms=self.p(50) * 1000,
            p99_ms=self.p(99) * 1000,
            n=len(self.latencies),
        )
        return data

    def line(self) -> str:
        s = self.snapshot
        return (
            f"round {self.round}: {self.wall_s:.1f} s, {self.commands} commands "
            f"({self.per_second:.0f}/s, p50 {self.p(50) * 1000:.0f} ms, "
            f"p99 {self.p(99) * 1000:.0f} ms), errors {len(self.errors)}, hangs "
            f"{len(self.hangs)}{' WEDGED' if self.wedged else ''}; RSS {s.rss_kb / 1024:.0f} "
            f"MiB (peak {s.hwm_kb / 1024:.0f}), threads {s.threads}, fds {s.fds}, children "
            f"{s.children}, cgroup procs {s.cgroup_procs}, cgroup folders {s.cgroup_folders}, "
            f"mounts {s.mounts}, db {s.db}"
        )


async def bounded(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """The awaitable's result, or Hang once ``seconds`` have passed. Unlike ``wait_for``,
    the bound holds even if the call does not end when cancelled (``wait_for`` waits for
    the cancellation to finish, which a wedged call may never do): it is left behind."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except BaseException:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_ignore)
        raise Hang(f"{what}: no answer within {seconds:g} s")
    return task.result()


def _ignore(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a call abandoned after its bound fails quietly


class Soak:
    """One server, its CPU hogs, and the rounds run against it."""

    def __init__(self, config: SoakConfig, home: Path | None = None) -> None:
        self.config = config
        # Not below another 0700 folder: the sandboxes' bwrap must reach it.
        self.home = home or Path(tempfile.mkdtemp(prefix="slsoak-", dir="/tmp"))
        self.server: ServerProcess | None = None
        self.hogs: list[subprocess.Popen[bytes]] = []
        self.client: sandlot.Client | None = None
        self._log_offset = 0
        # The bwrap provider's cgroup scope: a hash of the server's state folder.
        self.scope = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]

    # -- the server and the hogs ------------------------------------------------------------

    def start(self) -> None:
        days = self.config.retention_seconds / 86400
        args = ("--kill-on-exit", "--retention-days", f"{days:.9f}")
        # The sandlot under test, also where the working folder has none (-m puts it first).
        env = {"PYTHONPATH": str(REPO), **self.config.server_env}
        self.server = ServerProcess(
            self.home, database_url=self.config.database_url, args=args, env=env
        )
        self.server.start(timeout=60)
        self.client = sandlot.Client(self.server.url)
        # Busy loops at niceness 0 that end with this process, however it ends.
        spin = f"import os\nwhile os.getppid() == {os.getpid()}: pass"
        for _ in range(self.config.hogs):
            self.hogs.append(subprocess.Popen([sys.executable, "-S", "-c", spin]))

    @property
    def pid(self) -> int:
        assert self.server is not None and self.server.process is not None
        return self.server.process.pid

    def alive(self) -> bool:
        return (
            self.server is not None
            and self.server.process is not None
            and (self.server.process.poll() is None)
        )

    def server_module(self) -> Path:
        """The folder the server imports sandlot from: ``python -m`` puts its working
        folder first on ``sys.path``, before ``PYTHONPATH``."""
        cwd = Path(os.readlink(f"/proc/{self.pid}/cwd"))
        return cwd if (cwd / "sandlot").is_dir() else REPO

    async def stop(self) -> None:
        for hog in self.hogs:
            hog.kill()
            hog.wait()
        self.hogs.clear()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.aclose()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.home / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- a round ----------------------------------------------------------------------------

    async def round(self, number: int) -> RoundResult:
        result = RoundResult(number)
        c = self.config
        started = time.monotonic()
        spans: list[tuple[float, float]] = []
        tasks = [self._client(result, spans, number, k) for k in range(c.clients)]
        tasks += [self._stream(result, number, k) for k in range(c.streams)]
        tasks.append(self._churn(result, number))
        await asyncio.gather(*tasks)
        result.wall_s = time.monotonic() - started
        if spans:
            result.command_phase_s = max(e for _, e in spans) - min(s for s, _ in spans)
        if result.hangs:
            result.wedged = await self._wedged()
        # A wedged server cannot end what it holds: settling would only wait out its bound.
        result.leftover = "the server is wedged" if result.wedged else await self._settle()
        result.log_problems = self._new_log_problems()
        result.snapshot = await self.measure()
        return result

    async def _client(
        self, result: RoundResult, spans: list[tuple[float, float]], number: int, k: int
    ) -> None:
        await self._in_sandbox(result, f"client {k}", self._commands(result, spans, number, k))

    def _commands(
        self, result: RoundResult, spans: list[tuple[float, float]], number: int, k: int
    ) -> Callable[[sandlot.AsyncSandbox], Awaitable[None]]:
        async def run(sb: sandlot.AsyncSandbox) -> None:
            first = last = None
            try:
                for i in range(self.config.commands):
                    word = f"soak-{number}-{k}-{i}"
                    t0 = time.monotonic()
                    first = first or t0
                    done = await bounded(
                        sb.commands.run(f"echo {word}"), self.config.call_bound, f"run {word}"
                    )
                    last = time.monotonic()
                    result.latencies.append(last - t0)
                    self._check(result, f"run {word}", done, f"{word}\n".encode())
            finally:  # a hang ends the client: its commands so far still count
                if first is not None and last is not None:
                    spans.append((first, last))

        return run

    async def _stream(self, result: RoundResult, number: int, k: int) -> None:
        size = self.config.stream_mib * MiB

        async def run(sb: sandlot.AsyncSandbox) -> None:
            counted = 0

            def count(data: bytes | str) -> None:
                nonlocal counted
                counted += len(data)

            done = await bounded(
                sb.commands.run(
                    f"head -c {size} /dev/zero | tr '\\0' x",
                    on_stdout=count,
                    max_output_bytes=0,
                    timeout=self.config.stream_bound,
                ),
                self.config.stream_bound,
                f"stream {number}-{k}",
            )
            self._check(result, f"stream {number}-{k}", done, None)
            if counted != size:
                result.errors.append(f"stream {number}-{k}: {counted} bytes, not {size}")
            result.stream_bytes += counted

        await self._in_sandbox(result, f"stream {k}", run)

    async def _churn(self, result: RoundResult, number: int) -> None:
        for k in range(self.config.churn):

            async def run(sb: sandlot.AsyncSandbox, k: int = k) -> None:
                done = await bounded(
                    sb.commands.run(["echo", str(k)]), self.config.call_bound, f"churn run {k}"
                )
                self._check(result, f"churn {number}-{k}", done, f"{k}\n".encode())

            if not await self._in_sandbox(result, f"churn {k}", run):
                return  # after a hang the next would hang too: the round says so already

    async def _in_sandbox(
        self,
        result: RoundResult,
        who: str,
        work: Callable[[sandlot.AsyncSandbox], Awaitable[None]],
        bound: float | None = None,
    ) -> bool:
        """Create a sandbox, do the work in it, kill it: every step bounded. False after a
        hang (the caller stops: the server is then likely stuck for everyone)."""
        bound = bound or self.config.call_bound
        sb = None
        try:
            sb = await bounded(
                # A lifetime that ends what a wedged server could not kill, after a while.
                sandlot.AsyncSandbox.create(timeout=900, client=self.client),
                bound,
                "create",
            )
            await work(sb)
            return True
        except Hang as exc:
            result.hangs.append(f"{who}: {exc}")
            return False
        except Exception as exc:
            if _unanswered(exc):
                result.hangs.append(f"{who}: {exc}"[:500])
                return False
            result.errors.append(f"{who}: {type(exc).__name__}: {exc}"[:500])
            return True
        finally:
            if sb is not None:
                try:
                    # After a hang the kill likely hangs too: it need not wait as long.
                    await bounded(sb.kill(), bound if not result.hangs else HANG_KILL, "kill")
                except Hang as exc:
                    result.hangs.append(f"{who}: {exc}")
                except Exception as exc:
                    where = result.hangs if _unanswered(exc) else result.errors
                    where.append(f"{who} kill: {type(exc).__name__}: {exc}"[:500])
                with contextlib.suppress(Exception):
                    await sb.close()

    @staticmethod
    def _check(result: RoundResult, what: str, done: Any, stdout: bytes | None) -> None:
        result.commands += 1
        if done.exit_code != 0 or (stdout is not None and done.stdout_bytes != stdout):
            result.errors.append(
                f"{what}: exit {done.exit_code}, stdout {done.stdout_bytes[:100]!r}, "
                f"stderr {done.stderr_bytes[:200]!r}"
            )

    async def _wedged(self) -> bool:
        """After hangs: whether the server still creates a sandbox and runs a command."""

        async def probe(sb: sandlot.AsyncSandbox) -> None:
            await bounded(sb.commands.run("true"), PROBE, "probe run")

        probe_result = RoundResult(-1)
        await self._in_sandbox(probe_result, "probe", probe, PROBE)
        return bool(probe_result.hangs)

    async def _settle(self) -> str:
        """Wait until the server lists no sandbox and none of its processes is left; what
        was still there when the bound passed ("" if nothing)."""
        assert self.client is not None
        deadline = time.monotonic() + self.config.settle_bound
        why = ""
        while time.monotonic() < deadline:
            try:
                listed = await bounded(sandlot.AsyncSandbox.list(client=self.client), 10, "list")
            except Exception as exc:
                why = f"listing failed: {exc}"
                await asyncio.sleep(0.5)
                continue
            children = procinfo.descendants(self.pid)
            procs = self._cgroup_procs()
            folders = self._scope_folders(sandboxes_only=True)
            # A killed sandbox's workspace is unmounted a moment after its processes are
            # gone (its disk image is released in the background).
            mounts = self._home_mounts()
            if not listed and not children and not procs and not folders and not mounts:
                return ""
            why = (
                f"{len(listed)} listed, {len(children)} children, {len(procs)} processes, "
                f"{folders} sandbox folders in the cgroups and {mounts} workspace mounts"
            )
            await asyncio.sleep(0.2)
        return why

    def _home_mounts(self) -> int:
        """Mounts under the server's state folder (sandboxes' disk-capped workspaces)."""
        home = f" {self.home}/"
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/mountinfo") as f:
            return sum(home in line for line in f)
        return 0

    def _new_log_problems(self) -> list[str]:
        try:
            with open(self.home / "server.log", "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
                self._log_offset = f.tell()
        except OSError:
            return []
        return [
            line.strip()
            for line in text.splitlines()
            if re.search(r"Traceback|^ERROR|Error:|exception", line)
        ][:20]

    # -- measuring --------------------------------------------------------------------------

    async def rest(
        self,
        seconds: float = REST,
        until: Callable[[Snapshot], bool] | None = None,
        every: float = 2.0,
    ) -> Snapshot:
        """What the server holds once it has had time to let go after the load: after
        ``seconds``, or as soon as a snapshot taken every ``every`` s satisfies ``until``."""
        deadline = time.monotonic() + seconds
        while until is not None and time.monotonic() < deadline:
            snap = await self.measure()
            if until(snap):
                return snap
            await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        return await self.measure()

    async def measure(self) -> Snapshot:
        status = _status(self.pid)
        snap = Snapshot(
            rss_kb=status.get("VmRSS", 0),
            hwm_kb=status.get("VmHWM", 0),
            threads=status.get("Threads", 0),
            fds=_count(f"/proc/{self.pid}/fd"),
            fd_kinds=_fd_kinds(self.pid),
            children=len(procinfo.descendants(self.pid)),
            cgroup_procs=len(self._cgroup_procs()),
            bwrap_host=_bwrap_count(),
            cgroup_folders=self._scope_folders(),
            cgroup_folders_host=_host_cgroup_folders(),
            mounts=_lines(f"/proc/{self.pid}/mountinfo"),
        )
        assert self.client is not None
        with contextlib.suppress(Exception):
            listed = await bounded(sandlot.AsyncSandbox.list(client=self.client), 10, "list")
            snap.sandboxes_listed = len(listed)
        with contextlib.suppress(Exception):
            snap.running_metric = await asyncio.to_thread(self._running_metric)
        snap.db = await asyncio.to_thread(self.db_rows)
        return snap

    def _running_metric(self) -> float:
        assert self.server is not None
        with urllib.request.urlopen(self.server.url + "/metrics", timeout=10) as answer:
            text = answer.read().decode()
        found = re.search(r'^sandlot_sandboxes\{state="running"\} (\S+)$', text, re.M)
        return float(found.group(1)) if found else math.nan

    def _scope_roots(self) -> list[Path]:
        roots = [CGROUP_ROOT / "sandlot" / self.scope]  # v2
        roots += [p / "sandlot" / self.scope for p in _controllers()]  # v1
        return roots

    def _scope_folders(self, sandboxes_only: bool = False) -> int:
        """Folders of this server's scope in every controller, the scope folders included
        (left empty, they are what issue 16 saw accumulate: four per state folder on v1)."""
        total = 0
        for root in self._scope_roots():
            if root.is_dir():
                total += (0 if sandboxes_only else 1) + sum(1 for p in root.iterdir() if p.is_dir())
        return total

    def _cgroup_procs(self) -> set[int]:
        found: set[int] = set()
        for root in self._scope_roots():
            if not root.is_dir():
                continue
            for folder in root.iterdir():
                with contextlib.suppress(OSError):
                    found.update(int(x) for x in (folder / "cgroup.procs").read_text().split())
        return found

    def db_rows(self) -> dict[str, int]:
        """Rows of the store, read-only: ended sessions and their sandboxes, executions
        and events, and ``expired_events``: events retention should have pruned by now.
        Retention drops only events: the other rows are kept for good."""
        from sqlalchemy import create_engine, text

        url = self.config.database_url
        if url is None:
            url = f"sqlite:///file:{self.home / 'server.db'}?mode=ro&uri=true"
        # A prune drops the whole log of a session that ended (its last write) longer than
        # retention before its start; one starts every interval. So two intervals (and a
        # margin) past that, an event left is one the pruning missed.
        late = time.time() - 2 * self.config.maintenance_seconds - 2
        params = {"old": late - self.config.retention_seconds}
        queries = {
            "sessions": "SELECT count(*) FROM sessions",
            "sessions_ended": "SELECT count(*) FROM sessions WHERE status = 'ended'",
            "sandboxes_ended": "SELECT count(*) FROM sandboxes WHERE state = 'ended'",
            "executions_ended": "SELECT count(*) FROM executions WHERE state = 'ended'",
            "events": "SELECT count(*) FROM events",
            "expired_events": "SELECT count(*) FROM events WHERE session_id IN "
            "(SELECT id FROM sessions WHERE status = 'ended' AND updated_at < :old)",
        }
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return {
                    name: int(conn.execute(text(q), params).scalar_one())
                    for name, q in queries.items()
                }
        finally:
            engine.dispose()


def _unanswered(exc: Exception) -> bool:
    """The SDK's own bound on a call ran out first: a hang too, not an error."""
    return isinstance(exc, RemoteUnavailableError) and "did not answer" in str(exc)


# -- /proc and /sys readers -----------------------------------------------------------------


def _fd_kinds(pid: int) -> dict[str, int]:
    """The process's descriptors by what they are: ``socket``, ``pipe``, ``anon_inode:...``
    or a path (digits dropped, so one database's files count together)."""
    kinds: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                kind = re.sub(r"\[\d+\]|\d+", "", target)
                kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _status(pid: int) -> dict[str, int]:
    found = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "Threads"):
                found[name] = int(value.split()[0])
    return found


def _count(folder: str) -> int:
    try:
        return len(os.listdir(folder))
    except OSError:
        return -1


def _lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return -1


def _bwrap_count() -> int:
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/comm") as f:
                total += f.read().strip() == "bwrap"
    return total


def _controllers() -> list[Path]:
    try:
        return [p for p in CGROUP_ROOT.iterdir() if (p / "sandlot").is_dir()]
    except OSError:
        return []


def _host_cgroup_folders() -> int:
    tops = [CGROUP_ROOT / "sandlot"] if (CGROUP_ROOT / "cgroup.controllers").exists() else []
    tops += [p / "sandlot" for p in _controllers()]
    total = 0
    for top in tops:
        if top.is_dir():
            for scope in top.iterdir():
                if scope.is_dir():
                    total += 1 + sum(1 for p in scope.iterdir() if p.is_dir())
    return total
