#!/usr/bin/env python
"""Warm pools: ``sandlot.Sandbox.create`` from a warm pool vs a cold create, and the refill.

Sections:

  create  the sync SDK, embedded (this process's manager), bwrap, the default resources.
          Subjects, interleaved (every round runs each once, in a shuffled order, after one
          unrecorded warm-up round), the wall time of ``Sandbox.create(timeout=60, env=...)``:
            warm (made here)    a pool this process filled (its manager holds the members'
                                channels: the take is a claim and a ``deadline`` call);
            warm (made by CLI)  a pool ``sandlot pool set`` filled in a process of its own
                                (nobody holds them: the take also connects to the agent);
            cold                the same spec but for one variable no pool serves.
          Every sandbox is killed after its sample (not timed), and the pool is back to its
          size before the next sample: each warm sample is a hit. The CLI pool is topped up
          by running ``sandlot pool set`` again (this process's refill is held back for it, or
          the members would be made here).
          Target (issue 6): warm p50 at most 10 ms.
  refill  after each take from the "made here" pool: the time until the pool has its size
          again (the background refill after the take; polled every millisecond from another
          store connection). For information.

    python benchmarks/bench_pool.py --max-load 1.5   # about a minute
    python benchmarks/bench_pool.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/pool-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
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
    fresh_sandlot_home,
    git_commit,
    new_parser,
    now,
    percentile_columns,
    report,
    run_meta,
    shuffled_rounds,
)

SECTIONS = ("create", "refill")
SIZE = 3
TARGET_MS = 10.0
WARM_HERE, WARM_CLI, COLD = "warm (made here)", "warm (made by CLI)", "cold"
ENV = {WARM_HERE: "here", WARM_CLI: "cli", COLD: "none"}  # POOL=...: one spec per subject


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 95, 99)

    section: str
    subject: str
    unit: str  # ms
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None  # p50 / the cold create's p50
    misses: int = 0  # warm samples that were not served by the pool
    note: str = ""
    target: str = ""
    ok: bool | None = None
    failed: bool = False


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace, results: Results) -> None:
        super().__init__(args, results)
        from sandlot.manager import Manager
        from sandlot.sdk.sync import _portal
        from sandlot.store import Store, default_home

        self.portal = _portal
        self.Manager = Manager
        self.store = Store(default_home())  # this thread's own connection, for polling
        self.hold_refill = False
        self.refill_ms: list[float] = []
        self.measured = False

    # -- helpers -----------------------------------------------------------------------------

    def _on_manager(self, action: Any) -> Any:
        async def go() -> Any:
            return await action(self.Manager.current())

        return self.portal.call(go())

    def _spec(self, subject: str) -> Any:
        from sandlot.models import SandboxSpec

        return SandboxSpec(env={"POOL": ENV[subject]})

    def _ready(self, subject: str) -> int:
        from sandlot.manager.manager import default_provider
        from sandlot.manager.pool import pool_key

        key = pool_key(default_provider(self._spec(subject)))
        return sum(1 for m in self.store.pool_members(key) if m[3])

    def _cli_top_up(self) -> None:
        argv = [sys.executable, "-m", "sandlot.cli", "pool", "set", "--size", str(SIZE)]
        subprocess.run(
            [*argv, "--env", f"POOL={ENV[WARM_CLI]}"],
            check=True,
            capture_output=True,
        )

    def _setup(self) -> None:
        manager_pools = self._on_manager(_pools)
        original = manager_pools.refill

        def refill(key: str, delay: float = 0.0) -> None:
            if not self.hold_refill:
                original(key, delay)

        manager_pools.refill = refill  # the CLI pool is topped up by the CLI (see --help)
        self._on_manager(lambda m: m.pools.set(self._spec(WARM_HERE), SIZE))
        self._cli_top_up()

    def _sample(self, subject: str, rows: dict[str, Row]) -> None:
        self.hold_refill = subject == WARM_CLI
        start = now()
        sb = self.sandlot.Sandbox.create(timeout=60, env={"POOL": ENV[subject]})
        took = (now() - start) * 1000
        pooled = bool(sb.info.handle.get("pooled"))
        taken_at = now()
        if subject == WARM_HERE:
            while self._ready(subject) < SIZE and now() - taken_at < 30:
                time.sleep(0.001)
            if self.measured:
                self.refill_ms.append((now() - taken_at) * 1000)
        sb.kill()
        if subject == WARM_CLI:
            self._cli_top_up()
        self.hold_refill = False
        if self.measured:
            row = rows[subject]
            row.samples.append(took)
            if subject != COLD and not pooled:
                row.misses += 1

    def _teardown(self) -> None:
        async def remove_all(manager: Any) -> None:
            for status in manager.pools.list():
                await manager.pools.remove(status.key)

        self._on_manager(remove_all)

    # -- sections ----------------------------------------------------------------------------

    def create(self) -> None:
        subjects = [WARM_HERE, WARM_CLI, COLD]
        rows = {s: self.results.add(Row("create", s, "ms")) for s in subjects}
        self._setup()
        try:
            self.measured = False
            for subject in subjects:  # warm-up: the manager's first create runs gc
                self._sample(subject, rows)
            self.measured = True
            self.log(f"create: {self.args.rounds} rounds of {len(subjects)}")
            for subject in shuffled_rounds(self.rng, subjects, self.args.rounds):
                self._sample(subject, rows)
        finally:
            self._teardown()
        cold = rows[COLD].p50
        for subject in (WARM_HERE, WARM_CLI):
            row = rows[subject]
            if row.p50 is not None and cold:
                row.ratio = row.p50 / cold
            row.target = f"p50 <= {TARGET_MS:g} ms"
            row.ok = row.p50 is not None and row.p50 <= TARGET_MS and row.misses == 0
            row.note = f"{row.misses} misses" if row.misses else "every sample a hit"
        rows[COLD].note = "bwrap, no pool for its spec"

    def refill(self) -> None:
        if "create" not in self.args.sections:
            self.results.add(Row("refill", "back to size", "ms", note="needs the create section"))
            return
        self.results.add(
            Row(
                "refill",
                f"pool of {SIZE} back to size after a take",
                "ms",
                samples=self.refill_ms,
                note="background: the take has returned long before",
            )
        )

    def close(self) -> None:
        self.store.close()


async def _pools(manager: Any) -> Any:
    return manager.pools


# --------------------------------------------------------------------------------------------
# output


def fmt_value(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.2f}"


def _versus(row: Row) -> str:
    return "" if row.ratio is None else f"{row.ratio:.0%}"


HEADERS, table_cells = percentile_columns("vs cold", _versus, fmt_value)

LAYOUT = Layout(
    title="sandlot warm pools",
    stem="pool",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p90", "vs cold", "target", "verdict"],
    targets_heading="Targets",
    reading="p50 / p90 / p99 of the wall time of sandlot.Sandbox.create(...) through the sync"
    " SDK, embedded, bwrap (create); the subjects were interleaved (every round runs each once,"
    " in a shuffled order, after one unrecorded warm-up round), each sandbox killed after its"
    " sample and the pool back to its size before the next. vs cold: the p50s' ratio."
    " refill: from the take's return until the pool has its size again.",
    how_to_run=[
        "python benchmarks/bench_pool.py --max-load 1.5",
        "python benchmarks/bench_pool.py --help",
    ],
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--rounds", type=int, default=40, help="rounds of create (default 40)")
    add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 5
    args.sections = choose(p, args.sections, SECTIONS, "section")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fresh_sandlot_home("slb-pool-")
    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()
    results = Results()
    bench = Bench(args, results)
    try:
        bench.run_sections()
    finally:
        bench.close()
    results.note_load()
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = run_meta("bench_pool.py", argv, started, load0, commit, base_versions(), args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
