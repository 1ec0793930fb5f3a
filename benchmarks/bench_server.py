#!/usr/bin/env python
"""Server benchmarks: the SDK in remote mode (HTTP to a ``sandlot serve`` on loopback) next to
the same SDK embedded (in-process manager), measured side by side in one run.

Sections:

  warm         ``sb.commands.run("true")`` in a live sandbox, sync and async SDK, embedded vs
               remote. Target (issue 18): remote p50 at most 1 ms above embedded p50
               (``--warm-target-ms``).
  stream       a command printing 64 MiB, drained through ``on_stdout`` (a callback that only
               counts) with ``max_output_bytes=0``, embedded vs remote; two payloads: ASCII text
               (``yes ... | head -c N``) and zero bytes (``head -c N /dev/zero``, which SSE
               carries as base64). Remote is the SDK's binary frames; "remote SSE" is the same
               client asking for Server-Sent Events, as other clients do (no target). Target:
               remote at least 50% of embedded MiB/s. Every byte is counted; a short or long
               count is an error.
  lifecycle    ``Sandbox.create()`` and ``kill()``, embedded vs remote (no target).
  concurrency  200 streaming commands at once from 200 asyncio tasks in this one process, on
               ``--sandboxes`` sandboxes of one server: each prints a timestamped line every
               50 ms for 3 s. Errors (exceptions, non-zero exits, wrong byte counts) must be 0.
               Reported: wall time, per-stream time, delivery lag (line written in the sandbox
               -> callback here), peak RSS of the server process and, apart, of its children
               (the sandboxes: bwrap, agent, command), CPU of client, server and sandboxes.
               The same load embedded follows for comparison (``--no-concurrency-embedded``).

The server is started here (``tests/remote/server.py``'s ``ServerProcess``) with its own
temporary state folder, and stopped at the end; the embedded side uses another temporary
``SANDLOT_HOME``. Compared subjects are interleaved (every round runs each once, in a shuffled
order), so the machine's noise hits them alike.

    python benchmarks/bench_server.py                  # everything, about 2 minutes
    python benchmarks/bench_server.py --sections warm,stream --warm-iters 3000
    python benchmarks/bench_server.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/server-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import inspect
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when not run as a script
from _common import (
    REPO,
    BenchBase,
    Layout,
    MiB,
    Results,
    Sampled,
    add_run_options,
    base_versions,
    choose,
    fresh_sandlot_home,
    git_commit,
    new_parser,
    now,
    percentile,
    percentile_columns,
    report,
    run_meta,
    shuffled_rounds,
    version_of,
)

SECTIONS = ("warm", "stream", "lifecycle", "concurrency")
TEXT_LINE = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # 63 bytes a line
PAYLOADS = {
    "text": f"yes {TEXT_LINE} | head -c {{n}}",
    "zeros": "head -c {n} /dev/zero",
}
# One concurrent stream: a fixed-width line every GAP seconds, stamped with the wall clock
# (the sandbox shares the host's clock), on a fixed schedule, so the byte count is known.
TICKER = """\
import sys, time
n, gap, pad = int(sys.argv[1]), float(sys.argv[2]), "x" * int(sys.argv[3])
w, f = sys.stdout.write, sys.stdout.flush
t0 = time.monotonic()
for i in range(n):
    w("%017.6f %06d %s\\n" % (time.time(), i, pad))
    f()
    time.sleep(max(0.0, t0 + (i + 1) * gap - time.monotonic()))
