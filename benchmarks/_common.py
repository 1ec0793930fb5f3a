"""What the benchmark scripts share: statistics, rows and results, the machine's description,
interleaved rounds, worker processes, the section loop, and the table and results files.

Not a package: the scripts are run as ``python benchmarks/bench_X.py``, which puts this folder
on ``sys.path``, and import it as ``_common``. Each script keeps its own measurements, its row
fields and how its cells are formatted (a ``Layout``).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime
import gc
import hashlib
import json
import math
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
MiB = 1024 * 1024

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# statistics, rows and results


def now() -> float:
    return time.perf_counter()


def percentile(samples: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(samples)
    if not s:
        return math.nan
    k = (len(s) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Sampled:
    """For a script's row dataclass (which has ``samples``): n, percentiles and the JSON
    summary, with the percentiles named in ``QUANTILES``."""

    samples: list[float]
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 99)

    @property
    def n(self) -> int:
        return len(self.samples)

    def p(self, q: float) -> float | None:
        return percentile(self.samples, q) if self.samples else None

    @property
    def p50(self) -> float | None:
        return self.p(50)

    @property
    def p99(self) -> float | None:
        return self.p(99)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]
        data["samples"] = [round(x, 4) for x in self.samples]
        data["n"] = self.n
        data.update({f"p{q}": self.p(q) for q in self.QUANTILES})
        if self.samples:
            data.update(
                mean=sum(self.samples) / self.n, min=min(self.samples), max=max(self.samples)
            )
        return data


class Results:
    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.notes: list[str] = []
        self.load: dict[str, list[float]] = {}

    def add(self, row: T) -> T:
        self.rows.append(row)
        return row

    def find(self, section: str, subject: str) -> Any:
        for row in self.rows:
            if row.section == section and row.subject == subject:
                return row
        return None

    def note_load(self) -> None:
        for section, (l0, l1) in self.load.items():
            self.notes.append(f"load average during {section}: {l0:.2f} -> {l1:.2f}")


def shuffled_rounds(rng: random.Random, items: Sequence[T], rounds: int) -> Iterator[T]:
    """Every item once a round, in a new shuffled order each round: drift in the machine's load
    hits all the subjects alike."""
    for _ in range(rounds):
        order = list(items)
        rng.shuffle(order)
        yield from order


Op = Callable[[], float]  # one timed operation: its seconds


def timed(call: Callable[[], object]) -> Op:
    def op() -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    return op


def interleaved(ops: dict[str, Op], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Every subject every round, in turn forwards then backwards (A B, B A, ...): none always
    goes first, and drift in the machine's load hits them alike."""
    for _ in range(warmup):
        for op in ops.values():
            op()
    samples: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            samples[name].append(ops[name]())
    return samples


