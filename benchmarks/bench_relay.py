#!/usr/bin/env python
"""Relay benchmarks: a request's round trip through the air-gapped relay, and an idle daemon's CPU.

Sections:

  roundtrip  ``RelayClient.status()`` (the ``git_status`` operation) through a real daemon
             process (``sandlot relay daemon --queue Q``) vs the bare ``git status`` in the
             same repository, interleaved. Two daemons serve two queues at once: one with the
             default poll interval (0.5 s), one with ``--poll 0.05`` (for information).
             Target (issue 7): the relay's p50 at most the daemon's poll interval + the
             client's poll interval (``CLIENT_POLL``, 0.1 s) + 1.2x the bare p50.
  idle       a fresh daemon process left alone: utime + stime from ``/proc/PID/stat`` over
             ``--idle-seconds`` (default 20), as % of one core. Target: below 1%. The same for
             a ``--poll 0.05`` daemon, for information.

The daemons run with HOME set to a temporary folder holding a real git repository (the
repository must be inside $HOME for the relay to serve it), and are stopped with SIGTERM.

    python benchmarks/bench_relay.py                  # everything, about a minute
    python benchmarks/bench_relay.py --sections idle --idle-seconds 60
    python benchmarks/bench_relay.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/relay-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when not run as a script
from _common import (
    BenchBase,
    Layout,
    Results,
    Sampled,
    add_run_options,
    base_versions,
    choose,
    git_commit,
    new_parser,
    now,
    percentile_columns,
    report,
    run_meta,
    shuffled_rounds,
    tool_version,
)

SECTIONS = ("roundtrip", "idle")
DEFAULT_POLL = 0.5  # sandlot.relay.daemon.POLL
FAST_POLL = 0.05


# --------------------------------------------------------------------------------------------
# rows


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 99)

    section: str
    subject: str
    unit: str  # ms | % of a core
    samples: list[float] = field(default_factory=list)
    value: float | None = None  # a single measured value (idle CPU over the whole window)
    note: str = ""
    target: str = ""
    limit: float | None = None
    ok: bool | None = None
    failed: bool = False


# --------------------------------------------------------------------------------------------
# the daemon process and its home


def make_home(files: int) -> tuple[Path, Path]:
    """A temporary $HOME holding a git repository with ``files`` committed files (and a bare
    remote outside it as origin), removed at exit."""
    home = Path(tempfile.mkdtemp(prefix="slb-relay-", dir="/tmp"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    repo = home / "project"
    env = git_env(home)

    def git(*argv: str, cwd: Path = repo) -> None:
        subprocess.run(["git", *argv], cwd=cwd, env=env, check=True, capture_output=True)

    repo.mkdir()
    git("init", "-q", "-b", "main")
    git("config", "user.name", "bench")
    git("config", "user.email", "bench@example.invalid")
    for i in range(files):
        folder = repo / f"d{i % 10}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i}.txt").write_text(f"file {i}\n" * 20)
    git("add", "-A")
    git("commit", "-q", "-m", "files")
    # The bare remote lives outside $HOME: the relay refuses a local remote the compute node
    # could write (its hooks would run on the login node).
    remote = Path(tempfile.mkdtemp(prefix="slb-relay-remote-", dir="/tmp")) / "remote.git"
    atexit.register(shutil.rmtree, remote.parent, ignore_errors=True)
    git("init", "-q", "--bare", str(remote), cwd=home)
    git("remote", "add", "origin", str(remote))
    return home, repo


def git_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
    }


def sandlot_program() -> list[str]:
    """The console script next to this Python (not a pyenv shim: its pid is the daemon's)."""
    script = Path(sys.executable).parent / "sandlot"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from sandlot.cli import main; sys.exit(main())"]


class DaemonProcess:
    """``sandlot relay daemon --queue Q [--poll P]`` with HOME=home, until :meth:`stop`."""

    def __init__(self, home: Path, queue: Path, poll: float | None, log: Path) -> None:
        from sandlot.relay import Queue

        self.queue = Queue(queue)
        argv = [*sandlot_program(), "relay", "daemon", "--queue", str(queue)]
        if poll is not None:
            argv += ["--poll", str(poll)]
        env = {**os.environ, "HOME": str(home)}
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=open(log, "ab"),  # noqa: SIM115 (the child holds it)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.log = log
        deadline = now() + 60
        while self.queue.heartbeat_age() is None:
            if self.proc.poll() is not None or now() > deadline:
                self.stop()
                raise RuntimeError(f"the relay daemon did not start: {self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon (all its threads), in seconds."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is the state (field 3); utime and stime are fields 14 and 15
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, limit: int = 300) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace").strip()[-limit:].replace("\n", " | ")
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --------------------------------------------------------------------------------------------
# the sections


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace, results: Results) -> None:
        super().__init__(args, results)
        from sandlot.relay import client

        self.client_poll = client.CLIENT_POLL
        self.home, self.repo = make_home(args.files)
        self.env = git_env(self.home)

    def daemon(self, name: str, poll: float | None) -> DaemonProcess:
        return DaemonProcess(
            self.home, self.home / f".relay-{name}", poll, self.home / f"daemon-{name}.log"
        )

    def bare_status(self) -> float:
        t0 = now()
        subprocess.run(
            ["git", "status"], cwd=self.repo, env=self.env, check=True, capture_output=True
        )
        return now() - t0

    def roundtrip(self) -> None:
        from sandlot.relay import RelayClient

        args, R = self.args, self.results
        self.log(f"roundtrip: {args.roundtrip_iters} rounds")
        daemons = {
            "default": self.daemon("default", None),
            "fast": self.daemon("fast", FAST_POLL),
        }
        try:
            clients = {
                name: RelayClient(cwd=self.repo, queue=d.queue.root) for name, d in daemons.items()
            }
            rows = {
                "default": Row(
                    "roundtrip",
                    f"relay: RelayClient.status(), daemon --poll {DEFAULT_POLL:g} (default)",
                    "ms",
                ),
                "fast": Row(
                    "roundtrip", f"relay: RelayClient.status(), daemon --poll {FAST_POLL:g}", "ms"
                ),
                "bare": Row("roundtrip", "bare: git status (subprocess.run)", "ms"),
            }

            def relay(name: str) -> float:
                t0 = now()
                result = clients[name].status()
                elapsed = now() - t0
                if result.status != "ok":
                    raise RuntimeError(f"git_status answered {result.status}: {result.stderr}")
                return elapsed

            for name in ("default", "fast"):  # warm-up: first imports and page cache
                relay(name)
            self.bare_status()
            for subject in shuffled_rounds(self.rng, list(rows), args.roundtrip_iters):
                # A random pause (not timed): requests then arrive at a random point of the
                # daemon's poll cycle, as they would from an agent. Back to back, each would
                # land just after the scan that answered the one before, ~1 interval early.
                time.sleep(self.rng.uniform(0, args.jitter))
                try:
                    seconds = self.bare_status() if subject == "bare" else relay(subject)
                    rows[subject].samples.append(seconds * 1000)
                except Exception as exc:
                    rows[subject].failed = True
                    rows[subject].note = f"{type(exc).__name__}: {exc}"[:200]
            bare50 = rows["bare"].p50
            for name, poll in (("default", DEFAULT_POLL), ("fast", FAST_POLL)):
                row = rows[name]
                if bare50 is not None and row.samples:
                    row.limit = (poll + self.client_poll) * 1000 + 1.2 * bare50
                    row.target = (
                        f"p50 ≤ {poll:g} s + {self.client_poll:g} s + 1.2 x bare p50"
                        f" = {row.limit:.0f} ms"
                    )
                    row.note = (
                        f"p50 - bare p50 = {row.p50 - bare50:.0f} ms"  # type: ignore[operator]
                        f" ({100 * (row.p50 - bare50) / (row.limit - bare50):.0f}% of the"  # type: ignore[operator]
                        " allowed overhead)"
                    )
                    if name == "default":
                        row.ok = row.p50 <= row.limit  # type: ignore[operator]
                R.add(row)
            R.add(rows["bare"])
        finally:
            for d in daemons.values():
                d.stop()
        statuses = [d.proc.returncode for d in daemons.values()]
        if any(code not in (0, None) for code in statuses):
            R.notes.append(f"roundtrip: a daemon exited with {statuses}")

    def idle(self) -> None:
        args, R = self.args, self.results
        seconds, windows = args.idle_seconds, args.idle_windows
        self.log(f"idle: {seconds:g} s")
        daemons = {
            "default": self.daemon("idle-default", None),
            "fast": self.daemon("idle-fast", FAST_POLL),
        }
        try:
            time.sleep(args.idle_settle)  # start-up (imports, checks) is not idling
            rows = {
                "default": Row(
                    "idle", f"relay daemon idle, --poll {DEFAULT_POLL:g} (default)", "% of a core"
                ),
                "fast": Row("idle", f"relay daemon idle, --poll {FAST_POLL:g}", "% of a core"),
            }
            start_cpu = {name: d.cpu_seconds() for name, d in daemons.items()}
            start = now()
            last_cpu, last = dict(start_cpu), start
            for _ in range(windows):
                time.sleep(seconds / windows)
                t = now()
                for name, d in daemons.items():
                    cpu = d.cpu_seconds()
                    rows[name].samples.append(100 * (cpu - last_cpu[name]) / (t - last))
                    last_cpu[name] = cpu
                last = t
            wall = last - start
            for name, row in rows.items():
                used = last_cpu[name] - start_cpu[name]
                row.value = 100 * used / wall
                row.note = (
                    f"{used:.2f} s of CPU in {wall:.1f} s; samples are {windows} windows of"
                    f" {wall / windows:.1f} s (clock tick {1 / os.sysconf('SC_CLK_TCK'):g} s)"
                )
                if name == "default":
                    row.limit = args.idle_target
                    row.target = f"< {args.idle_target:g}% of one core over {wall:.0f} s"
                    row.ok = row.value < args.idle_target
                R.add(row)
        finally:
            for d in daemons.values():
                d.stop()


