#!/usr/bin/env python
"""Foundation benchmarks: sandlot next to its floors and its peers, measured in one run.

Sections (issue 2, "Performance"):

  cold         create + commands.run("true") + kill, vs a bare ``bwrap ... python3 -I -S -c pass``
               spawned with subprocess (target: p50 at most 1.5x); next to ``docker run``,
               SWE-ReX's LocalDeployment, llm-sandbox and a Jupyter kernel.
  warm         commands.run("true") in a live sandbox vs ``subprocess.run(["true"])``
               (target: p50 and p99 at most 1.5x); next to docker exec, SWE-ReX, llm-sandbox,
               Jupyter.
  stream       ``head -c 1G /dev/zero`` drained through the SDK vs the same command read from a
               pipe by Python (target: at least 50% of the throughput).
  concurrency  16 sandboxes created at once from one process, each ran ``true``
               (target: all ready within 0.5 s); next to the peers doing the same.
  density      100 idle sandboxes: resident memory per sandbox, bwrap + agent
               (target: at most 15 MiB RSS each); PSS too.

The machine is noisy, so everything that is compared is measured in the same run and
interleaved (each round runs every subject once, in a shuffled order) and ratios are taken
between numbers from the same run. Peers run in their own worker processes (so their imports
cannot change this process), are driven one operation at a time between sandlot's rounds, and
are killed and marked as hung if an operation does not answer within ``--peer-timeout``.

    bash scripts/bench-setup.sh          # bubblewrap, Docker + a local image, the peers
    python benchmarks/bench_foundation.py                      # everything (about 5 minutes)
    python benchmarks/bench_foundation.py --sections cold,warm --no-peers
    python benchmarks/bench_foundation.py --quick              # small counts, a smoke test

Results: a table on the terminal, and benchmarks/results/foundation-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when not run as a script
from _common import (
    BenchBase,
    Layout,
    MiB,
    Results,
    Sampled,
    WorkerProcess,
    add_run_options,
    base_versions,
    choose,
    fresh_sandlot_home,
    git_commit,
    new_parser,
    now,
    percentile,
    report,
    run_meta,
    serve_worker,
    shuffled_rounds,
    start_kernel,
    stop_kernel,
    tool_version,
    verdict,
    version_of,
)

SECTIONS = ("cold", "warm", "stream", "concurrency", "density")
PEERS = ("docker", "swerex", "llm-sandbox", "llm-sandbox-bwrap", "jupyter")
DEFAULT_IMAGE = "sandlot-bench:bookworm"
LABEL = "sandlot-bench=1"

# The floor: what an agent written in Python cannot beat, with sandlot's namespaces.
BWRAP_BASE = [
    "bwrap",
    "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
    "--die-with-parent", "--new-session",
    "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64",
    "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
]  # fmt: skip
FLOOR_PYTHON = [*BWRAP_BASE, "/usr/bin/python3", "-I", "-S", "-c", "pass"]
FLOOR_TRUE = [*BWRAP_BASE, "/usr/bin/true"]
FLOOR_IDLE = [*BWRAP_BASE, "/usr/bin/python3", "-I", "-S", "-c", "import sys; sys.stdin.read()"]

FRESH_PROCESS = """\
import json, time
t0 = time.perf_counter()
import sandlot
t1 = time.perf_counter()
sb = sandlot.Sandbox.create()
r = sb.commands.run(["true"])
sb.kill()
t2 = time.perf_counter()
assert r.exit_code == 0, r
print(json.dumps([t1 - t0, t2 - t1]))
"""


# --------------------------------------------------------------------------------------------
# statistics and rows


@dataclass
class Row(Sampled):
    section: str
    subject: str
    kind: str  # floor | sandlot | peer | info
    unit: str  # ms | s | MiB/s | MiB
    samples: list[float] = field(default_factory=list)
    note: str = ""
    baseline: str | None = None  # subject of the row this one is compared with
    target: str = ""  # e.g. "p50 ≤ 1.5x"
    ok: bool | None = None
    ratio50: float | None = None
    ratio99: float | None = None
    skipped: bool = False
    higher_is_better: bool = False


class FoundationResults(Results):
    def skip(self, section: str, subject: str, why: str, kind: str = "peer") -> Row:
        return self.add(Row(section, subject, kind, "", note=f"skipped: {why}", skipped=True))


def compare(row: Row, base: Row | None, limit: float | None, *, both: bool = False) -> None:
    """Ratios of row to base (p50 and p99); the verdict checks p50 (and p99 when both)."""
    if base is None or not row.samples or not base.samples:
        return
    row.baseline = base.subject
    assert row.p50 is not None and row.p99 is not None
    assert base.p50 is not None and base.p99 is not None
    row.ratio50 = row.p50 / base.p50 if base.p50 else None
    row.ratio99 = row.p99 / base.p99 if base.p99 else None
    if limit is None or row.ratio50 is None:
        return
    if row.higher_is_better:
        row.target = f"p50 ≥ {limit:.0%} of baseline"
        row.ok = row.ratio50 >= limit
    else:
        row.target = f"p50{' and p99' if both else ''} ≤ {limit:g}x baseline"
        row.ok = row.ratio50 <= limit and (not both or (row.ratio99 or 0) <= limit)


def absolute(row: Row, limit: float, what: str = "p50") -> None:
    if not row.samples:
        return
    value = {"p50": row.p50, "p99": row.p99, "max": max(row.samples)}[what]
    assert value is not None
    row.target = f"{what} ≤ {limit:g} {row.unit}"
    row.ok = value <= limit


# --------------------------------------------------------------------------------------------
# small helpers


def timed(fn: Callable[[], Any]) -> float:
    t = now()
    fn()
    return now() - t


def run_checked(argv: list[str], **kwargs: Any) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, **kwargs)


def docker_binary() -> str | None:
    # Debian's docker.io client matches its engine; prefer it over other clients on PATH.
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    return shutil.which("docker")


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(text)


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    from sandlot.providers.procinfo import descendants

    return [pid, *descendants(pid)]


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) if it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except OSError:
        pass
    return rss, pss


def tree_memory(pid: int) -> tuple[float, float, int]:
    """(RSS MiB, PSS MiB, process count) of a process tree."""
    pids = tree(pid)
    rss = pss = 0
    for p in pids:
        r, s = memory_kib(p)
        rss += r
        pss += s
    return rss / 1024, pss / 1024, len(pids)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of live processes (their own, not their reaped children)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rfind(b")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def mem_available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return math.nan


def self_rss_mib() -> float:
    return memory_kib(os.getpid())[0] / 1024


# --------------------------------------------------------------------------------------------
# peers: each runs in a worker process, one operation per request


class PeerUnavailable(Exception):
    pass


class Peer:
    """One peer inside a worker. Operations return seconds (or lists of seconds)."""

    def __init__(self, image: str) -> None:
        self.image = image

    def setup(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class DockerPeer(Peer):
    def setup(self) -> dict[str, Any]:
        docker = docker_binary()
        if docker is None:
            raise PeerUnavailable("no docker client (run scripts/bench-setup.sh)")
        self.docker = docker
        info = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if info.returncode != 0:
            raise PeerUnavailable("Docker engine not running (run scripts/bench-setup.sh)")
        image = subprocess.run([docker, "image", "inspect", self.image], capture_output=True)
        if image.returncode != 0:
            raise PeerUnavailable(f"image {self.image} not built (run scripts/bench-setup.sh)")
        self.container: str | None = None
        return {"engine": info.stdout.strip()}

    def _run_true(self) -> None:
        argv = [self.docker, "run", "--rm", "--network", "none", "--label", LABEL, self.image]
        run_checked([*argv, "true"], stdout=subprocess.DEVNULL)

    def cold(self) -> float:
        return timed(self._run_true)

    def warm(self, n: int) -> list[float]:
        if self.container is None:
            self.container = subprocess.run(
                [
                    self.docker,
                    "run",
                    "-d",
                    "--init",
                    "--network",
                    "none",
                    "--label",
                    LABEL,
                    self.image,
                    "sleep",
                    "infinity",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        argv = [self.docker, "exec", self.container, "true"]
        return [timed(lambda: run_checked(argv)) for _ in range(n)]

    def concurrency(self, n: int) -> float:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            t = now()
            list(pool.map(lambda _: self._run_true(), range(n)))
            return now() - t

    def close(self) -> None:
        if self.container:
            subprocess.run([self.docker, "rm", "-f", self.container], capture_output=True)


class SweRexPeer(Peer):
    def setup(self) -> dict[str, Any]:
        import logging

        try:
            from swerex.deployment.local import LocalDeployment
            from swerex.runtime.abstract import BashAction, Command, CreateBashSessionRequest
        except ImportError as exc:
            raise PeerUnavailable(f"not installed ({exc}); pip install swe-rex aiohttp") from None
        self.LocalDeployment = LocalDeployment
        self.BashAction, self.Command = BashAction, Command
        self.CreateBashSessionRequest = CreateBashSessionRequest
        self.logger = logging.getLogger("bench.swerex")
        self.logger.setLevel(logging.WARNING)
        self.loop = asyncio.new_event_loop()
        self.live: Any = None
        return {"version": version_of("swe-rex")}

    async def _start(self) -> Any:
        deployment = self.LocalDeployment(logger=self.logger)
        await deployment.start()
        await deployment.runtime.create_session(self.CreateBashSessionRequest())
        obs = await deployment.runtime.run_in_session(self.BashAction(command="true"))
        assert obs.exit_code == 0, obs
        return deployment

    async def _cold(self) -> float:
        t = now()
        deployment = await self._start()
        await deployment.stop()
        return now() - t

    def cold(self) -> float:
        return self.loop.run_until_complete(self._cold())

    async def _warm(self, n: int, execute: bool) -> list[float]:
        if self.live is None:
            self.live = await self._start()
        runtime = self.live.runtime
        out = []
        for _ in range(n):
            t = now()
            if execute:
                await runtime.execute(self.Command(command=["true"]))
            else:
                await runtime.run_in_session(self.BashAction(command="true"))
            out.append(now() - t)
        return out

    def warm(self, n: int) -> list[float]:
        return self.loop.run_until_complete(self._warm(n, execute=False))

    def warm_execute(self, n: int) -> list[float]:
        return self.loop.run_until_complete(self._warm(n, execute=True))

    async def _concurrency(self, n: int) -> float:
        t = now()
        deployments = await asyncio.gather(*(self._start() for _ in range(n)))
        elapsed = now() - t
        await asyncio.gather(*(d.stop() for d in deployments))
        return elapsed

    def concurrency(self, n: int) -> float:
        return self.loop.run_until_complete(self._concurrency(n))

    def close(self) -> None:
        if self.live is not None:
            self.loop.run_until_complete(self.live.stop())


class LlmSandboxPeer(Peer):
    backend = "docker"

    def setup(self) -> dict[str, Any]:
        try:
            from llm_sandbox import SandboxSession
        except ImportError as exc:
            raise PeerUnavailable(f"not installed ({exc}); pip install llm-sandbox") from None
        self.SandboxSession = SandboxSession
        self.live: Any = None
        if self.backend == "docker":
            docker = docker_binary()
            ok = (
                docker
                and subprocess.run(
                    [docker, "image", "inspect", self.image], capture_output=True
                ).returncode
                == 0
            )
            if not ok:
                raise PeerUnavailable(
                    f"Docker or image {self.image} missing (scripts/bench-setup.sh)"
                )
            if version_of("docker") is None:
                raise PeerUnavailable("the docker Python package is missing (pip install docker)")
        elif shutil.which("bwrap") is None:
            raise PeerUnavailable("bubblewrap not installed")
        return {"version": version_of("llm-sandbox")}

    def _open(self) -> Any:
        if self.backend == "docker":
            # An init (tini) as PID 1 so teardown does not wait 10 s for SIGTERM to time out;
            # the imported image has no CMD, so give it one that idles.
            session = self.SandboxSession(
                lang="python",
                image=self.image,
                skip_environment_setup=True,
                runtime_configs={
                    "init": True,
                    "network_mode": "none",
                    "command": ["sleep", "infinity"],
                    "labels": {"sandlot-bench": "1"},
                },
            )
        else:
            session = self.SandboxSession(
                backend="bubblewrap", lang="python", skip_environment_setup=True
            )
        session.open()
        result = session.execute_command("true")
        assert result.exit_code == 0, result
        return session

    def cold(self) -> float:
        t = now()
        self._open().close()
        return now() - t

    def warm(self, n: int) -> list[float]:
        if self.live is None:
            self.live = self._open()
        return [timed(lambda: self.live.execute_command("true")) for _ in range(n)]

    def concurrency(self, n: int) -> float:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            t = now()
            sessions = list(pool.map(lambda _: self._open(), range(n)))
            elapsed = now() - t
            list(pool.map(lambda s: s.close(), sessions))
        return elapsed

    def close(self) -> None:
        if self.live is not None:
            self.live.close()


class LlmSandboxBwrapPeer(LlmSandboxPeer):
    backend = "bubblewrap"


class JupyterPeer(Peer):
    def setup(self) -> dict[str, Any]:
        try:
            from jupyter_client import KernelManager
        except ImportError as exc:
            raise PeerUnavailable(
                f"not installed ({exc}); pip install jupyter_client ipykernel"
            ) from None
        if version_of("ipykernel") is None:
            raise PeerUnavailable("ipykernel not installed")
        self.KernelManager = KernelManager
        self.live: Any = None
        return {
            "jupyter_client": version_of("jupyter_client"),
            "ipykernel": version_of("ipykernel"),
        }

    def _start(self) -> tuple[Any, Any]:
        km, kc = start_kernel(self.KernelManager)
        self._execute(kc)
        return km, kc

    @staticmethod
    def _execute(kc: Any) -> None:
        msg_id = kc.execute("pass")
        while True:
            reply = kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                assert reply["content"]["status"] == "ok", reply["content"]
                return

    def cold(self) -> float:
        t = now()
        stop_kernel(*self._start())
        return now() - t

    def warm(self, n: int) -> list[float]:
        if self.live is None:
            self.live = self._start()
        kc = self.live[1]
        return [timed(lambda: self._execute(kc)) for _ in range(n)]

    def close(self) -> None:
        if self.live is not None:
            stop_kernel(*self.live)


PEER_CLASSES: dict[str, type[Peer]] = {
    "docker": DockerPeer,
    "swerex": SweRexPeer,
    "llm-sandbox": LlmSandboxPeer,
    "llm-sandbox-bwrap": LlmSandboxBwrapPeer,
    "jupyter": JupyterPeer,
}


def worker_main(kind: str, image: str) -> int:
    """Serve one peer over stdin/stdout (the driver's side: ``PeerProcess``)."""

    def start() -> tuple[Peer, dict[str, Any]]:
        peer = PEER_CLASSES[kind](image)
        return peer, peer.setup()

    return serve_worker(start, PeerUnavailable)


class PeerProcess(WorkerProcess):
    """The driver's side of a peer worker; ``failures`` holds each failed operation's error."""

    gone = PeerUnavailable
    quit_timeout = 60

    def __init__(self, kind: str, image: str, timeout: float, logdir: Path) -> None:
        self.kind = kind
        self.failures: dict[str, str] = {}
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--image", image]
        super().__init__(argv, timeout, logdir / f"{kind}.log")


class PeerPool:
    """Starts the selected peers lazily; remembers why one is unavailable."""

    def __init__(self, selected: list[str], image: str, timeout: float, logdir: Path) -> None:
        self.selected = selected
        self.image = image
        self.timeout = timeout
        self.logdir = logdir
        self.procs: dict[str, PeerProcess] = {}
        self.history: list[PeerProcess] = []

    def get(self, kind: str) -> PeerProcess | None:
        if kind not in self.selected:
            return None
        if kind not in self.procs:
            self.procs[kind] = PeerProcess(kind, self.image, self.timeout, self.logdir)
        return self.procs[kind]

    def shutdown(self) -> None:
        """Stop every worker (and the sessions they keep); the next get() starts afresh."""
        for proc in self.procs.values():
            proc.close()
            self.history.append(proc)
        self.procs.clear()

    def close(self) -> None:
        self.shutdown()
        docker = docker_binary()
        if docker and "docker" in " ".join(self.selected):
            ids = subprocess.run(
                [docker, "ps", "-aq", "--filter", f"label={LABEL}"], capture_output=True, text=True
            ).stdout.split()
            if ids:
                subprocess.run([docker, "rm", "-f", *ids], capture_output=True)


# --------------------------------------------------------------------------------------------
# the benchmark


class Bench(BenchBase):
    results: FoundationResults

    def __init__(
        self, args: argparse.Namespace, results: FoundationResults, peers: PeerPool
    ) -> None:
        super().__init__(args, results)
        self.peers = peers

    def peer_row(self, section: str, subject: str, kind: str, unit: str = "ms") -> Row:
        """A row for a peer, or a skipped row saying why it is not there."""
        proc = self.peers.get(kind)
        if proc is None:
            return self.results.skip(section, subject, "not selected (--peers)")
        if proc.dead:
            return self.results.skip(section, subject, proc.dead)
        return self.results.add(Row(section, subject, "peer", unit))

    def peer_sample(self, row: Row, kind: str, op: str, *args: Any, scale: float = 1000) -> None:
        """Ask a peer for one sample (or a list); on failure mark the row and stop asking."""
        if row.skipped:
            return
        proc = self.peers.get(kind)
        assert proc is not None
        try:
            value = proc.call(op, *args)
        except (PeerUnavailable, RuntimeError) as exc:
            row.skipped = not row.samples
            row.note = (f"failed after {row.n} samples: " if row.samples else "failed: ") + str(exc)
            proc.failures[op] = str(exc)
            if isinstance(exc, RuntimeError):
                proc.dead = proc.dead or f"gave up after: {exc}"
            return
        values = value if isinstance(value, list) else [value]
        row.samples.extend(v * scale for v in values)

    def warm_up_sandlot(self) -> None:
        sb = self.sandlot.Sandbox.create()
        r = sb.commands.run("true")
        assert r.exit_code == 0, r
        self.results.notes.append(
            f"sandlot provider: {sb.provider} ({'isolated' if sb.isolated else 'NOT isolated'});"
            " state folder: a fresh temporary SANDLOT_HOME; one warm-up sandbox before timing"
        )
        sb.kill()

        async def once() -> None:
            async with self.sandlot.AsyncSandbox.create() as asb:
                await asb.commands.run(["true"])

        self.arun(once())

    # -- 1. cold start ------------------------------------------------------------------------

    def cold(self) -> None:
        a = self.args
        S = self.sandlot
        R = self.results
        self.log(f"cold start: {a.cold_iters} rounds ({a.peer_cold_iters} with peers)")
        floor = R.add(
            Row("cold", "floor: bare bwrap, python3 -I -S -c pass (subprocess)", "floor", "ms")
        )
        ref = R.add(Row("cold", "ref: bare bwrap, /usr/bin/true (subprocess)", "info", "ms"))
        # sandlot's own bwrap command line (read from a live sandbox), agent swapped for
        # `python3 -I -S -c pass`: what sandlot's mounts and flags cost, without its agent.
        mounts = R.add(
            Row("cold", "ref: bwrap with sandlot's flags and mounts, python3 -c pass", "info", "ms")
        )
        keeper = S.Sandbox.create(timeout=3600)
        try:
            with open(f"/proc/{keeper.info.handle['pid']}/cmdline", "rb") as f:
                cmdline = [x.decode() for x in f.read().split(b"\0")[:-1]]
            mounts_argv = [*cmdline[: cmdline.index("--") + 1], *FLOOR_PYTHON[-5:]]
            if "--userns" in mounts_argv:  # the sandbox's namespace fd is not ours to pass
                at = mounts_argv.index("--userns")
                mounts_argv[at : at + 2] = ["--unshare-user"]
            if "--seccomp" in mounts_argv:  # nor its filter's: this row is the mounts alone
                at = mounts_argv.index("--seccomp")
                del mounts_argv[at : at + 2]
            run_checked(mounts_argv)
        except Exception as exc:
            mounts_argv = []
            mounts.note = f"failed: could not reuse sandlot's bwrap command line: {exc}"
        sl_str = R.add(Row("cold", 'sandlot: create + run("true") + kill', "sandlot", "ms"))
        sl_argv = R.add(Row("cold", 'sandlot: create + run(["true"]) + kill', "sandlot", "ms"))
        sl_async = R.add(
            Row("cold", 'sandlot async: create + run(["true"]) + kill', "sandlot", "ms")
        )

        # As root, sandboxes run as the host's `nobody` (an escape lands unprivileged); this
        # row shows what that switch costs, by running as root's own user instead.
        as_root = None
        if os.geteuid() == 0:
            as_root = R.add(
                Row(
                    "cold",
                    'sandlot as root, no switch to nobody: create + run(["true"]) + kill',
                    "info",
                    "ms",
                )
            )

        # Where sandlot's cold start goes (the string-command subject, split in three).
        phases = {
            name: Row("cold", f'sandlot phase: {name} (part of run("true") above)', "info", "ms")
            for name in ("create", "first run", "kill")
        }

        def sandlot_cold(cmd: Any) -> float:
            t0 = now()
            sb = S.Sandbox.create()
            t1 = now()
            r = sb.commands.run(cmd)
            t2 = now()
            sb.kill()
            t3 = now()
            if r.exit_code != 0:
                raise RuntimeError(f"sandlot: `true` exited {r.exit_code}: {r.stderr}")
            if isinstance(cmd, str):
                for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    phases[name].samples.append(dt * 1000)
            return t3 - t0

        def sandlot_cold_as_root() -> float:
            t = now()
            sb = S.Sandbox.create(host_user="root")
            sb.commands.run(["true"])
            sb.kill()
            return now() - t

        async def sandlot_async_cold() -> float:
            t = now()
            sb = await S.AsyncSandbox.create()
            await sb.commands.run(["true"])
            await sb.kill()
            return now() - t

        subjects: list[tuple[Row, Callable[[], float]]] = [
            (floor, lambda: timed(lambda: run_checked(FLOOR_PYTHON))),
            (ref, lambda: timed(lambda: run_checked(FLOOR_TRUE))),
            (mounts, lambda: timed(lambda: run_checked(mounts_argv))),
            (sl_str, lambda: sandlot_cold("true")),
            (sl_argv, lambda: sandlot_cold(["true"])),
            (sl_async, lambda: self.arun(sandlot_async_cold())),
        ]
        if as_root is not None:
            subjects.append((as_root, sandlot_cold_as_root))
        if not mounts_argv:
            subjects = [x for x in subjects if x[0] is not mounts]
        peer_subjects = [
            ("docker", "docker run --rm --network none IMAGE true"),
            (
                "swerex",
                "SWE-ReX LocalDeployment: start + bash session + `true` + stop (no isolation)",
            ),
            ("llm-sandbox", "llm-sandbox (docker, init): open + `true` + close"),
            ("llm-sandbox-bwrap", "llm-sandbox (bubblewrap backend): open + `true` + close"),
            ("jupyter", "Jupyter: start kernel + `pass` + shutdown (no isolation)"),
        ]
        peer_rows = []
        for kind, subject in peer_subjects:
            row = self.peer_row("cold", subject, kind)
            if not row.skipped:
                self.peer_sample(row, kind, "cold")  # warm-up: first run pays caches, imports
                row.samples.clear()
            peer_rows.append((kind, row))

        for _ in range(3):  # warm-up rounds, not recorded
            for _row, fn in subjects:
                fn()
        for i in range(a.cold_iters):
            order: list[tuple[str, Any]] = [("s", s) for s in subjects]
            if i < a.peer_cold_iters:
                order += [("p", p) for p in peer_rows]
            self.rng.shuffle(order)
            for what, item in order:
                if what == "s":
                    row, fn = item
                    row.samples.append(fn() * 1000)
                else:
                    kind, row = item
                    self.peer_sample(row, kind, "cold")
        at = R.rows.index(sl_str) + 1
        for row in reversed(phases.values()):
            del row.samples[: len(row.samples) - len(sl_str.samples)]  # drop the warm-up rounds
            R.rows.insert(at, row)
        keeper.kill()
        for row in (ref, mounts, sl_str, sl_argv, sl_async, as_root):
            if row is not None:
                compare(row, floor, 1.5 if row.kind == "sandlot" else None)
        for _kind, row in peer_rows:
            compare(row, floor, None)

        # The first sandbox of a new process: imports and the manager's start-up gc included.
        fresh = R.add(
            Row(
                "cold",
                "sandlot: first sandbox in a new process (import + create + run + kill)",
                "info",
                "ms",
            )
        )
        walls, imports = [], []
        for _ in range(a.fresh_iters):
            t = now()
            out = subprocess.run(
                [sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, timeout=120
            )
            walls.append((now() - t) * 1000)
            if out.returncode != 0:
                fresh.note = f"failed: {out.stderr.strip()[-300:]}"
                break
            imp, first = json.loads(out.stdout.strip().splitlines()[-1])
            imports.append(imp * 1000)
            # From `import sandlot` on: how much of the SDK that import loads is sandlot's
            # choice (it is lazy since issue 17), so only the sum compares across versions.
            fresh.samples.append((imp + first) * 1000)
        if fresh.samples:
            fresh.note = (
                "measured inside the process, from `import sandlot` on"
                f" (the import alone p50 {percentile(imports, 50):.0f} ms);"
                f" whole `python -c` run p50 {percentile(walls, 50):.0f} ms"
            )
            compare(fresh, floor, None)

    # -- 2. warm round trip -------------------------------------------------------------------

    def warm(self) -> None:
        a = self.args
        S = self.sandlot
        R = self.results
        self.log(f"warm round trip: {a.warm_iters} rounds")
        base = R.add(Row("warm", 'floor: subprocess.run(["true"])', "floor", "ms"))
        sl_str = R.add(Row("warm", 'sandlot: sb.commands.run("true")', "sandlot", "ms"))
        sl_argv = R.add(Row("warm", 'sandlot: sb.commands.run(["true"])', "sandlot", "ms"))
        sl_async = R.add(
            Row("warm", 'sandlot async: await sb.commands.run(["true"])', "sandlot", "ms")
        )
        sb = S.Sandbox.create(timeout=3600)
        asb = self.arun(S.AsyncSandbox.create(timeout=3600))

        async def async_once() -> float:
            t = now()
            await asb.commands.run(["true"])
            return now() - t

        def sync_once(cmd: Any) -> float:
            t = now()
            sb.commands.run(cmd)
            return now() - t

        subjects: list[tuple[Row, Callable[[], float]]] = [
            (base, lambda: timed(lambda: subprocess.run(["true"]))),
            (sl_str, lambda: sync_once("true")),
            (sl_argv, lambda: sync_once(["true"])),
            (sl_async, lambda: self.arun(async_once())),
        ]
        assert sb.commands.run("true").exit_code == 0
        peer_specs = [
            ("docker", "docker exec CONTAINER true", "warm", 1),
            ("swerex", "SWE-ReX bash session: `true` (no isolation)", "warm", 1),
            (
                "swerex",
                "SWE-ReX runtime.execute([`true`]) (plain subprocess, no isolation)",
                "warm_execute",
                5,
            ),
            ("llm-sandbox", "llm-sandbox (docker): execute_command(`true`)", "warm", 1),
            (
                "llm-sandbox-bwrap",
                "llm-sandbox (bubblewrap): execute_command(`true`), new bwrap each",
                "warm",
                2,
            ),
            ("jupyter", "Jupyter: execute `pass`, wait for the reply (no isolation)", "warm", 5),
        ]
        peer_rows = []
        for kind, subject, op, mult in peer_specs:
            row = self.peer_row("warm", subject, kind)
            if not row.skipped:
                self.peer_sample(row, kind, op, 2, scale=1000)  # start the live session
                row.samples.clear()
            peer_rows.append((kind, row, op, mult))

        chunks = 10
        per_chunk = max(1, a.warm_iters // chunks)
        for _ in range(20):
            for _row, fn in subjects:
                fn()
        for _chunk in range(chunks):
            for row, fn in shuffled_rounds(self.rng, subjects, per_chunk):
                row.samples.append(fn() * 1000)
            for kind, row, op, mult in peer_rows:
                n = max(1, a.peer_warm_iters * mult // chunks)
                self.peer_sample(row, kind, op, n)
        sb.kill()
        self.arun(asb.kill())
        for row in (sl_str, sl_argv, sl_async):
            compare(row, base, 1.5, both=True)
        for _kind, row, _op, _mult in peer_rows:
            compare(row, base, None)

    # -- 3. streaming -------------------------------------------------------------------------

    def stream(self) -> None:
        a = self.args
        S = self.sandlot
        R = self.results
        size = a.stream_bytes
        label = f"head -c {a.stream_size_text} /dev/zero"
        self.log(f"streaming: {label}, {a.stream_runs} runs each")
        base = R.add(
            Row(
                "stream",
                f"floor: {label} | Popen read loop (64 KiB reads)",
                "floor",
                "MiB/s",
                higher_is_better=True,
            )
        )
        cb = R.add(
            Row(
                "stream",
                "sandlot: run(..., on_stdout=count)",
                "sandlot",
                "MiB/s",
                higher_is_better=True,
            )
        )
        quiet = R.add(
            Row(
                "stream",
                "sandlot: run(..., max_output_bytes=0)",
                "sandlot",
                "MiB/s",
                higher_is_better=True,
            )
        )
        aquiet = R.add(
            Row(
                "stream",
                "sandlot async: run(..., max_output_bytes=0)",
                "sandlot",
                "MiB/s",
                higher_is_better=True,
            )
        )
        argv = ["head", "-c", str(size), "/dev/zero"]
        sb = S.Sandbox.create(timeout=3600)
        asb = self.arun(S.AsyncSandbox.create(timeout=3600))

        def floor_once() -> float:
            t = now()
            with subprocess.Popen(argv, stdout=subprocess.PIPE) as p:
                assert p.stdout is not None
                fd = p.stdout.fileno()
                got = 0
                while chunk := os.read(fd, 65536):
                    got += len(chunk)
            elapsed = now() - t
            assert got == size, got
            return size / MiB / elapsed

        def callback_once() -> float:
            got = 0

            def count(text: str) -> None:
                nonlocal got
                got += len(text)

            t = now()
            r = sb.commands.run(argv, on_stdout=count, max_output_bytes=0, timeout=None)
            elapsed = now() - t
            if r.exit_code != 0 or got != size:
                raise RuntimeError(
                    f"stream via callback: exit {r.exit_code}, {got} of {size} bytes"
                )
            return size / MiB / elapsed

        def quiet_once() -> float:
            t = now()
            r = sb.commands.run(argv, max_output_bytes=0, timeout=None)
            elapsed = now() - t
            assert r.exit_code == 0, r
            return size / MiB / elapsed

        async def aquiet_once() -> float:
            t = now()
            r = await asb.commands.run(argv, max_output_bytes=0, timeout=None)
            elapsed = now() - t
            assert r.exit_code == 0, r
            return size / MiB / elapsed

        subjects: list[tuple[Row, Callable[[], float]]] = [
            (base, floor_once),
            (cb, callback_once),
            (quiet, quiet_once),
            (aquiet, lambda: self.arun(aquiet_once())),
        ]
        # CPU seconds per GiB, this process (all threads) and the sandbox (agent + bwrap):
        # where the time goes on a 2-core machine that also runs the producer (head).
        boxes = {cb.subject: sb, quiet.subject: sb, aquiet.subject: asb}
        cpu: dict[str, list[tuple[float, float]]] = {row.subject: [] for row, _ in subjects}
        rss0 = self_rss_mib()
        for row, fn in shuffled_rounds(self.rng, subjects, a.stream_runs):
            box = boxes.get(row.subject)
            box_pids = tree(box.info.handle["pid"]) if box is not None else []
            host0, box0 = self_cpu_seconds(), cpu_seconds(box_pids)
            try:
                row.samples.append(fn())
            except Exception as exc:
                row.note = f"failed: {type(exc).__name__}: {exc}"
                continue
            gib = size / (1 << 30)
            cpu[row.subject].append(
                ((self_cpu_seconds() - host0) / gib, (cpu_seconds(box_pids) - box0) / gib)
            )
        grew = self_rss_mib() - rss0
        sb.kill()
        self.arun(asb.kill())
        for row in (cb, quiet, aquiet):
            compare(row, base, 0.5)
        for row, _fn in subjects:
            if cpu[row.subject]:
                host = percentile([h for h, _ in cpu[row.subject]], 50)
                text = f"CPU per GiB: this process {host:.2f} s"
                if row.subject in boxes:
                    box = percentile([b for _, b in cpu[row.subject]], 50)
                    text += f", agent + bwrap {box:.2f} s"
                row.note = f"{row.note}; {text}" if row.note else text
        quiet.note += f"; benchmark process RSS grew {grew:.0f} MiB over the streaming runs"

    # -- 4. concurrency -----------------------------------------------------------------------

    def concurrency(self) -> None:
        a = self.args
        S = self.sandlot
        R = self.results
        n = a.concurrency
        self.log(f"concurrency: {n} at once, {a.concurrency_rounds} rounds")
        floor = R.add(
            Row(
                "concurrency",
                f"floor: {n} bare bwrap python3 -c pass at once (Popen)",
                "floor",
                "s",
            )
        )
        sl = R.add(
            Row(
                "concurrency",
                f'sandlot: {n} x AsyncSandbox.create + run(["true"]), gather',
                "sandlot",
                "s",
            )
        )
        kill = R.add(Row("concurrency", f"sandlot: kill {n} (gather)", "info", "s"))

        def floor_once() -> float:
            t = now()
            procs = [subprocess.Popen(FLOOR_PYTHON, stdin=subprocess.DEVNULL) for _ in range(n)]
            for p in procs:
                if p.wait() != 0:
                    raise RuntimeError(f"bare bwrap exited {p.returncode}")
            return now() - t

        async def one() -> Any:
            sb = await S.AsyncSandbox.create()
            r = await sb.commands.run(["true"])
            assert r.exit_code == 0, r
            return sb

        async def sandlot_once() -> tuple[float, float]:
            t = now()
            boxes = await asyncio.gather(*(one() for _ in range(n)))
            ready = now() - t
            t = now()
            await asyncio.gather(*(b.kill() for b in boxes))
            return ready, now() - t

        for what in shuffled_rounds(self.rng, ["floor", "sandlot"], a.concurrency_rounds):
            gc.collect()
            if what == "floor":
                floor.samples.append(floor_once())
            else:
                ready, killed = self.arun(sandlot_once())
                sl.samples.append(ready)
                kill.samples.append(killed)
            time.sleep(0.2)
        absolute(sl, 0.5)
        sl.ratio50 = sl.p50 / floor.p50 if floor.p50 else None
        sl.ratio99 = sl.p99 / floor.p99 if floor.p99 else None
        sl.baseline = floor.subject

        peer_specs = [
            ("docker", f"docker run --rm --network none IMAGE true, {n} at once (threads)"),
            ("swerex", f"SWE-ReX LocalDeployment x {n}: start + session + `true` (gather)"),
            ("llm-sandbox", f"llm-sandbox (docker) x {n}: open + `true` (threads)"),
            ("llm-sandbox-bwrap", f"llm-sandbox (bubblewrap) x {n}: open + `true` (threads)"),
        ]
        for kind, subject in peer_specs:
            row = self.peer_row("concurrency", subject, kind, unit="s")
            for _ in range(a.peer_concurrency_rounds):
                self.peer_sample(row, kind, "concurrency", n, scale=1)
            compare(row, floor, None)
            row.ratio50 = row.ratio99 = None
            if row.skipped and "hung" in row.note:
                row.note += "; worker killed"
            self.peers.shutdown()  # one peer at a time: the next starts on an idle machine

    # -- 5. density ---------------------------------------------------------------------------

    def density(self) -> None:
        a = self.args
        S = self.sandlot
        R = self.results
        n = a.density
        self.log(f"density: {n} idle sandboxes")
        # Floor: bare bwrap + an idle python3 -I -S (what an agent in Python cannot go below).
        floor_n = min(n, 20)
        frss = R.add(
            Row(
                "density", "floor: bare bwrap + idle python3 -I -S, RSS per sandbox", "floor", "MiB"
            )
        )
        fpss = R.add(
            Row(
                "density", "floor: bare bwrap + idle python3 -I -S, PSS per sandbox", "floor", "MiB"
            )
        )
        procs = [
            subprocess.Popen(FLOOR_IDLE, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            for _ in range(floor_n)
        ]
        time.sleep(1.0)
        for p in procs:
            rss, pss, _count = tree_memory(p.pid)
            frss.samples.append(rss)
            fpss.samples.append(pss)
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
            p.wait()
        frss.note = fpss.note = f"{floor_n} at once"

        gc.collect()
        avail0 = mem_available_mib()
        self_rss0 = self_rss_mib()

        async def one() -> Any:
            sb = await S.AsyncSandbox.create(timeout=3600)
            await sb.commands.run(["true"])
            return sb

        async def create_all() -> list[Any]:
            boxes: list[Any] = []
            while len(boxes) < n:
                batch = min(16, n - len(boxes))
                boxes += await asyncio.gather(*(one() for _ in range(batch)))
            return boxes

        t = now()
        boxes = self.arun(create_all())
        created = now() - t
        time.sleep(1.0)
        gc.collect()
        rss_row = R.add(
            Row(
                "density",
                f"sandlot: RSS per idle sandbox (bwrap + agent), {n} at once",
                "sandlot",
                "MiB",
            )
        )
        pss_row = R.add(
            Row(
                "density",
                f"sandlot: PSS per idle sandbox (bwrap + agent), {n} at once",
                "sandlot",
                "MiB",
            )
        )
        counts = []
        for sb in boxes:
            pid = sb.info.handle["pid"]
            rss, pss, count = tree_memory(pid)
            rss_row.samples.append(rss)
            pss_row.samples.append(pss)
            counts.append(count)
        # Cross-check: every sandbox's process tree is under this process and holds the folder.
        ours = set(tree(os.getpid()))
        folder_hits = 0
        for pid in ours:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(Path(os.environ["SANDLOT_HOME"])).encode() in f.read():
                    folder_hits += 1
        avail1 = mem_available_mib()
        self_rss1 = self_rss_mib()
        t = now()

        async def kill_all() -> None:
            await asyncio.gather(*(sb.kill() for sb in boxes))

        self.arun(kill_all())
        killed = now() - t
        compare(pss_row, fpss, None)
        compare(rss_row, frss, None)
        absolute(rss_row, 15, "max")
        rss_row.note = (
            f"processes per sandbox: {min(counts)}-{max(counts)};"
            f" mean {sum(rss_row.samples) / n:.1f} MiB,"
            f" max {max(rss_row.samples):.1f} MiB; {folder_hits} processes under this one name the"
            f" sandbox folder"
        )
        pss_row.note = (
            f"mean {sum(pss_row.samples) / n:.2f} MiB; total {sum(pss_row.samples):.0f} MiB"
        )
        info = R.add(
            Row(
                "density",
                "sandlot: host MemAvailable drop per sandbox",
                "info",
                "MiB",
                samples=[(avail0 - avail1) / n],
            )
        )
        info.note = (
            "includes kernel memory (page tables, namespaces, tmpfs); noisy: other work runs"
        )
        R.add(
            Row(
                "density",
                "sandlot: SDK process RSS growth per sandbox",
                "info",
                "MiB",
                samples=[(self_rss1 - self_rss0) / n],
            )
        )
        R.add(
            Row(
                "density",
                f"sandlot: create {n} (batches of 16, gather) / kill {n}",
                "info",
                "s",
                samples=[created],
                note=f"kill all: {killed:.2f} s",
            )
        )


# --------------------------------------------------------------------------------------------
# output


def fmt_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    if unit == "s":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if unit == "MiB/s":
        return f"{value:.0f}"
    if unit == "MiB":
        return f"{value:.2f}"
    return f"{value:g}"


def fmt_ratio(row: Row) -> str:
    if row.ratio50 is None:
        return "-"
    if row.higher_is_better:
        return (
            f"{row.ratio50:.0%} / {row.ratio99:.0%}"
            if row.ratio99 is not None
            else f"{row.ratio50:.0%}"
        )
    r99 = f" / {row.ratio99:.2f}x" if row.ratio99 is not None else ""
    return f"{row.ratio50:.2f}x{r99}"


HEADERS = [
    "section",
    "subject",
    "unit",
    "p50",
    "p99",
    "n",
    "vs baseline (p50 / p99)",
    "target",
    "verdict",
    "note",
]


def table_cells(row: Row) -> list[str]:
    return [
        row.section,
        row.subject,
        row.unit,
        fmt_value(row.p50, row.unit),
        fmt_value(row.p99, row.unit),
        str(row.n) if row.n else "-",
        fmt_ratio(row),
        row.target,
        verdict(row),
        row.note,
    ]


LAYOUT = Layout(
    title="sandlot foundation benchmarks",
    stem="foundation",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p99", "vs baseline (p50 / p99)", "target", "verdict"],
    targets_heading="Targets (issue 2)",
    reading="p50 and p99 over n samples (with small n, p99 is close to the maximum); ratios are"
    " this row's p50 / p99 over the baseline's, both from this run. Subjects were"
    " interleaved: each round runs every subject once, in a shuffled order.",
    how_to_run=[
        "bash scripts/bench-setup.sh                 # bubblewrap, Docker + image, peers",
        "python benchmarks/bench_foundation.py       # all sections, all peers",
        "python benchmarks/bench_foundation.py --help",
    ],
    width=220,
)


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated subset of {','.join(PEERS)} (default: all)",
    )
    p.add_argument("--no-peers", action="store_true", help="measure sandlot and its floors only")
    p.add_argument("--cold-iters", type=int, default=60, help="cold-start rounds (default 60)")
    p.add_argument(
        "--peer-cold-iters",
        type=int,
        default=8,
        help="rounds that include the peers (they take 0.3-1.5 s each; default 8)",
    )
    p.add_argument("--fresh-iters", type=int, default=5, help="new-process cold starts (default 5)")
    p.add_argument("--warm-iters", type=int, default=1000, help="warm round trips (default 1000)")
    p.add_argument(
        "--peer-warm-iters",
        type=int,
        default=40,
        help="per-command samples for slow peers; fast ones take 2-5x (default 40)",
    )
    p.add_argument("--stream-bytes", default="1G", help="bytes to stream (default 1G)")
    p.add_argument(
        "--stream-runs", type=int, default=5, help="runs per streaming subject (default 5)"
    )
    p.add_argument("--concurrency", type=int, default=16, help="sandboxes at once (default 16)")
    p.add_argument("--concurrency-rounds", type=int, default=7, help="sandlot rounds (default 7)")
    p.add_argument("--peer-concurrency-rounds", type=int, default=1, help="peer rounds (default 1)")
    p.add_argument("--density", type=int, default=100, help="idle sandboxes at once (default 100)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"Docker image (default {DEFAULT_IMAGE})")
    p.add_argument(
        "--peer-timeout",
        type=float,
        default=180,
        help="seconds a peer operation may take before its worker is killed (default 180)",
    )
    add_run_options(p)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.cold_iters, args.peer_cold_iters, args.fresh_iters = 6, 2, 2
        args.warm_iters, args.peer_warm_iters = 100, 10
        args.stream_bytes, args.stream_runs = "128M", 2
        args.concurrency_rounds, args.density = 2, 20
    args.sections = choose(p, args.sections, SECTIONS, "section")
    args.peers = [] if args.no_peers else choose(p, args.peers, PEERS, "peer")
    args.stream_size_text = args.stream_bytes
    args.stream_bytes = parse_size(args.stream_bytes)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.image)
    if shutil.which("bwrap") is None:
        print("bubblewrap is not installed: run scripts/bench-setup.sh", file=sys.stderr)
        return 2

    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()  # the code measured is what is on disk now
    home = fresh_sandlot_home("slb-")
    logdir = home / "peer-logs"
    logdir.mkdir()
    results = FoundationResults()
    peers = PeerPool(args.peers, args.image, args.peer_timeout, logdir)
    bench = Bench(args, results, peers)
    try:
        bench.warm_up_sandlot()
        bench.run_sections()
    finally:
        peers.close()
        for proc in peers.history:
            for op, error in proc.failures.items():
                results.notes.append(f"{proc.kind} {op}: {error}")
            if proc.failures and (tail := proc.log_tail(300)):
                results.notes.append(f"{proc.kind} worker log, last lines: {tail}")

    versions = base_versions()
    docker = docker_binary()
    if docker:
        versions["docker"] = tool_version([docker, "version", "--format", "{{.Server.Version}}"])
    for proc in peers.history:
        if proc.info:
            versions[proc.kind] = proc.info
    if not args.peers:
        results.notes.append("peers not measured in this run (--no-peers)")
    results.note_load()
    args_json = {k: v for k, v in vars(args).items() if k != "worker"}
    meta = run_meta("bench_foundation.py", argv, started, load0, commit, versions, args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