def pair_table(
    found: dict[str, dict[str, list[float]]],
    subjects: tuple[str, str],
    targets: dict[str, float],
) -> list[str]:
    """Markdown: each measure's subjects (percentiles in ms), then the first subject against
    the second (p50 and p90 differences, the ratio) with its target, ``targets[measure]`` ms
    above the second at p50 (a measure without one is reported only)."""
    lines = [
        "| measure | subject | n | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for measure, rows in found.items():
        for name, samples in rows.items():
            ms = [s * 1000 for s in samples]
            p50, p90, p99 = (percentile(ms, q) for q in (50, 90, 99))
            lines.append(f"| {measure} | {name} | {len(ms)} | {p50:.3f} | {p90:.3f} | {p99:.3f} |")
    a, b = subjects
    lines += [
        "",
        f"| measure | {a} - {b} p50 ms | {a} - {b} p90 ms | {a} / {b} p50 | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for measure, rows in found.items():
        first, second = ([s * 1000 for s in rows[name]] for name in subjects)
        d50 = percentile(first, 50) - percentile(second, 50)
        d90 = percentile(first, 90) - percentile(second, 90)
        ratio = percentile(first, 50) / percentile(second, 50)
        target = targets.get(measure)
        goal, verdict = (
            (f"<= +{target:g} ms", "met" if d50 <= target else "MISSED")
            if target is not None
            else ("reported", "-")
        )
        lines.append(f"| {measure} | {d50:+.3f} | {d90:+.3f} | {ratio:.2f}x | {goal} | {verdict} |")
    return lines


# --------------------------------------------------------------------------------------------
# the machine and the code measured


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def tool_version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if out.returncode == 0 and text else None


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit(repo: Path = REPO) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "sandlot"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not dirty:
            return out
        diff = subprocess.run(
            ["git", "-C", str(REPO), "diff", "HEAD", "--", "sandlot"], capture_output=True
        ).stdout
        files = len(dirty.splitlines())
        digest = hashlib.sha256(diff).hexdigest()[:10]
        return f"{out} (+ uncommitted changes in {files} files under sandlot/, diff {digest})"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def base_versions() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "sandlot": version_of("sandlot"),
        "bwrap": tool_version(["bwrap", "--version"]),
    }


def wait_for_quiet(max_load: float, max_wait: float) -> float | None:
    """Wait until the 1-minute load average is at most max_load (other work on the machine
    skews every number); give up after max_wait seconds. The seconds waited, None if none."""
    start = now()
    if os.getloadavg()[0] <= max_load:
        return None
    print(f"waiting for load <= {max_load:g} (now {os.getloadavg()[0]:.2f})", file=sys.stderr)
    while os.getloadavg()[0] > max_load and now() - start < max_wait:
        time.sleep(5)
    return now() - start


# --------------------------------------------------------------------------------------------
# Jupyter kernels (a peer of both scripts)


def start_kernel(manager: Any) -> tuple[Any, Any]:
    """A python3 kernel from a jupyter_client ``KernelManager`` class, channels up and ready."""
    km = manager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def stop_kernel(km: Any, kc: Any) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=True)


# --------------------------------------------------------------------------------------------
# worker processes: the script run again with --worker, one JSON line per request and answer


def serve_worker(
    start: Callable[[], tuple[Any, Any]],
    unavailable: type[Exception] | tuple[type[Exception], ...] = (),
) -> int:
    """Inside the worker: ``start()`` gives the object whose methods are the operations and
    the first answer; then serve requests from stdin until "quit" (then its ``close()``).
    An ``unavailable`` exception from start() is reported by its message alone."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the subject prints goes to the log, not into the protocol
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        answers.write(json.dumps(obj) + "\n")

    try:
        subject, hello = start()
    except unavailable as exc:
        send({"ok": False, "unavailable": True, "error": str(exc)})
        return 0
    except Exception as exc:
        traceback.print_exc()
        send({"ok": False, "unavailable": True, "error": f"{type(exc).__name__}: {exc}"})
        return 0
    send({"ok": True, "result": hello})
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        try:
            result = getattr(subject, request["op"])(*request.get("args", []))
            send({"ok": True, "result": result})
        except Exception as exc:
            traceback.print_exc()
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
    with contextlib.suppress(Exception):
        subject.close()
    send({"ok": True, "result": None})
    return 0


class WorkerProcess:
    """The driver's side of a worker. An operation that does not answer within ``timeout``
    seconds (the first, imports included, at least 60) kills the worker, which is then dead:
    ``dead`` says why, and later calls raise ``gone`` at once."""

    gone: type[Exception] = RuntimeError  # raised when the worker hung, died or is dead
    quit_timeout: float | None = None  # None: timeout

    def __init__(self, argv: list[str], timeout: float, log: Path) -> None:
        self.timeout = timeout
        self.log = log
        self.dead: str | None = None
        self.info: dict[str, Any] = {}
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),  # noqa: SIM115 (the child holds it)
            start_new_session=True,
        )
        self._buffer = b""
        try:
            hello = self._receive(max(timeout, 60), "start")  # imports can be slow
        except self.gone:
            return
        if not hello.get("ok"):
            self.dead = hello.get("error", "failed to start")
            self._kill()
        else:
            self.info = hello.get("result") or {}

    def _receive(self, timeout: float, what: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = now() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - now()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._kill()
                self.dead = f"hung: no answer to {what} within {timeout:g} s"
                raise self.gone(self.dead)
            chunk = os.read(fd, 65536)
            if not chunk:
                self._kill()
                self.dead = f"worker died during {what}: {self.log_tail()}"
                raise self.gone(self.dead)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        """The operation's result; RuntimeError if it failed, ``gone`` if the worker is."""
        if self.dead:
            raise self.gone(self.dead)
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, "args": list(args)}) + "\n").encode())
        self.proc.stdin.flush()
        answer = self._receive(timeout or self.timeout, op)
        if not answer.get("ok"):
            raise RuntimeError(answer.get("error", "failed"))
        return answer["result"]

    def log_tail(self, limit: int = 300) -> str:
        try:
            text = self.log.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-limit:].replace("\n", " | ")

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        if self.dead is None and self.proc.poll() is None:
            try:
                self.call("quit", timeout=self.quit_timeout)
            except Exception:
                self._kill()
        if self.proc.poll() is None:
            self._kill()