"""
TICKER_OVERHEAD = 17 + 1 + 6 + 1 + 1  # stamp, space, counter, space, newline
STREAM_SUBJECTS = ("embedded", "remote", "remote SSE")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# rows


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 99)

    section: str
    subject: str
    kind: str  # embedded | remote | info
    unit: str  # ms | s | MiB/s | MiB | count
    samples: list[float] = field(default_factory=list)
    note: str = ""
    baseline: str | None = None
    target: str = ""
    ok: bool | None = None
    diff50: float | None = None  # this row's p50 minus the baseline's (ms and s rows)
    ratio50: float | None = None
    ratio90: float | None = None
    failed: bool = False
    higher_is_better: bool = False

    def fail(self, why: str) -> None:
        self.failed = True
        self.note = f"{self.note}; {why}" if self.note else why


@contextlib.contextmanager
def wire_format(where: str) -> Any:
    """The remote SDK asks for Server-Sent Events instead of binary frames, for "remote SSE"
    (what other clients get): the Accept header its executions send, swapped for the run."""
    if where != "remote SSE":
        yield
        return
    from sandlot.remote import channel

    saved = channel.STREAM
    channel.STREAM = {"Accept": "text/event-stream"}
    try:
        yield
    finally:
        channel.STREAM = saved


def compare(row: Row, base: Row) -> None:
    """row's p50 and p90 over the baseline's, and the p50 difference."""
    if not row.samples or not base.samples:
        return
    row.baseline = base.subject
    b50, b90 = base.p(50), base.p(90)
    r50, r90 = row.p(50), row.p(90)
    assert b50 is not None and b90 is not None and r50 is not None and r90 is not None
    row.ratio50 = r50 / b50 if b50 else None
    row.ratio90 = r90 / b90 if b90 else None
    row.diff50 = r50 - b50


# --------------------------------------------------------------------------------------------
# processes: memory and CPU from /proc


def proc_status(pid: int, *names: str) -> dict[str, float]:
    """Fields of /proc/PID/status in MiB (the kB ones); missing process: {}."""
    found: dict[str, float] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in names:
                found[key] = int(value.split()[0]) / 1024
    return found


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (and, with ``children``, of its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def descendants(pid: int) -> list[int]:
    from sandlot.providers.procinfo import descendants as below

    return list(below(pid))


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def mentions(pid: int, text: bytes) -> bool:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        return text in f.read()
    return False


class Family:
    """The processes a section started for ``host``: its descendants, and the sandboxes whose
    command line names ``home`` (should the host start them detached) with theirs; less
    those that were there before (the other sections' live sandboxes) and less the subtree of
    ``apart`` (the server, a child of this process, when the host is this process)."""

    def __init__(self, host: int, home: Path, apart: int | None = None) -> None:
        self.host = host
        self.home = str(home).encode()
        self.apart = apart
        self.before: set[int] = set()
        self.before = set(self.members())

    def members(self) -> list[int]:
        skip = {self.host, os.getpid(), *self.before}
        if self.apart is not None:
            skip |= {self.apart, *descendants(self.apart)}
        found = set(descendants(self.host))
        for pid in all_pids():
            if pid not in found and pid not in skip and mentions(pid, self.home):
                found.add(pid)
                found.update(descendants(pid))
        return sorted(found - skip)

    def cpu(self) -> dict[int, float]:
        """CPU seconds of each member, reaped children included."""
        return {pid: cpu_seconds(pid, children=True) for pid in self.members()}

    def hwm(self) -> float:
        """VmHWM summed over the members alive now."""
        return sum(proc_status(p, "VmHWM").get("VmHWM", 0.0) for p in self.members())


class TreeMonitor:
    """Samples, on a thread, the RSS of the host process and the summed RSS and PSS of the
    family's members."""

    def __init__(self, family: Family, every: float) -> None:
        self.family = family
        self.every = every
        self.peak_own = 0.0
        self.peak_children = 0.0  # summed VmRSS: shared pages counted once per process
        self.peak_children_pss = 0.0  # summed PSS: shared pages split
        self.peak_count = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self) -> None:
        own = proc_status(self.family.host, "VmRSS").get("VmRSS", 0.0)
        below = self.family.members()
        total = sum(proc_status(p, "VmRSS").get("VmRSS", 0.0) for p in below)
        shared = sum(pss(p) for p in below)
        self.peak_own = max(self.peak_own, own)
        self.peak_children = max(self.peak_children, total)
        self.peak_children_pss = max(self.peak_children_pss, shared)
        self.peak_count = max(self.peak_count, len(below))
        self.samples += 1


