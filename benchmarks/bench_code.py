#!/usr/bin/env python
"""Code-context benchmarks: sandlot's run_code next to jupyter_client + ipykernel, in one run.

Sections:

  warm     the cell ``x += 1`` in a warm context (after ``x = 0``): sandlot sync and async
           ``run_code`` vs a Jupyter kernel (``execute``, then the iopub idle status and the
           shell execute_reply). Target: sandlot p50 at most 1/5 of Jupyter's.
  context  a new context ready to run: ``create_code_context()`` + the first
           ``run_code("pass", context=ctx)`` in a live sandbox vs starting a kernel
           (``KernelManager.start_kernel`` + ``start_channels`` + ``wait_for_ready``) and its
           first ``pass``. Removal and shutdown are not timed. Target: at most 1/10 of Jupyter.
  cold     for context: a new sandbox + ``run_code("1")`` + kill (no target).
  stream   a cell printing 50 MiB (``sys.stdout.write('x' * (50 << 20))``): MiB/s through
           ``run_code(on_stdout=...)`` vs the same print arriving as iopub stream messages.

Subjects that are compared are interleaved (every round runs each once, in a shuffled order)
so the machine's noise hits them alike; ratios are between numbers from the same run. Jupyter
runs in its own worker process (``--worker``), driven one operation at a time, so its imports
and threads stay out of the process that measures sandlot.

    python benchmarks/bench_code.py                  # everything, under a minute
    python benchmarks/bench_code.py --sections warm,context --warm-iters 1000
    python benchmarks/bench_code.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/code-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import os
import platform
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import (  # a sibling script, not a package
    cpu_model,
    git_commit,
    md_escape,
    now,
    percentile,
    tool_version,
    version_of,
    wait_for_quiet,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
SECTIONS = ("warm", "context", "cold", "stream")
MiB = 1024 * 1024
STREAM_CODE = "import sys; sys.stdout.write('x' * {n})"


# --------------------------------------------------------------------------------------------
# rows


@dataclass
class Row:
    section: str
    subject: str
    kind: str  # sandlot | jupyter | info
    unit: str  # ms | s | MiB/s
    samples: list[float] = field(default_factory=list)
    note: str = ""
    baseline: str | None = None
    target: str = ""
    limit: float | None = None
    ok: bool | None = None
    ratio50: float | None = None
    ratio90: float | None = None
    failed: bool = False
    higher_is_better: bool = False

    @property
    def n(self) -> int:
        return len(self.samples)

    def p(self, q: float) -> float | None:
        return percentile(self.samples, q) if self.samples else None

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = [round(x, 4) for x in self.samples]
        data.update(n=self.n, p50=self.p(50), p90=self.p(90), p99=self.p(99))
        if self.samples:
            data.update(
                mean=sum(self.samples) / self.n, min=min(self.samples), max=max(self.samples)
            )
        return data


def compare(row: Row, base: Row, limit: float | None) -> None:
    """row's p50 (and p90) over base's; the verdict checks p50 against ``limit``."""
    if not row.samples or not base.samples:
        return
    row.baseline = base.subject
    b50, b90 = base.p(50), base.p(90)
    row.ratio50 = row.p(50) / b50 if b50 else None  # type: ignore[operator]
    row.ratio90 = row.p(90) / b90 if b90 else None  # type: ignore[operator]
    if limit is None or row.ratio50 is None:
        return
    row.limit = limit
    row.target = f"p50 ≤ 1/{round(1 / limit)} of Jupyter ({limit:g}x)"
    row.ok = row.ratio50 <= limit


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.load: dict[str, list[float]] = {}

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


# --------------------------------------------------------------------------------------------
# Jupyter: a worker process holding a KernelManager + BlockingKernelClient


class Jupyter:
    """Inside the worker. Every operation returns seconds (or a list of them)."""

    def __init__(self) -> None:
        from jupyter_client import KernelManager

        self.KernelManager = KernelManager
        self.live: tuple[Any, Any] | None = None

    def info(self) -> dict[str, Any]:
        return {
            "jupyter_client": version_of("jupyter_client"),
            "ipykernel": version_of("ipykernel"),
            "pyzmq": version_of("pyzmq"),
        }

    @staticmethod
    def execute(kc: Any, code: str, on_stream: Callable[[str], None] | None = None) -> None:
        """What a jupyter_client user does: execute, read iopub until the kernel is idle again
        (stream output arrives there), then take the execute_reply from the shell channel."""
        msg_id = kc.execute(code)
        while True:
            msg = kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream" and on_stream is not None:
                on_stream(msg["content"]["text"])
            elif kind == "error":
                raise RuntimeError(f"cell failed: {msg['content']['ename']}")
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                break
        while True:
            reply = kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                if reply["content"]["status"] != "ok":
                    raise RuntimeError(f"execute_reply: {reply['content']}")
                return

    def start(self) -> tuple[Any, Any]:
        km = self.KernelManager(kernel_name="python3")
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        return km, kc

    @staticmethod
    def stop(km: Any, kc: Any) -> None:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

    def _warm_client(self) -> Any:
        if self.live is None:
            self.live = self.start()
            self.execute(self.live[1], "x = 0")
        return self.live[1]

    def warm(self, n: int) -> list[float]:
        kc = self._warm_client()
        out = []
        for _ in range(n):
            t = now()
            self.execute(kc, "x += 1")
            out.append(now() - t)
        return out

    def new_kernel(self) -> float:
        t = now()
        km, kc = self.start()
        self.execute(kc, "pass")
        elapsed = now() - t
        self.stop(km, kc)
        return elapsed

    def stream(self, nbytes: int) -> list[float]:
        kc = self._warm_client()
        got = 0

        def count(text: str) -> None:
            nonlocal got
            got += len(text)

        t = now()
        self.execute(kc, STREAM_CODE.format(n=nbytes), count)
        elapsed = now() - t
        if got != nbytes:
            raise RuntimeError(f"received {got} of {nbytes} bytes")
        return [elapsed, got]

    def close(self) -> None:
        if self.live is not None:
            self.stop(*self.live)
            self.live = None


def worker_main() -> int:
    """Serve Jupyter over stdin/stdout, one JSON line per request and per answer."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the kernel machinery prints goes to the log
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        answers.write(json.dumps(obj) + "\n")

    try:
        jupyter = Jupyter()
        send({"ok": True, "result": jupyter.info()})
    except Exception as exc:
        traceback.print_exc()
        send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 0
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        try:
            send({"ok": True, "result": getattr(jupyter, request["op"])(*request["args"])})
        except Exception as exc:
            traceback.print_exc()
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
    with contextlib.suppress(Exception):
        jupyter.close()
    send({"ok": True, "result": None})
    return 0