# --------------------------------------------------------------------------------------------
# running


class BenchBase:
    """A benchmark run in this process: the sections are its methods, named as in --sections."""

    def __init__(self, args: argparse.Namespace, results: Results) -> None:
        self.args = args
        self.results = results
        self.rng = random.Random(args.seed)
        self.loop = asyncio.new_event_loop()  # for AsyncSandbox, on this (the main) thread
        import sandlot

        self.sandlot = sandlot

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def arun(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def run_sections(self) -> None:
        """Each section of --sections in turn, after a gc and (with --max-load) a wait for a
        quiet machine; the load average before and after goes to ``results.load``."""
        args, results = self.args, self.results
        for section in args.sections:
            gc.collect()
            if args.max_load:
                waited = wait_for_quiet(args.max_load, args.max_wait)
                if waited is not None:
                    results.notes.append(f"before {section}: waited {waited:.0f} s for the load")
            l0 = os.getloadavg()[0]
            getattr(self, section)()
            results.load[section] = [l0, os.getloadavg()[0]]


def fresh_sandlot_home(prefix: str) -> Path:
    """A private state folder (no other sandlot user's sandboxes, and easy to find ours) in
    SANDLOT_HOME, removed at exit. Call it before sandlot is imported: this exit hook is then
    registered before sandlot's own, so it runs after that one (LIFO)."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.environ["SANDLOT_HOME"] = str(home)
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def run_meta(
    script: str,
    argv: list[str] | None,
    started: float,
    load0: float,
    commit: str,
    versions: dict[str, Any],
    args: dict[str, Any],
) -> dict[str, Any]:
    """The run's description at its end: the head of the .md and "meta" in the .json."""
    return {
        "date": datetime.date.today().isoformat(),
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}",
        "versions": versions,
        "command": f"python benchmarks/{script} "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "duration_s": now() - started,
        "load": [load0, os.getloadavg()[0]],
        "args": args,
    }


# --------------------------------------------------------------------------------------------
# arguments