def pss(pid: int) -> float:
    """Proportional set size in MiB (shared pages split among their users); 0 if gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0


# --------------------------------------------------------------------------------------------
# the benchmark


def guarded(section: Callable[[Bench], None]) -> Callable[[Bench], None]:
    """A section that raises becomes a failed row and a note; the run goes on."""

    @functools.wraps(section)
    def run(self: Bench) -> None:
        try:
            section(self)
        except Exception as exc:
            traceback.print_exc()
            name = section.__name__
            row = self.results.add(Row(name, f"{name}: the section failed", "info", ""))
            row.fail(f"{type(exc).__name__}: {exc}"[:400])
            self.results.notes.append(f"{name} failed: {type(exc).__name__}: {exc}"[:600])
        self.check_server(section.__name__)

    return run


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace, results: Results, server: Any) -> None:
        super().__init__(args, results)
        self.server = server
        self.client = self.sandlot.Client(url=server.url, api_key=None)
        self.boxes: dict[str, Any] = {}  # subject -> a live sandbox for warm and stream
        self.server_died = False

    # -- set-up -------------------------------------------------------------------------------

    @property
    def server_pid(self) -> int:
        return int(self.server.process.pid)

    def check_server(self, after: str) -> None:
        if self.server_died or self.server.process.poll() is None:
            return
        self.server_died = True
        tail = self.server_log_tail()
        self.results.notes.append(
            f"the server exited (status {self.server.process.returncode}) during {after}: {tail}"
        )

    def server_log_tail(self, limit: int = 600) -> str:
        try:
            text = self.server.log.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-limit:].replace("\n", " | ")

    def start(self) -> None:
        """One throwaway sandbox each way (first-use work stays out of the timings), then the
        four live sandboxes of the warm and stream sections."""
        S = self.sandlot
        for client in (None, self.client):
            box = S.Sandbox.create(client=client)
            box.commands.run("true")
            provider, isolated = box.provider, box.isolated
            box.kill()
            where = "remote" if client else "embedded"
            self.results.notes.append(
                f"{where}: provider {provider} ({'isolated' if isolated else 'NOT isolated'})"
            )
        self.boxes["embedded"] = S.Sandbox.create(timeout=3600)
        self.boxes["remote"] = S.Sandbox.create(timeout=3600, client=self.client)
        self.boxes["embedded async"] = self.arun(S.AsyncSandbox.create(timeout=3600))
        self.boxes["remote async"] = self.arun(
            S.AsyncSandbox.create(timeout=3600, client=self.client)
        )

    def stop(self) -> None:
        for name, box in self.boxes.items():
            with contextlib.suppress(Exception):
                if "async" in name:
                    self.arun(asyncio.wait_for(box.kill(), 30))
                else:
                    box.kill()
        with contextlib.suppress(Exception):
            self.arun(self.client.aclose())
        with contextlib.suppress(Exception):
            # The sync SDK's private loop holds a session too, and offers no public close.
            from sandlot.sdk.sync import _portal

            _portal.call(self.client.aclose())

    # -- 1. warm round trip -------------------------------------------------------------------

    @guarded
    def warm(self) -> None:
        a, R = self.args, self.results
        self.log(f"warm round trip: {a.warm_iters} rounds of 4 subjects")
        rows = {
            "embedded": R.add(Row("warm", 'embedded: sb.commands.run("true")', "embedded", "ms")),
            "remote": R.add(Row("warm", 'remote: sb.commands.run("true")', "remote", "ms")),
            "embedded async": R.add(
                Row("warm", 'embedded async: await sb.commands.run("true")', "embedded", "ms")
            ),
            "remote async": R.add(
                Row("warm", 'remote async: await sb.commands.run("true")', "remote", "ms")
            ),
            "floor": R.add(
                Row(
                    "warm",
                    'floor: await client.call("GET", "/healthz") (HTTP round trip, no sandbox)',
                    "info",
                    "ms",
                )
            ),
        }
        bad: dict[str, str] = {}

        async def timed_floor() -> float:
            t = now()
            await self.client.call("GET", "/healthz")
            return now() - t

        async def timed_async(box: Any) -> tuple[float, Any]:
            t = now()
            r = await box.commands.run("true")
            return now() - t, r

        # CPU seconds spent during each subject's calls: this process's, the server's.
        spent = {name: [0.0, 0.0] for name in rows}

        def once(name: str, record: bool) -> None:
            if name == "floor":
                if name in bad:
                    return
                c0, s0 = time.process_time(), cpu_seconds(self.server_pid)
                try:
                    elapsed = self.arun(timed_floor())
                except Exception as exc:
                    bad[name] = f"{type(exc).__name__}: {exc}"[:200]
                    return
                c1, s1 = time.process_time(), cpu_seconds(self.server_pid)
                if record:
                    rows[name].samples.append(elapsed * 1000)
                    spent[name][0] += c1 - c0
                    spent[name][1] += s1 - s0
                return
            box = self.boxes[name]
            c0, s0 = time.process_time(), cpu_seconds(self.server_pid)
            if "async" in name:
                elapsed, r = self.arun(timed_async(box))
            else:
                t = now()
                r = box.commands.run("true")
                elapsed = now() - t
            c1, s1 = time.process_time(), cpu_seconds(self.server_pid)
            if r.exit_code != 0:
                bad.setdefault(name, f"exit code {r.exit_code}")
            elif record:
                rows[name].samples.append(elapsed * 1000)
                spent[name][0] += c1 - c0
                spent[name][1] += s1 - s0

        for name in shuffled_rounds(self.rng, list(rows), a.warm_warmup):
            once(name, False)
        for name in shuffled_rounds(self.rng, list(rows), a.warm_iters):
            once(name, True)
        for name, why in bad.items():
            rows[name].fail(why)
        for name, row in rows.items():
            if row.n:
                text = f"CPU per call: this process {spent[name][0] / row.n * 1000:.2f} ms"
                if name.startswith("remote") or name == "floor":
                    text += f", server {spent[name][1] / row.n * 1000:.2f} ms"
                row.note = f"{row.note}; {text}" if row.note else text
        limit = a.warm_target_ms
        for remote, embedded in (("remote", "embedded"), ("remote async", "embedded async")):
            row, base = rows[remote], rows[embedded]
            compare(row, base)
            if row.diff50 is not None:
                row.target = f"p50 ≤ embedded p50 + {limit:g} ms"
                row.ok = row.diff50 <= limit

    # -- 2. streaming -------------------------------------------------------------------------

    @guarded
    def stream(self) -> None:
        a, R = self.args, self.results
        size = a.stream_mib * MiB
        self.log(f"streaming {a.stream_mib} MiB: {a.stream_runs} runs per subject and payload")
        rows: dict[tuple[str, str], Row] = {}
        cpu: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for payload in PAYLOADS:
            for where in STREAM_SUBJECTS:
                what = "ASCII text lines" if payload == "text" else "zero bytes"
                rows[where, payload] = R.add(
                    Row(
                        "stream",
                        f"{where}: {a.stream_mib} MiB of {what}, on_stdout=count",
                        "info" if where == "remote SSE" else where,
                        "MiB/s",
                        higher_is_better=True,
                    )
                )
                cpu[where, payload] = []

        def once(where: str, payload: str) -> None:
            row = rows[where, payload]
            if row.failed:
                return
            got = 0

            def count(text: str) -> None:
                nonlocal got
                got += len(text)  # one character a byte: both payloads are ASCII

            command = PAYLOADS[payload].format(n=size)
            box = self.boxes["embedded" if where == "embedded" else "remote"]
            c0, s0 = time.process_time(), cpu_seconds(self.server_pid)
            t = now()
            with wire_format(where):
                r = box.commands.run(
                    command, on_stdout=count, max_output_bytes=0, timeout=a.stream_timeout
                )
            elapsed = now() - t
            c1, s1 = time.process_time(), cpu_seconds(self.server_pid)
            if r.exit_code != 0:
                row.fail(f"exit code {r.exit_code}: {r.stderr[:200]}")
            elif got != size:
                row.fail(f"received {got} of {size} bytes")
            else:
                row.samples.append(size / MiB / elapsed)
                remote = where != "embedded"
                cpu[where, payload].append((c1 - c0, s1 - s0 if remote else 0.0))

        for where, payload in shuffled_rounds(self.rng, list(rows), a.stream_runs):
            try:
                once(where, payload)
            except Exception as exc:
                rows[where, payload].fail(f"{type(exc).__name__}: {exc}"[:300])
        gib = size / (1 << 30)
        for (where, payload), row in rows.items():
            spent = cpu[where, payload]
            if spent:
                client = percentile([c for c, _ in spent], 50) / gib
                text = f"CPU per GiB: this process {client:.1f} s"
                if where != "embedded":
                    text += f", server {percentile([s for _, s in spent], 50) / gib:.1f} s"
                row.note = f"{row.note}; {text}" if row.note else text
            if where != "embedded":
                compare(row, rows["embedded", payload])
            if where == "remote" and row.ratio50 is not None:
                row.target = f"p50 ≥ {a.stream_target:.0%} of embedded"
                row.ok = row.ratio50 >= a.stream_target

    # -- 3. create and kill -------------------------------------------------------------------

    @guarded
    def lifecycle(self) -> None:
        a, R, S = self.args, self.results, self.sandlot
        self.log(f"create + kill: {a.lifecycle_iters} rounds")
        rows: dict[str, dict[str, Row]] = {}
        for where in ("embedded", "remote"):
            rows[where] = {
                "total": R.add(
                    Row("lifecycle", f"{where}: Sandbox.create() + kill()", where, "ms")
                ),
                "create": R.add(Row("lifecycle", f"{where}: of which create()", "info", "ms")),
                "kill": R.add(Row("lifecycle", f"{where}: of which kill()", "info", "ms")),
            }

        def once(where: str, record: bool = True) -> None:
            client = self.client if where == "remote" else None
            t0 = now()
            box = S.Sandbox.create(client=client)
            t1 = now()
            box.kill()
            t2 = now()
            if record:
                rows[where]["total"].samples.append((t2 - t0) * 1000)
                rows[where]["create"].samples.append((t1 - t0) * 1000)
                rows[where]["kill"].samples.append((t2 - t1) * 1000)

        for where in shuffled_rounds(self.rng, list(rows), 2):
            once(where, record=False)
        for where in shuffled_rounds(self.rng, list(rows), a.lifecycle_iters):
            once(where)
        for part in ("total", "create", "kill"):
            compare(rows["remote"][part], rows["embedded"][part])

    # -- 4. concurrent streams ----------------------------------------------------------------

    @guarded
    def concurrency(self) -> None:
        a, R = self.args, self.results
        lines = max(1, round(a.stream_seconds / a.line_interval))
        per_line = TICKER_OVERHEAD + a.line_bytes
        expected = lines * per_line
        boxes = min(a.sandboxes, a.streams)
        layout = f"{a.streams} streams on {boxes} sandboxes"
        self.log(f"concurrency: {layout}, {lines} lines of {per_line} bytes each")
        R.notes.append(
            f"concurrency: {layout} ({-(-a.streams // boxes)} at most per sandbox), all"
            f" asyncio tasks of this one process (AsyncSandbox); each stream runs python3 -I -S"
            f" printing {lines} lines of {per_line} bytes, one every {a.line_interval:g} s"
            f" ({expected} bytes); sandboxes created in batches of {a.create_batch}"
        )
        order = ["remote", "embedded"] if a.concurrency_embedded else ["remote"]
        self.rng.shuffle(order)
        for where in order:
            self.concurrency_run(where, boxes, lines, expected)
            if where == "remote":
                self.check_server("concurrency")
        remote = [r for r in R.rows if r.section == "concurrency" and r.subject[:7] == "remote:"]
        for row in remote:
            base = R.find("concurrency", row.subject.replace("remote:", "embedded:", 1))
            if base is not None and row.unit != "count":
                compare(row, base)

    def concurrency_run(self, where: str, n_boxes: int, lines: int, expected: int) -> None:
        a, R, S = self.args, self.results, self.sandlot
        remote = where == "remote"
        client = self.client if remote else None
        host = self.server_pid if remote else os.getpid()
        n = a.streams

        def row(subject: str, unit: str, kind: str = where) -> Row:
            return R.add(Row("concurrency", f"{where}: {subject}", kind, unit))

        errors_row = row("errors (exceptions, non-zero exits, wrong byte counts)", "count")
        wall_row = row(f"wall time, {n} streams started at once until all ended", "s")
        each_row = row("time of each stream (run() called -> returned)", "s")
        lag_row = row("delivery lag: line written in the sandbox -> on_stdout here", "ms")
        create_row = row(f"create {n_boxes} sandboxes (batches of {a.create_batch})", "s", "info")
        kill_row = row(f"kill {n_boxes} sandboxes (gather)", "s", "info")
        who = "server" if remote else "benchmark"
        own_row = row(f"{who} process peak RSS (VmHWM, reset before the section)", "MiB", "info")
        kids_row = row("sandboxes (bwrap, agent, commands): peak of summed VmRSS", "MiB", "info")
        pss_row = row("sandboxes (bwrap, agent, commands): peak of summed PSS", "MiB", "info")
        cpu_row = row("CPU seconds during the streams", "s", "info")
        errors: list[str] = []

        made: list[Any] = []

        async def create_all() -> None:
            while len(made) < n_boxes:
                batch = min(a.create_batch, n_boxes - len(made))
                outcomes = await asyncio.gather(
                    *(S.AsyncSandbox.create(timeout=1800, client=client) for _ in range(batch)),
                    return_exceptions=True,
                )
                made.extend(b for b in outcomes if not isinstance(b, BaseException))
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome

        async def kill_all() -> list[Any]:
            return await asyncio.gather(*(b.kill() for b in made), return_exceptions=True)

        async def stream(box: Any) -> tuple[float, list[float]]:
            got = 0
            tail = ""
            lags: list[float] = []

            def on_line(text: str) -> None:
                nonlocal got, tail
                got += len(text)
                tail += text
                if "\n" not in text:
                    return
                *done, tail = tail.split("\n")
                t = time.time()
                for line in done:  # in order: a stream's list index is the line number
                    lags.append(t - float(line[:17]))

            argv = ["python3", "-I", "-S", "-c", TICKER, str(lines), str(a.line_interval)]
            t = now()
            r = await box.commands.run(
                [*argv, str(a.line_bytes)],
                on_stdout=on_line,
                max_output_bytes=4096,
                timeout=a.stream_seconds * 10 + 60,
            )
            elapsed = now() - t
            if r.exit_code != 0:
                raise RuntimeError(f"exit code {r.exit_code}: {r.stderr[-200:]}")
            if got != expected:
                raise RuntimeError(f"received {got} of {expected} bytes")
            return elapsed, lags

        async def run_all(made: list[Any]) -> list[Any]:
            tasks = [stream(made[i % len(made)]) for i in range(n)]
            return await asyncio.gather(*tasks, return_exceptions=True)

        home = self.server.home if remote else Path(os.environ["SANDLOT_HOME"])
        family = Family(host, home, None if remote else self.server_pid)
        t = now()
        try:
            self.arun(asyncio.wait_for(create_all(), a.create_timeout))
        except Exception as exc:
            errors_row.samples.append(n)
            errors_row.fail(
                f"creating sandbox {len(made) + 1} of {n_boxes} failed:"
                f" {type(exc).__name__}: {exc}"[:300]
            )
            errors_row.target, errors_row.ok = "= 0", False
            with contextlib.suppress(Exception):
                self.arun(asyncio.wait_for(kill_all(), 120))
            return
        create_row.samples.append(now() - t)
        time.sleep(0.5)  # let the new sandboxes settle before the clock starts

        try:
            reset = reset_peak_rss(host)
            cpu0 = (time.process_time(), cpu_seconds(self.server_pid), family.cpu())
            with TreeMonitor(family, a.monitor_every) as monitor:
                t = now()
                try:
                    limit = a.stream_seconds * 10 + 120
                    outcomes = self.arun(asyncio.wait_for(run_all(made), limit))
                except TimeoutError:
                    outcomes = [TimeoutError("the streams did not end in time")] * n
                wall = now() - t
                own_hwm = proc_status(host, "VmHWM").get("VmHWM", 0.0)
                kids_hwm = family.hwm()
                cpu1 = (time.process_time(), cpu_seconds(self.server_pid), family.cpu())

            all_lags: list[float] = []
            head: list[float] = []  # each stream's first 10 lines
            tail: list[float] = []  # and its last 10
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    errors.append(f"{type(outcome).__name__}: {outcome}"[:200])
                else:
                    each_row.samples.append(outcome[0])
                    all_lags.extend(outcome[1])
                    head.extend(outcome[1][:10])
                    tail.extend(outcome[1][-10:])
            # A stream that failed still delivered lines; only successful streams' lags count.
            lag_row.samples = [x * 1000 for x in all_lags]
            if head and tail:
                lag_row.note = (
                    f"p50 of each stream's first 10 lines {percentile(head, 50) * 1000:.1f} ms,"
                    f" of its last 10 {percentile(tail, 50) * 1000:.1f} ms"
                )
            errors_row.samples.append(len(errors))
            errors_row.target, errors_row.ok = "= 0", not errors
            if errors:
                distinct = sorted(set(errors))
                errors_row.note = f"{len(distinct)} distinct: " + " | ".join(distinct[:3])
                R.notes.append(f"concurrency {where}: {len(errors)} errors; first: {distinct[:5]}")
            wall_row.samples.append(wall)
            ideal = lines * a.line_interval
            wall_row.note = f"a stream alone prints for {ideal:.1f} s"
            own_row.samples.append(own_hwm)
            own_row.note = f"sampled peak VmRSS {monitor.peak_own:.0f} MiB" + (
                "" if reset else "; VmHWM could not be reset: lifetime peak"
            )
            kids_row.samples.append(monitor.peak_children)
            kids_row.note = (
                f"sampled every {a.monitor_every:g} s ({monitor.samples} samples), at most"
                f" {monitor.peak_count} processes; shared pages counted in each;"
                f" VmHWM summed over those alive at the end {kids_hwm:.0f} MiB"
            )
            pss_row.samples.append(monitor.peak_children_pss)
            pss_row.note = "shared pages split among the processes sharing them"
            client_cpu = cpu1[0] - cpu0[0]
            server_cpu = cpu1[1] - cpu0[1] if remote else 0.0
            boxes_cpu = sum(v - cpu0[2].get(pid, 0.0) for pid, v in cpu1[2].items())
            total = client_cpu + server_cpu + boxes_cpu
            cpu_row.samples.append(total)
            parts = [f"this process {client_cpu:.1f} s"]
            if remote:
                parts.append(f"server {server_cpu:.1f} s")
            parts.append(f"sandboxes {boxes_cpu:.1f} s")
            cores = os.cpu_count() or 1
            cpu_row.note = (
                ", ".join(parts)
                + f"; {total / (wall * cores):.0%} of {cores} cores over the wall time;"
                f" this process alone {client_cpu / wall:.0%} of one core"
            )
        finally:  # never leave sandboxes behind
            t = now()
            try:
                killed = self.arun(asyncio.wait_for(kill_all(), 120))
                kill_row.samples.append(now() - t)
                failed = [k for k in killed if isinstance(k, BaseException)]
                if failed:
                    kill_row.fail(f"{len(failed)} kills failed; first: {failed[0]!r}"[:300])
            except Exception as exc:
                kill_row.fail(f"{type(exc).__name__}: {exc}"[:300])

    # -- output of the warm section, for the summary --------------------------------------------

    def summary_notes(self) -> None:
        R = self.results
        for sync in ("", " async"):
            row = R.find("warm", f'remote{sync}: {"await " if sync else ""}sb.commands.run("true")')
            if row is not None and row.diff50 is not None:
                R.notes.append(
                    f"warm{sync}: remote p50 is {row.diff50:+.2f} ms from embedded p50"
                    f" (target ≤ +{self.args.warm_target_ms:g} ms): "
                    + ("meets the target" if row.ok else "misses the target")
                )


# --------------------------------------------------------------------------------------------
# output


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    if unit == "s":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "MiB":
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    return f"{value:.0f}"


def fmt_versus(row: Row) -> str:
    if row.ratio50 is None:
        return "-"
    if row.higher_is_better:
        r90 = f" / {row.ratio90:.0%}" if row.ratio90 is not None else ""
        return f"{row.ratio50:.0%}{r90}"
    diff = ""
    if row.diff50 is not None and row.unit in ("ms", "s"):
        diff = f"{row.diff50:+.2f} {row.unit}, "
    return f"{diff}{row.ratio50:.2f}x"


HEADERS, table_cells = percentile_columns("vs embedded", fmt_versus, fmt_value)


LAYOUT = Layout(
    title="sandlot server: remote mode vs embedded",
    stem="server",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p90", "vs embedded", "target", "verdict"],
    targets_heading="Targets",
    reading="p50 / p90 / p99 over n samples. 'vs embedded': for times, the p50 difference and"
    " the p50 ratio remote / embedded; for MiB/s, remote's p50 / p90 as a share of embedded's;"
    " both sides measured in this run. Subjects were interleaved: each round runs every subject"
    " once, in a shuffled order. Remote means HTTP to a `sandlot serve` on 127.0.0.1 started by"
    " the script; embedded means the in-process manager.",
    how_to_run=[
        "# needs the server's dependencies: fastapi, uvicorn, sqlalchemy, aiohttp",
        "python benchmarks/bench_server.py",
        "python benchmarks/bench_server.py --help",
    ],
)


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--warm-iters", type=int, default=1000, help="rounds of 4 (default 1000)")
    p.add_argument("--warm-warmup", type=int, default=50, help="unrecorded rounds (default 50)")
    p.add_argument(
        "--warm-target-ms", type=float, default=1.0, help="remote p50 - embedded p50 (1 ms)"
    )
    p.add_argument("--stream-mib", type=int, default=64, help="MiB a command prints (64)")
    p.add_argument("--stream-runs", type=int, default=3, help="runs per subject (default 3)")
    p.add_argument("--stream-target", type=float, default=0.5, help="remote / embedded (0.5)")
    p.add_argument(
        "--stream-timeout", type=float, default=120, help="command timeout, seconds (120)"
    )
    p.add_argument("--lifecycle-iters", type=int, default=20, help="create + kill rounds (20)")
    p.add_argument("--streams", type=int, default=200, help="concurrent streams (default 200)")
    p.add_argument(
        "--sandboxes",
        type=int,
        default=200,
        help="sandboxes the streams share, round robin (default 200: one each)",
    )
    p.add_argument(
        "--stream-seconds", type=float, default=3.0, help="each stream prints this long (3)"
    )
    p.add_argument("--line-interval", type=float, default=0.05, help="seconds a line (0.05)")
    p.add_argument("--line-bytes", type=int, default=100, help="padding a line (default 100)")
    p.add_argument("--create-batch", type=int, default=16, help="sandboxes created at once (16)")
    p.add_argument(
        "--create-timeout", type=float, default=300, help="to create them all, seconds (300)"
    )
    p.add_argument("--monitor-every", type=float, default=0.5, help="RSS sampling period, s (0.5)")
    p.add_argument(
        "--no-concurrency-embedded",
        dest="concurrency_embedded",
        action="store_false",
        help="run the concurrent streams remotely only",
    )
    add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.warm_iters, args.warm_warmup = 100, 10
        args.stream_mib, args.stream_runs = 16, 1
        args.lifecycle_iters = 4
        args.streams, args.sandboxes, args.stream_seconds = 40, 10, 2.0
    args.sections = choose(p, args.sections, SECTIONS, "section")
    if args.streams < 1 or args.sandboxes < 1:
        p.error("--streams and --sandboxes must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("bwrap") is None:
        print("bubblewrap is not installed: run scripts/bench-setup.sh", file=sys.stderr)
        return 2
    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()
    fresh_sandlot_home("slb-server-client-")  # the embedded side's state folder
    sys.path.insert(0, str(REPO / "tests"))
    from remote.server import ServerProcess  # type: ignore[import-not-found]

    # The server's own state folder: not inside another 0700 folder (bwrap must reach it).
    server_home = Path(tempfile.mkdtemp(prefix="slb-server-", dir="/tmp"))
    max_log = max(256 * MiB, 2 * args.stream_mib * MiB)
    # ServerProcess's own default arguments, and ours.
    defaults = inspect.signature(ServerProcess).parameters["args"].default
    extra = tuple(defaults) if isinstance(defaults, tuple) else ()
    server = ServerProcess(server_home, args=(*extra, "--max-log-bytes", str(max_log)))
    results = Results()
    t = now()
    try:
        server.start(timeout=60)
    except RuntimeError as exc:
        server.stop()
        print(f"could not start the server: {exc}", file=sys.stderr)
        return 1
    ready = now() - t
    setup = Row("setup", "sandlot serve: start until /readyz answers", "info", "s", [ready])
    setup.note = f"{server.url}, SQLite in a fresh state folder"
    results.add(setup)
    bench: Bench | None = None
    try:
        bench = Bench(args, results, server)
        bench.start()
        bench.run_sections()
        bench.summary_notes()
    finally:
        if bench is not None:
            bench.stop()
            bench.check_server("the run")
        server.stop()
        shutil.rmtree(server_home, ignore_errors=True)
    results.notes.append(
        f"sandlot imported from {Path(sys.modules['sandlot'].__file__ or '?').parent}"
        if "sandlot" in sys.modules
        else "sandlot was not imported"
    )
    results.note_load()
    versions = {
        **base_versions(),
        **{d: version_of(d) for d in ("aiohttp", "fastapi", "uvicorn", "uvloop", "httptools")},
    }
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = run_meta("bench_server.py", argv, started, load0, commit, versions, args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