class JupyterProcess:
    """The driver's side of the worker; an operation that does not answer in time kills it."""

    def __init__(self, timeout: float, log: Path) -> None:
        self.timeout = timeout
        self.log = log
        self.dead: str | None = None
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),  # noqa: SIM115 (the child holds it)
            start_new_session=True,
        )
        self._buffer = b""
        self.info: dict[str, Any] = {}
        try:
            self.info = self._answer(max(timeout, 60), "start")
        except RuntimeError as exc:
            self.dead = str(exc)
            self._kill()

    def _answer(self, timeout: float, what: str) -> Any:
        assert self.proc.stdout is not None
        deadline = now() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - now()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._kill()
                self.dead = f"hung: no answer to {what} within {timeout:g} s"
                raise RuntimeError(self.dead)
            chunk = os.read(fd, 65536)
            if not chunk:
                self._kill()
                self.dead = f"worker died during {what}: {self.log_tail()}"
                raise RuntimeError(self.dead)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(answer.get("error", "failed"))
        return answer["result"]

    def call(self, op: str, *args: Any) -> Any:
        if self.dead:
            raise RuntimeError(self.dead)
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, "args": list(args)}) + "\n").encode())
        self.proc.stdin.flush()
        return self._answer(self.timeout, op)

    def log_tail(self, limit: int = 300) -> str:
        try:
            return self.log.read_text(errors="replace").strip()[-limit:].replace("\n", " | ")
        except OSError:
            return ""

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        if self.dead is None and self.proc.poll() is None:
            try:
                self.call("quit")
            except Exception:
                self._kill()
        if self.proc.poll() is None:
            self._kill()


