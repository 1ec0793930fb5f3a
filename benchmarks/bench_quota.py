#!/usr/bin/env python
"""The /workspace size cap (issue 15, hole 6): what it costs a bwrap cold start.

Sections:

  cold  create + commands.run(["true"]) + kill through the sync SDK, embedded, bwrap, with
        and without the cap, next to the floor (a bare ``bwrap ... python3 -I -S -c pass``).
        Subjects, interleaved (every round runs each once, in a shuffled order, after three
        unrecorded warm-up rounds):
          floor             the bare bwrap, spawned with subprocess;
          no cap            sandlot with ``quota.cap`` switched off in this process;
          default cap       sandlot as shipped: a 10 GiB workspace (a spare moved into place);
          disk_mb=64        an explicit size (a spare of its own size).
        Rows for information: the time ``quota.cap`` took inside the capped creates (the
        critical path), a spare made on the spot (a copy of the size's template, a loop
        device, a mount: what a create pays when no spare is ready, and what the worker
        does in the background), and a template (mkfs, once per size and state folder).
        Target (issue 15): sandlot's p50 at most 1.5x the floor's, with the cap.

    python benchmarks/bench_quota.py --max-load 1.5   # about a minute, as root
    python benchmarks/bench_quota.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/quota-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections.abc import Callable
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
    fresh_sandlot_home,
    git_commit,
    new_parser,
    now,
    percentile_columns,
    report,
    run_meta,
    shuffled_rounds,
)

SECTIONS = ("cold",)
LIMIT = 1.5
FLOOR = [
    "bwrap",
    "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
    "--die-with-parent", "--new-session",
    "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64",
    "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
    "/usr/bin/python3", "-I", "-S", "-c", "pass",
]  # fmt: skip


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 99)

    section: str
    subject: str
    unit: str  # ms
    samples: list[float] = field(default_factory=list)
    vs_floor: float | None = None  # p50 / the floor's p50
    vs_plain: float | None = None  # p50 / the uncapped create's p50
    note: str = ""
    target: str = ""
    ok: bool | None = None
    failed: bool = False


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace, results: Results) -> None:
        super().__init__(args, results)
        from sandlot.providers import quota

        self.quota = quota
        self.capping = True
        self.cap_ms: list[float] = []
        self.misses = 0  # caps that found no spare ready and made one on the spot
        real, real_make = quota.cap, quota._make

        def make(home: Path, size: int) -> Any:
            if threading.current_thread().name != "sandlot-quota":
                self.misses += 1
            return real_make(home, size)

        quota._make = make

        async def cap(workspace: Path, disk_mb: int | None, home: Path) -> int | None:
            if not self.capping:
                return None
            t = now()
            try:
                return await real(workspace, disk_mb, home)
            finally:
                self.cap_ms.append((now() - t) * 1000)

        quota.cap = cap  # bwrap looks it up at each create

    def _sandlot(self, capping: bool, **spec: Any) -> Callable[[], float]:
        def sample() -> float:
            self.capping = capping
            t = now()
            sb = self.sandlot.Sandbox.create(**spec)
            r = sb.commands.run(["true"])
            sb.kill()
            took = now() - t
            if r.exit_code != 0:
                raise RuntimeError(f"`true` exited {r.exit_code}: {r.stderr}")
            return took

        return sample

    def cold(self) -> None:
        reason = self.quota.unavailable_reason()
        if reason is not None:
            self.results.notes.append(f"no cap measured: {reason}")
            return
        R = self.results
        floor = R.add(Row("cold", "floor: bare bwrap, python3 -I -S -c pass", "ms"))
        plain = R.add(Row("cold", "sandlot, no cap: create + run + kill", "ms"))
        default = R.add(Row("cold", "sandlot, default cap (10 GiB)", "ms"))
        small = R.add(Row("cold", "sandlot, disk_mb=64", "ms"))

        def bare() -> float:
            t = now()
            subprocess.run(FLOOR, check=True)
            return now() - t

        subjects: list[tuple[Row, Callable[[], float]]] = [
            (floor, bare),
            (plain, self._sandlot(False)),
            (default, self._sandlot(True)),
            (small, self._sandlot(True, resources={"disk_mb": 64})),
        ]
        for _ in range(3):  # warm-up: the manager's first create runs gc; spares get made
            for _row, fn in subjects:
                fn()
        self.cap_ms.clear()
        self.misses = 0
        self.log(f"cold: {self.args.rounds} rounds of {len(subjects)}")
        for row, fn in shuffled_rounds(self.rng, subjects, self.args.rounds):
            row.samples.append(fn() * 1000)
        caps = R.add(Row("cold", "quota.cap() inside the capped creates", "ms"))
        caps.samples = self.cap_ms
        caps.note = f"{self.misses} of {caps.n} found no spare ready"
        for row in self._spare_from_nothing():
            R.add(row)
        for row in (plain, default, small):
            if floor.p50 and row.p50 is not None:
                row.vs_floor = row.p50 / floor.p50
                row.target = f"p50 <= {LIMIT:g}x floor"
                row.ok = row.vs_floor <= LIMIT
            if row is not plain and plain.p50 and row.p50 is not None:
                row.vs_plain = row.p50 / plain.p50

    def _spare_from_nothing(self) -> list[Row]:
        """A spare made on the spot from the size's template (what a create pays when none
        is ready), and the template itself (mkfs: once per size and state folder)."""
        spare_row = Row("cold", "a spare made on the spot (copy + loop device + mount)", "ms")
        template_row = Row("cold", "a size's template (mkfs, once per size)", "ms")
        home = Path(os.environ["SANDLOT_HOME"])
        q = self.quota
        for _ in range(self.args.rounds):
            t = now()
            spare = q._make(home, q.DEFAULT_MB)
            spare_row.samples.append((now() - t) * 1000)
            q._discard(spare)
            t = now()
            q._template(home, 4096).unlink()
            template_row.samples.append((now() - t) * 1000)
        spare_row.note = "10 GiB; the worker's job (a create's only when no spare is ready)"
        template_row.note = "4 GiB image"
        return [spare_row, template_row]


# --------------------------------------------------------------------------------------------
# output


def fmt_value(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.2f}"


def _versus(row: Row) -> str:
    cells = [f"{r:.2f}x" if r is not None else "-" for r in (row.vs_floor, row.vs_plain)]
    return "" if cells == ["-", "-"] else " / ".join(cells)


HEADERS, table_cells = percentile_columns("vs floor / vs no cap", _versus, fmt_value)

LAYOUT = Layout(
    title="sandlot /workspace cap: cold start",
    stem="quota",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p99", "vs floor / vs no cap", "target", "verdict"],
    targets_heading="Targets",
    reading="p50 / p90 / p99 of the wall time of create + run(['true']) + kill through the"
    " sync SDK, embedded, bwrap, as root; the subjects were interleaved (every round runs each"
    " once, in a shuffled order, after three unrecorded warm-up rounds). vs floor / vs no cap:"
    " the p50s' ratios to the bare bwrap and to sandlot without the cap.",
    how_to_run=[
        "python benchmarks/bench_quota.py --max-load 1.5",
        "python benchmarks/bench_quota.py --help",
    ],
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--rounds", type=int, default=60, help="rounds of cold (default 60)")
    add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 5
    args.sections = choose(p, args.sections, SECTIONS, "section")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fresh_sandlot_home("slb-quota-")
    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()
    results = Results()
    Bench(args, results).run_sections()
    results.note_load()
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = run_meta("bench_quota.py", argv, started, load0, commit, base_versions(), args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