# --------------------------------------------------------------------------------------------
# output


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit != "ms":
        return f"{value:.2f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _value(row: Row) -> str:
    return fmt_value(row.value, row.unit)


HEADERS, table_cells = percentile_columns("value", _value, fmt_value)


LAYOUT = Layout(
    title="sandlot air-gapped relay",
    stem="relay",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p90", "value", "target", "verdict"],
    targets_heading="Targets",
    reading="p50 / p90 / p99 over n samples. roundtrip: the relay and the bare git status were"
    " interleaved (each round runs every subject once, in a shuffled order, after a random"
    " untimed pause of up to --jitter s so requests arrive at a random point of the daemon's"
    " poll cycle), in the same repository; the relay is a real daemon process. idle: value is"
    " the daemon's CPU over the whole window, the percentiles are over its windows.",
    how_to_run=[
        "python benchmarks/bench_relay.py",
        "python benchmarks/bench_relay.py --help",
    ],
)


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--roundtrip-iters", type=int, default=30, help="rounds (default 30)")
    p.add_argument(
        "--jitter",
        type=float,
        default=DEFAULT_POLL,
        help="longest random pause before each request, not timed (default 0.5 s)",
    )
    p.add_argument("--files", type=int, default=500, help="files in the repository (500)")
    p.add_argument("--idle-seconds", type=float, default=20, help="idle window (default 20)")
    p.add_argument("--idle-windows", type=int, default=4, help="windows in it (default 4)")
    p.add_argument(
        "--idle-settle", type=float, default=2, help="seconds after start not counted (2)"
    )
    p.add_argument("--idle-target", type=float, default=1.0, help="%% of a core (default 1)")
    add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.roundtrip_iters, args.idle_seconds, args.files = 5, 4, 50
    args.sections = choose(p, args.sections, SECTIONS, "section")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()
    results = Results()
    bench = Bench(args, results)
    bench.run_sections()
    results.note_load()
    versions: dict[str, Any] = {**base_versions(), "git": tool_version(["git", "--version"])}
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = run_meta("bench_relay.py", argv, started, load0, commit, versions, args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