def new_parser(doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--max-load, --max-wait, --out, --no-write, --seed, --quick."""
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


def choose(p: argparse.ArgumentParser, text: str, allowed: Iterable[str], what: str) -> list[str]:
    """A comma-separated subset of ``allowed``; an unknown name is a usage error."""
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    for s in chosen:
        if s not in allowed:
            p.error(f"unknown {what} {s!r}")
    return chosen


# --------------------------------------------------------------------------------------------
# output: the terminal table and benchmarks/results/<stem>-<date>.{md,json}


@dataclass
class Layout:
    """How a script shows its rows; the drawing and writing are the same for all."""

    title: str  # of the terminal table, and the .md heading (with the date)
    stem: str  # results files: <stem>-<date>.md and .json
    headers: list[str]
    cells: Callable[[Any], list[str]]  # a row's cells, one per header
    targets: list[str]  # the headers of the .md's targets table (rows with a verdict)
    targets_heading: str
    reading: str  # how to read the numbers, under the run's description in the .md
    how_to_run: list[str]  # the .md's last block
    width: int = 200  # of the terminal table, at least


def is_percentile(header: str) -> bool:
    return header[:1] == "p" and header[1:].isdigit()


VERDICT_STYLE = {
    "PASS": "[green]PASS[/]",
    "FAIL": "[red]FAIL[/]",
    "failed": "[red]failed[/]",
    "skipped": "[yellow]skipped[/]",
}


def print_table(results: Results, layout: Layout) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for row in results.rows:
            print(" | ".join(layout.cells(row)))
        return
    table = Table(title=layout.title)
    for h in layout.headers:
        right = is_percentile(h) or h == "n"
        table.add_column(h, overflow="fold", justify="right" if right else "left")
    at = layout.headers.index("verdict")
    last = None
    for row in results.rows:
        if last is not None and row.section != last:
            table.add_section()
        last = row.section
        cells = layout.cells(row)
        cells[at] = VERDICT_STYLE.get(cells[at], cells[at])
        table.add_row(*cells)
    Console(width=max(layout.width, shutil.get_terminal_size().columns)).print(table)


def verdict(row: Any) -> str:
    """A row's verdict cell: skipped, failed (nothing measured), PASS/FAIL, or empty."""
    if getattr(row, "skipped", False):
        return "skipped"
    if getattr(row, "failed", False) and not row.samples:
        return "failed"
    return {True: "PASS", False: "FAIL", None: ""}[row.ok]


def percentile_columns(
    comparison: str,
    compare: Callable[[Any], str],
    fmt: Callable[[float | None, str], str],
) -> tuple[list[str], Callable[[Any], list[str]]]:
    """Headers and a row-to-cells function for a table of p50 / p90 / p99 rows with one
    comparison column (rows with ``section, subject, unit, p(q), n, target, note``)."""
    headers = ["section", "subject", "unit", "p50", "p90", "p99", "n", comparison]
    headers += ["target", "verdict", "note"]

    def cells(row: Any) -> list[str]:
        return [
            row.section,
            row.subject,
            row.unit,
            fmt(row.p(50), row.unit),
            fmt(row.p(90), row.unit),
            fmt(row.p(99), row.unit),
            str(row.n) if row.n else "-",
            compare(row),
            row.target,
            verdict(row),
            row.note,
        ]

    return headers, cells


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(md_escape(c) for c in cells) + " |"


def md_head(headers: list[str]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]


def write_results(
    results: Results, meta: dict[str, Any], outdir: Path, layout: Layout
) -> tuple[Path, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"{layout.stem}-{meta['date']}"
    md_path, json_path = outdir / f"{stem}.md", outdir / f"{stem}.json"
    lines = [
        f"# {layout.title}, {meta['date']}",
        "",
        f"- sandlot: `{meta['commit']}`",
        f"- machine: {meta['machine']}",
        f"- versions: {meta['versions']}",
        f"- command: `{meta['command']}` ({meta['duration_s']:.0f} s)",
        f"- load average (1 min) at start / end: {meta['load'][0]:.2f} / {meta['load'][1]:.2f}",
        f"- {layout.reading}",
        "",
        f"## {layout.targets_heading}",
        "",
        *md_head(layout.targets),
    ]
    where = [layout.headers.index(h) for h in layout.targets]
    for row in results.rows:
        if row.ok is not None:
            all_cells = layout.cells(row)
            cells = []
            for h, i in zip(layout.targets, where, strict=True):
                cell = all_cells[i]
                if is_percentile(h):
                    cell = f"{cell} {row.unit}"
                elif h == "verdict":
                    cell = f"**{cell}**"
                cells.append(cell)
            lines.append(md_row(cells))
    lines += ["", "## All measurements", "", *md_head(layout.headers)]
    lines += [md_row(layout.cells(row)) for row in results.rows]
    if results.notes:
        lines += ["", "## Notes", ""] + [f"- {md_escape(n)}" for n in results.notes]
    lines += ["", "## How to run", "", "```", *layout.how_to_run, "```", ""]
    md_path.write_text("\n".join(lines))
    # One row per line: readable diffs between runs.
    rows = ",\n  ".join(json.dumps(r.summary(), default=str) for r in results.rows)
    json_path.write_text(
        f'{{"meta": {json.dumps(meta, default=str)},\n "rows": [\n  {rows}\n ],\n'
        f' "notes": {json.dumps(results.notes)}}}\n'
    )
    return md_path, json_path


def report(
    results: Results, meta: dict[str, Any], args: argparse.Namespace, layout: Layout
) -> None:
    """The table and the notes on the terminal; the results files unless --no-write."""
    print_table(results, layout)
    for note in results.notes:
        print(f"note: {note}")
    if not args.no_write:
        md, js = write_results(results, meta, args.out, layout)
        print(f"wrote {md.relative_to(REPO) if md.is_relative_to(REPO) else md} and {js.name}")
