#!/usr/bin/env python
"""Durable sessions: attaching a sandbox to a session (warm pool, cold), and detaching it.

Sections:

  attach  the sync SDK, embedded, bwrap. Subjects, interleaved (every round runs each once,
          in a shuffled order, after one unrecorded warm-up round), the wall time of:
            session, warm pool   ``session.sandbox(env=...)`` whose spec a pool this process
                                 keeps serves: a pool take, the restore of the session's
                                 checkpoint (a few small files), its records and lease;
            session, cold        the same for a spec no pool serves (a sandbox is started);
            plain create, warm   ``Sandbox.create(env=...)`` from a pool, for reference.
          The pool is back to its size before every warm sample. Target (issue 6): attach
          from a warm pool, p50 at most 10 ms.
  detach  ``session.detach(sb)`` of the same sandboxes: stop, checkpoint (one file changed
          since the restore), destroy, record. For information.

    python benchmarks/bench_sessions.py --max-load 1.5   # about a minute
    python benchmarks/bench_sessions.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/sessions-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import os
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

SECTIONS = ("attach", "detach")
SIZE = 3
TARGET_MS = 10.0
WARM, COLD, PLAIN = "session, warm pool", "session, cold", "plain create, warm pool"
ENV = {WARM: "session", COLD: "none", PLAIN: "plain"}  # POOL=...: one spec per subject


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 95, 99)

    section: str
    subject: str
    unit: str  # ms
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None  # p50 / the cold attach's p50
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
        # One connection for polling, open for the whole run: closing a second connection
        # to a database this process holds open would drop the process's locks on it.
        self.store = Store(default_home())
        self.session: Any = None
        self.attach_rows: dict[str, Row] = {}
        self.detach_rows: dict[str, Row] = {}
        self.measured = False

    def _spec(self, subject: str) -> Any:
        from sandlot.models import SandboxSpec

        return SandboxSpec(env={"POOL": ENV[subject]})

    async def _keeper(self) -> Any:
        from sandlot.manager.sessions import Sessions

        return (await Sessions.local()).manager

    def _pools(self) -> list[Any]:
        """The pools of both managers that take members: this loop's and the sessions'."""

        async def go() -> list[Any]:
            return [self.Manager.current().pools, (await self._keeper()).pools]

        return self.portal.call(go())

    def _wait_full(self) -> None:
        from sandlot.manager.manager import default_provider
        from sandlot.manager.pool import pool_key

        store = self.store
        for subject in (WARM, PLAIN):
            key = pool_key(default_provider(self._spec(subject)))
            deadline = now() + 30
            while sum(1 for m in store.pool_members(key) if m[3]) < SIZE and now() < deadline:
                time.sleep(0.002)

    def _setup(self) -> None:
        self.session = self.sandlot.Session.create(metadata={"bench": "sessions"})
        with self.session.sandbox(env={"POOL": "setup"}) as sb:  # a checkpoint to restore
            for i in range(20):
                sb.files.write(f"/workspace/src/f{i}.py", f"print({i})\n" * 50)
        pools = self._pools()

        async def fill() -> None:
            for subject in (WARM, PLAIN):
                await pools[0].set(self._spec(subject), SIZE)

        self.portal.call(fill())

    def _sample(self, subject: str) -> None:
        self._wait_full()
        env = {"POOL": ENV[subject]}
        start = now()
        if subject == PLAIN:
            sb = self.sandlot.Sandbox.create(timeout=60, env=env)
        else:
            sb = self.session.sandbox(timeout=60, env=env)
        took = (now() - start) * 1000
        pooled = bool(sb.info.handle.get("pooled"))
        detach_ms = None
        if subject == PLAIN:
            sb.kill()
        else:
            sb.files.write("/workspace/src/changed.py", f"x = {time.time()}\n")
            start = now()
            self.session.detach(sb)
            detach_ms = (now() - start) * 1000
        if not self.measured:
            return
        row = self.attach_rows[subject]
        row.samples.append(took)
        if subject != COLD and not pooled:
            row.misses += 1
        if detach_ms is not None:
            self.detach_rows[subject].samples.append(detach_ms)

    def _teardown(self) -> None:
        pools = self._pools()

        async def remove_all() -> None:
            for status in pools[0].list():
                await pools[0].remove(status.key)

        self.portal.call(remove_all())
        if self.session is not None:
            self.session.delete()

    def attach(self) -> None:
        subjects = [WARM, COLD, PLAIN]
        self.attach_rows = {s: self.results.add(Row("attach", s, "ms")) for s in subjects}
        self.detach_rows = {
            s: Row("detach", s, "ms", note="stop, checkpoint (1 file changed), destroy")
            for s in (WARM, COLD)
        }
        self._setup()
        try:
            self.measured = False
            for subject in subjects:
                self._sample(subject)
            self.measured = True
            self.log(f"attach: {self.args.rounds} rounds of {len(subjects)}")
            for subject in shuffled_rounds(self.rng, subjects, self.args.rounds):
                self._sample(subject)
        finally:
            self._teardown()
        cold = self.attach_rows[COLD].p50
        for subject in (WARM, PLAIN):
            row = self.attach_rows[subject]
            if row.p50 is not None and cold:
                row.ratio = row.p50 / cold
            row.note = f"{row.misses} misses" if row.misses else "every sample a hit"
        warm = self.attach_rows[WARM]
        warm.target = f"p50 <= {TARGET_MS:g} ms"
        warm.ok = warm.p50 is not None and warm.p50 <= TARGET_MS and warm.misses == 0
        self.attach_rows[COLD].note = "a sandbox started for it"

    def detach(self) -> None:
        if not self.detach_rows:
            self.results.add(Row("detach", "-", "ms", note="needs the attach section"))
            return
        for row in self.detach_rows.values():
            self.results.add(row)


def fmt_value(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.2f}"


def _versus(row: Row) -> str:
    return "" if row.ratio is None else f"{row.ratio:.0%}"


HEADERS, table_cells = percentile_columns("vs cold", _versus, fmt_value)

LAYOUT = Layout(
    title="sandlot durable sessions",
    stem="sessions",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p90", "vs cold", "target", "verdict"],
    targets_heading="Targets",
    reading="p50 / p90 / p99 of the wall time through the sync SDK, embedded, bwrap:"
    " session.sandbox(...) (attach: a sandbox, the restore of the session's 20-file checkpoint,"
    " its records and lease) and session.detach(sb) (stop, checkpoint, destroy). Subjects"
    " interleaved in shuffled rounds after a warm-up round; every warm sample finds the pool"
    " full. vs cold: the p50s' ratio.",
    how_to_run=[
        "python benchmarks/bench_sessions.py --max-load 1.5",
        "python benchmarks/bench_sessions.py --help",
    ],
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--rounds", type=int, default=30, help="rounds of attach (default 30)")
    add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 5
    args.sections = choose(p, args.sections, SECTIONS, "section")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fresh_sandlot_home("slb-ses-")
    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()
    results = Results()
    bench = Bench(args, results)
    try:
        bench.run_sections()
    finally:
        bench.store.close()
    results.note_load()
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = run_meta("bench_sessions.py", argv, started, load0, commit, base_versions(), args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