# --------------------------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace, results: Results, jupyter: JupyterProcess):
        self.args = args
        self.results = results
        self.jupyter = jupyter
        self.rng = random.Random(args.seed)
        self.loop = asyncio.new_event_loop()  # for AsyncSandbox, on the main thread
        import sandlot

        self.sandlot = sandlot
        self.sb: Any = None  # one sync and one async sandbox, live for the whole run
        self.asb: Any = None

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def arun(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def jupyter_row(self, section: str, subject: str, unit: str = "ms") -> Row:
        row = self.results.add(Row(section, subject, "jupyter", unit))
        if self.jupyter.dead:
            row.failed, row.note = True, f"unavailable: {self.jupyter.dead}"
        return row

    def jupyter_sample(self, row: Row, op: str, *args: Any, scale: float = 1000) -> Any:
        """One call to the worker; on failure the row says why and later calls are skipped."""
        if row.failed:
            return None
        try:
            value = self.jupyter.call(op, *args)
        except RuntimeError as exc:
            row.failed = True
            row.note = (f"failed after {row.n} samples: " if row.n else "failed: ") + str(exc)
            return None
        if scale:
            row.samples.extend(v * scale for v in (value if isinstance(value, list) else [value]))
        return value

    def start(self) -> None:
        S = self.sandlot
        # The manager's first-use work (gc of old state, agent staging) stays out of timings.
        warm_up = S.Sandbox.create()
        warm_up.run_code("1")
        self.results.notes.append(
            f"sandlot provider: {warm_up.provider} "
            f"({'isolated' if warm_up.isolated else 'NOT isolated'}); a fresh temporary"
            " SANDLOT_HOME; one warm-up sandbox before timing. Jupyter runs without isolation."
        )
        warm_up.kill()
        self.sb = S.Sandbox.create(timeout=3600)
        self.asb = self.arun(S.AsyncSandbox.create(timeout=3600))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.sb is not None:
                self.sb.kill()
        with contextlib.suppress(Exception):
            if self.asb is not None:
                self.arun(self.asb.kill())

    def interleave(self, subjects: list[tuple[Row, Callable[[], None]]], rounds: int) -> None:
        for _ in range(rounds):
            order = list(subjects)
            self.rng.shuffle(order)
            for _row, fn in order:
                fn()

    # -- 1. warm round trip -------------------------------------------------------------------

    def warm(self) -> None:
        a, R, sb, asb = self.args, self.results, self.sb, self.asb
        self.log(f"warm round trip: {a.warm_iters} rounds")
        sync = R.add(Row("warm", 'sandlot: sb.run_code("x += 1")', "sandlot", "ms"))
        asyn = R.add(Row("warm", 'sandlot async: await sb.run_code("x += 1")', "sandlot", "ms"))
        jup = self.jupyter_row(
            "warm", "Jupyter: execute `x += 1`, wait for idle + execute_reply", "ms"
        )
        for e in (sb.run_code("x = 0"), self.arun(asb.run_code("x = 0"))):
            assert e.error is None, e.error
        self.jupyter_sample(jup, "warm", 1, scale=0)  # starts the kernel, sets x = 0

        def sync_once(record: bool = True) -> None:
            t = now()
            e = sb.run_code("x += 1")
            if record:
                sync.samples.append((now() - t) * 1000)
            assert e.error is None, e.error

        async def async_cell() -> Any:
            t = now()
            e = await asb.run_code("x += 1")
            return now() - t, e

        def async_once(record: bool = True) -> None:
            elapsed, e = self.arun(async_cell())
            if record:
                asyn.samples.append(elapsed * 1000)
            assert e.error is None, e.error

        warmup = 30
        self.interleave(
            [
                (sync, lambda: sync_once(False)),
                (asyn, lambda: async_once(False)),
                (jup, lambda: self.jupyter_sample(jup, "warm", 1, scale=0)),
            ],
            warmup,
        )
        self.interleave(
            [
                (sync, sync_once),
                (asyn, async_once),
                (jup, lambda: self.jupyter_sample(jup, "warm", 1)),
            ],
            a.warm_iters,
        )
        # Every subject ran the cell the same number of times: x proves the state was kept.
        expected = warmup + a.warm_iters  # x = 0, then each round adds 1
        x = sb.run_code("x").main_result
        if x is None or x.text != str(expected):
            R.notes.append(f"warm: sandlot's x is {x and x.text}, expected {expected}")
        for row in (sync, asyn):
            compare(row, jup, a.warm_target)

    # -- 2. new context ready to run ----------------------------------------------------------

    def context(self) -> None:
        a, R, sb, asb = self.args, self.results, self.sb, self.asb
        self.log(f"new context ready to run: {a.context_iters} rounds")
        sync = R.add(
            Row(
                "context",
                'sandlot: create_code_context() + run_code("pass", context=ctx)',
                "sandlot",
                "ms",
            )
        )
        asyn = R.add(
            Row(
                "context",
                "sandlot async: await create_code_context() + await run_code(...)",
                "sandlot",
                "ms",
            )
        )
        create = R.add(Row("context", "sandlot: of which create_code_context()", "info", "ms"))
        first = R.add(Row("context", 'sandlot: of which the first run_code("pass")', "info", "ms"))
        jup = self.jupyter_row(
            "context",
            "Jupyter: start_kernel + start_channels + wait_for_ready + first `pass`",
            "ms",
        )

        def sync_once() -> None:
            t0 = now()
            ctx = sb.create_code_context()
            t1 = now()
            e = sb.run_code("pass", context=ctx)
            t2 = now()
            sb.remove_code_context(ctx)
            assert e.error is None, e.error
            sync.samples.append((t2 - t0) * 1000)
            create.samples.append((t1 - t0) * 1000)
            first.samples.append((t2 - t1) * 1000)

        async def async_cell() -> float:
            t = now()
            ctx = await asb.create_code_context()
            e = await asb.run_code("pass", context=ctx)
            elapsed = now() - t
            await asb.remove_code_context(ctx)
            assert e.error is None, e.error
            return elapsed

        def async_once() -> None:
            asyn.samples.append(self.arun(async_cell()) * 1000)

        subjects = [
            (sync, sync_once),
            (asyn, async_once),
            (jup, lambda: self.jupyter_sample(jup, "new_kernel")),
        ]
        self.interleave(subjects, 1)  # warm-up round: page cache, imports in the kernel
        for row in (sync, asyn, create, first, jup):
            row.samples.clear()
        self.interleave(subjects, a.context_iters)
        for row in (sync, asyn):
            compare(row, jup, a.context_target)

    # -- 3. cold sandbox ----------------------------------------------------------------------

    def cold(self) -> None:
        a, R, S = self.args, self.results, self.sandlot
        self.log(f"cold sandbox: {a.cold_iters} rounds")
        row = R.add(Row("cold", 'sandlot: Sandbox.create() + run_code("1") + kill()', "info", "ms"))
        for _ in range(a.cold_iters):
            t = now()
            box = S.Sandbox.create()
            e = box.run_code("1")
            box.kill()
            row.samples.append((now() - t) * 1000)
            assert e.main_result is not None and e.main_result.text == "1", e
        ctx = next((r for r in R.rows if r.section == "context" and r.kind == "jupyter"), None)
        if ctx is not None and ctx.samples:
            compare(row, ctx, None)
            row.note = "ratio: to the Jupyter new-kernel row above"

    # -- 4. streaming -------------------------------------------------------------------------

    def stream(self) -> None:
        a, R, sb = self.args, self.results, self.sb
        size = a.stream_mib * MiB
        cap = a.stream_cap_mib * MiB
        code = STREAM_CODE.format(n=size)
        self.log(f"streaming {a.stream_mib} MiB: {a.stream_runs} runs each")
        sl = R.add(
            Row(
                "stream",
                f"sandlot: run_code(write {a.stream_mib} MiB, on_stdout=count, "
                f"max_output_bytes={a.stream_cap_mib} MiB)",
                "sandlot",
                "MiB/s",
                higher_is_better=True,
            )
        )
        jup = self.jupyter_row(
            "stream", f"Jupyter: the same cell, {a.stream_mib} MiB as iopub stream messages"
        )
        jup.unit, jup.higher_is_better = "MiB/s", True

        def sandlot_once() -> None:
            got = 0

            def count(text: str) -> None:
                nonlocal got
                got += len(text)

            t = now()
            e = sb.run_code(code, on_stdout=count, max_output_bytes=cap, timeout=120)
            elapsed = now() - t
            assert e.error is None and not e.cut, (e.error, e.cut)
            assert got == size, f"received {got} of {size} bytes"
            sl.samples.append(size / MiB / elapsed)

        def jupyter_once() -> None:
            value = self.jupyter_sample(jup, "stream", size, scale=0)
            if value is not None:
                jup.samples.append(size / MiB / value[0])

        self.interleave([(sl, sandlot_once), (jup, jupyter_once)], a.stream_runs)
        compare(sl, jup, None)
        if a.stream_cap_probe:
            self.stream_cap_probe(code, size)

    def stream_cap_probe(self, code: str, size: int) -> None:
        """The same cell with a cap below the output (64 MiB keeps a 32 MiB head and tail, so
        50 MiB is cut), once, in a throwaway sandbox: is the cut output delivered?"""
        R, S = self.results, self.sandlot
        cap = self.args.stream_probe_cap_mib * MiB
        row = R.add(
            Row(
                "stream",
                f"sandlot probe: the same cell with max_output_bytes={cap // MiB} MiB"
                + (" (the output is cut)" if size > cap // 2 else ""),
                "info",
                "MiB/s",
                higher_is_better=True,
            )
        )

        async def probe() -> None:
            box = await S.AsyncSandbox.create()
            try:
                t = now()
                e = await asyncio.wait_for(
                    box.run_code(code, max_output_bytes=cap, timeout=60), timeout=90
                )
                row.samples.append(size / MiB / (now() - t))
                row.note = f"ok; cut {e.cut}"
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(box.kill(), timeout=30)

        try:
            self.arun(probe())
        except TimeoutError:
            row.failed, row.note = True, "hung: no answer within 90 s (timeout=60 did not fire)"
        except Exception as exc:
            row.failed, row.note = True, f"failed: {type(exc).__name__}: {exc}"
        if row.failed:
            R.notes.append(f"stream probe ({cap // MiB} MiB cap): {row.note}")


# --------------------------------------------------------------------------------------------
# output


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return f"{value:.0f}"


def fmt_ratio(row: Row) -> str:
    if row.ratio50 is None:
        return "-"
    r90 = f" / {row.ratio90:.3f}x" if row.ratio90 is not None else ""
    inverse = f" (1/{1 / row.ratio50:.1f})" if not row.higher_is_better and row.ratio50 else ""
    return f"{row.ratio50:.3f}x{r90}{inverse}"


def verdict(row: Row) -> str:
    if row.failed and not row.samples:
        return "failed"
    return {True: "PASS", False: "FAIL", None: ""}[row.ok]


HEADERS = [
    "section",
    "subject",
    "unit",
    "p50",
    "p90",
    "p99",
    "n",
    "vs Jupyter (p50 / p90)",
    "target",
    "verdict",
    "note",
]


def table_cells(row: Row) -> list[str]:
    return [
        row.section,
        row.subject,
        row.unit,
        fmt_value(row.p(50), row.unit),
        fmt_value(row.p(90), row.unit),
        fmt_value(row.p(99), row.unit),
        str(row.n) if row.n else "-",
        fmt_ratio(row),
        row.target,
        verdict(row),
        row.note,
    ]


def print_table(results: Results) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for row in results.rows:
            print(" | ".join(table_cells(row)))
        return
    table = Table(title="sandlot code contexts vs Jupyter")
    for h in HEADERS:
        table.add_column(
            h, overflow="fold", justify="right" if h in ("p50", "p90", "p99", "n") else "left"
        )
    last = None
    for row in results.rows:
        if last is not None and row.section != last:
            table.add_section()
        last = row.section
        cells = table_cells(row)
        cells[9] = {
            "PASS": "[green]PASS[/]",
            "FAIL": "[red]FAIL[/]",
            "failed": "[red]failed[/]",
        }.get(cells[9], cells[9])
        table.add_row(*cells)
    Console(width=max(200, shutil.get_terminal_size().columns)).print(table)


def write_results(results: Results, meta: dict[str, Any], outdir: Path) -> tuple[Path, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"code-{meta['date']}"
    md_path, json_path = outdir / f"{stem}.md", outdir / f"{stem}.json"
    lines = [
        f"# sandlot code contexts vs Jupyter, {meta['date']}",
        "",
        f"- sandlot: `{meta['commit']}`",
        f"- machine: {meta['machine']}",
        f"- versions: {meta['versions']}",
        f"- command: `{meta['command']}` ({meta['duration_s']:.0f} s)",
        f"- load average (1 min) at start / end: {meta['load'][0]:.2f} / {meta['load'][1]:.2f}",
        "- p50 / p90 / p99 over n samples; ratios are this row's p50 / p90 over Jupyter's, both"
        " from this run (below 1 is faster, or for MiB/s slower). Subjects were interleaved:"
        " each round runs every subject once, in a shuffled order.",
        "",
        "## Targets",
        "",
        "| section | subject | p50 | p90 | vs Jupyter (p50 / p90) | target | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results.rows:
        if row.ok is not None:
            c = table_cells(row)
            cells = [c[0], c[1], f"{c[3]} {row.unit}", f"{c[4]} {row.unit}", c[7], c[8]]
            cells.append(f"**{c[9]}**")
            lines.append("| " + " | ".join(md_escape(x) for x in cells) + " |")
    lines += [
        "",
        "## All measurements",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---" for _ in HEADERS) + "|",
    ]
    lines += ["| " + " | ".join(md_escape(c) for c in table_cells(r)) + " |" for r in results.rows]
    if results.notes:
        lines += ["", "## Notes", ""] + [f"- {md_escape(n)}" for n in results.notes]
    lines += [
        "",
        "## How to run",
        "",
        "```",
        "pip install -e '.[bench]'                  # jupyter_client, ipykernel",
        "python benchmarks/bench_code.py",
        "python benchmarks/bench_code.py --help",
        "```",
        "",
    ]
    md_path.write_text("\n".join(lines))
    rows = ",\n  ".join(json.dumps(r.summary(), default=str) for r in results.rows)
    json_path.write_text(
        f'{{"meta": {json.dumps(meta, default=str)},\n "rows": [\n  {rows}\n ],\n'
        f' "notes": {json.dumps(results.notes)}}}\n'
    )
    return md_path, json_path


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--warm-iters", type=int, default=300, help="warm round trips (default 300)")
    p.add_argument("--context-iters", type=int, default=20, help="new contexts (default 20)")
    p.add_argument("--cold-iters", type=int, default=20, help="cold sandboxes (default 20)")
    p.add_argument("--stream-mib", type=int, default=50, help="MiB one cell prints (default 50)")
    p.add_argument("--stream-runs", type=int, default=5, help="runs per subject (default 5)")
    p.add_argument(
        "--stream-cap-mib",
        type=int,
        default=128,
        help="max_output_bytes for the measured stream, in MiB: large enough that nothing is"
        " cut (default 128; half of it is the head kept)",
    )
    p.add_argument(
        "--stream-probe-cap-mib",
        type=int,
        default=64,
        help="cap of the one-off probe that cuts the output (default 64)",
    )
    p.add_argument(
        "--no-stream-cap-probe",
        dest="stream_cap_probe",
        action="store_false",
        help="skip the one run with a cap below the output",
    )
    p.add_argument("--warm-target", type=float, default=0.2, help="p50 ratio limit (1/5)")
    p.add_argument("--context-target", type=float, default=0.1, help="p50 ratio limit (1/10)")
    p.add_argument(
        "--timeout",
        type=float,
        default=180,
        help="seconds a Jupyter operation may take before its worker is killed (default 180)",
    )
    p.add_argument(
        "--max-load",
        type=float,
        default=0,
        help="before each section wait until the 1-min load average is at most this (0: don't)",
    )
    p.add_argument("--max-wait", type=float, default=300, help="longest wait for --max-load (s)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--seed", type=int, default=1, help="seed for the interleaving order")
    p.add_argument("--quick", action="store_true", help="small counts: a smoke test, not a result")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.warm_iters, args.context_iters, args.cold_iters = 50, 4, 4
        args.stream_mib, args.stream_runs = 8, 2
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for s in args.sections:
        if s not in SECTIONS:
            p.error(f"unknown section {s!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main()
    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()
    home = Path(tempfile.mkdtemp(prefix="slb-code-", dir="/tmp"))
    os.environ["SANDLOT_HOME"] = str(home)
    import atexit

    atexit.register(shutil.rmtree, home, ignore_errors=True)  # runs after sandlot's own hook
    results = Results()
    jupyter = JupyterProcess(args.timeout, home / "jupyter-worker.log")
    bench = Bench(args, results, jupyter)
    try:
        bench.start()
        for section in args.sections:
            gc.collect()
            if args.max_load:
                waited = wait_for_quiet(args.max_load, args.max_wait)
                if waited is not None:
                    results.notes.append(f"before {section}: waited {waited:.0f} s for the load")
            l0 = os.getloadavg()[0]
            getattr(bench, section)()
            results.load[section] = [l0, os.getloadavg()[0]]
    finally:
        bench.stop()
        jupyter.close()
    if jupyter.dead:
        results.notes.append(f"Jupyter worker: {jupyter.dead}; log: {jupyter.log_tail()}")
    for section, (l0, l1) in results.load.items():
        results.notes.append(f"load average during {section}: {l0:.2f} -> {l1:.2f}")
    versions = {
        "python": platform.python_version(),
        "sandlot": version_of("sandlot"),
        "bwrap": tool_version(["bwrap", "--version"]),
        **jupyter.info,
    }
    meta = {
        "date": datetime.date.today().isoformat(),
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}",
        "versions": versions,
        "command": "python benchmarks/bench_code.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "duration_s": now() - started,
        "load": [load0, os.getloadavg()[0]],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    print_table(results)
    for note in results.notes:
        print(f"note: {note}")
    if not args.no_write:
        md, js = write_results(results, meta, args.out)
        print(f"wrote {md.relative_to(REPO) if md.is_relative_to(REPO) else md} and {js.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
