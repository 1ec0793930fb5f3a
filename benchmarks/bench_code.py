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
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
    percentile_columns,
    report,
    run_meta,
    serve_worker,
    shuffled_rounds,
    start_kernel,
    stop_kernel,
    version_of,
)

SECTIONS = ("warm", "context", "cold", "stream")
STREAM_CODE = "import sys; sys.stdout.write('x' * {n})"


# --------------------------------------------------------------------------------------------
# rows


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 99)

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

    def _warm_client(self) -> Any:
        if self.live is None:
            self.live = start_kernel(self.KernelManager)
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
        km, kc = start_kernel(self.KernelManager)
        self.execute(kc, "pass")
        elapsed = now() - t
        stop_kernel(km, kc)
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
            stop_kernel(*self.live)
            self.live = None


def worker_main() -> int:
    """Serve Jupyter over stdin/stdout (the driver's side: ``WorkerProcess``)."""

    def start() -> tuple[Jupyter, dict[str, Any]]:
        jupyter = Jupyter()
        return jupyter, jupyter.info()

    return serve_worker(start)


# --------------------------------------------------------------------------------------------
# the benchmark


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace, results: Results, jupyter: WorkerProcess):
        super().__init__(args, results)
        self.jupyter = jupyter
        self.sb: Any = None  # one sync and one async sandbox, live for the whole run
        self.asb: Any = None

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
        for _row, fn in shuffled_rounds(self.rng, subjects, rounds):
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
        """The same cell with a cap below the output (32 MiB keeps a 16 MiB head and tail, so
        18 of the 50 MiB are cut), once, in a throwaway sandbox: is the cut output delivered?"""
        R, S = self.results, self.sandlot
        cap = self.args.stream_probe_cap_mib * MiB
        row = R.add(
            Row(
                "stream",
                f"sandlot probe: the same cell with max_output_bytes={cap // MiB} MiB"
                + (" (the output is cut)" if size > cap else ""),
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


HEADERS, table_cells = percentile_columns("vs Jupyter (p50 / p90)", fmt_ratio, fmt_value)


LAYOUT = Layout(
    title="sandlot code contexts vs Jupyter",
    stem="code",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p90", "vs Jupyter (p50 / p90)", "target", "verdict"],
    targets_heading="Targets",
    reading="p50 / p90 / p99 over n samples; ratios are this row's p50 / p90 over Jupyter's,"
    " both from this run (below 1 is faster, or for MiB/s slower). Subjects were interleaved:"
    " each round runs every subject once, in a shuffled order.",
    how_to_run=[
        "pip install -e '.[bench]'                  # jupyter_client, ipykernel",
        "python benchmarks/bench_code.py",
        "python benchmarks/bench_code.py --help",
    ],
)


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
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
        default=32,
        help="cap of the one-off probe that cuts the output (default 32)",
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
    add_run_options(p)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.warm_iters, args.context_iters, args.cold_iters = 50, 4, 4
        args.stream_mib, args.stream_runs = 8, 2
    args.sections = choose(p, args.sections, SECTIONS, "section")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main()
    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()
    home = fresh_sandlot_home("slb-code-")
    results = Results()
    jupyter = WorkerProcess(
        [sys.executable, str(Path(__file__).resolve()), "--worker"],
        args.timeout,
        home / "jupyter-worker.log",
    )
    bench = Bench(args, results, jupyter)
    try:
        bench.start()
        bench.run_sections()
    finally:
        bench.stop()
        jupyter.close()
    if jupyter.dead:
        results.notes.append(f"Jupyter worker: {jupyter.dead}; log: {jupyter.log_tail()}")
    results.note_load()
    versions = {**base_versions(), **jupyter.info}
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = run_meta("bench_code.py", argv, started, load0, commit, versions, args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
