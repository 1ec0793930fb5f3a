#!/usr/bin/env python
"""Templates: a cold start from a template with numpy+pandas vs from the host, a rebuild
after changing the last step, and a take from a template's warm pool (issue 22).

Sections (bwrap, the sync SDK embedded in this process):

  build    builds ``bench-ds`` from ``host`` with ``--pip numpy==NUMPY pandas==PANDAS`` and
           ``--run "echo v0"`` (versions other than Debian's, so the template holds its
           own copies: checked in a sandbox, which reports where numpy came from). The pip
           source is the host's pip configuration (index, extra indexes, find-links), as for
           any build. For information: the first build's time.
  cold     subjects interleaved (every round runs each once, in a shuffled order, after one
           unrecorded warm-up round): the wall time of create + first command + kill, the
           command ``python3 -c "import numpy, pandas"``:
             template   ``template="bench-ds"`` (its numpy/pandas in the template's layer);
             host       no template (Debian's numpy/pandas of the host's /usr).
           The same two with ``true`` as the command separate the root's cost from the
           imports' (for information).
           Target: template p50 at most 1.2x host p50 (the imports).
  rebuild  the last step changed (``echo vN``, a new N each time) and the template rebuilt:
           the build's wall time vs that step's own time (the build's own event). The pip
           step must come from the cache. Target: rebuild <= 2 s + the step's time (p50s).
  pool     pools of 3 of ``template="bench-ds"`` and of the host set in this process;
           interleaved, the wall time of a create each serves, both pools back to their size
           before each sample. Target: template p50 <= 10 ms, every sample a hit (the host
           pool's take, in the same run, for comparison).

    python benchmarks/bench_templates.py --max-load 1.5   # about five minutes
    python benchmarks/bench_templates.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/templates-<date>.md and .json.
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

SECTIONS = ("build", "cold", "rebuild", "pool")
NAME = "bench-ds"
NUMPY, PANDAS = "2.2.6", "2.3.3"  # Debian bookworm has 1.24.2 and 1.5.3
IMPORTS = 'python3 -c "import numpy, pandas"'
TEMPLATE, HOST = "template", "host"
RATIO_TARGET = 1.2
REBUILD_SLACK_S = 2.0
POOL_SIZE = 3
POOL_TARGET_MS = 10.0
WHERE = "import numpy, pandas, sys; print(numpy.__version__, pandas.__version__, numpy.__file__)"


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 99)

    section: str
    subject: str
    unit: str  # ms or s
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None  # see each section
    misses: int = 0
    note: str = ""
    target: str = ""
    ok: bool | None = None
    failed: bool = False


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace, results: Results) -> None:
        super().__init__(args, results)
        from sandlot.manager import Manager
        from sandlot.sdk.sync import _portal

        self.portal = _portal
        self.Manager = Manager
        self.version = 0  # of the last step's echo
        self.built = False

    # -- helpers -----------------------------------------------------------------------------

    def _on_manager(self, action: Any) -> Any:
        async def go() -> Any:
            return await action(self.Manager.current())

        return self.portal.call(go())

    def _create(self, template: str | None) -> Any:
        from sandlot.models import SandboxSpec
        from sandlot.sdk.sandbox import AsyncSandbox

        spec = SandboxSpec(template=template, timeout=120)
        return self.sandlot.Sandbox(self.portal.call(AsyncSandbox._create(spec, None)))

    def _build(self, last: str) -> tuple[float, list[Any]]:
        """Build NAME with the pip step and ``run last``: wall seconds and the events."""
        from sandlot.workspace.templates.build import build
        from sandlot.workspace.templates.model import parse_step

        steps = [parse_step("pip", f"numpy=={NUMPY} pandas=={PANDAS}"), parse_step("run", last)]
        events: list[Any] = []

        async def go(manager: Any) -> Any:
            return await build(manager, NAME, "host", steps, on_event=events.append)

        start = now()
        self._on_manager(go)
        return now() - start, events

    # -- sections ----------------------------------------------------------------------------

    def build(self) -> None:
        row = self.results.add(Row("build", f"first build ({NAME}: pip + run)", "s"))
        try:
            took, events = self._build(f"echo v{self.version}")
        except Exception as exc:
            row.failed = True
            row.note = f"build failed: {str(exc)[:300]}"
            self.log(row.note)
            return
        self.built = True
        row.samples.append(took)
        pip = next(e for e in events if e.type == "step_finished" and e.index == 1)
        row.note = f"pip step {pip.seconds:.1f} s, {pip.bytes / 1e6:.0f} MB" + (
            " (cached: an earlier run's layer)" if pip.cached else ""
        )
        with self._create(NAME) as sb:
            where = sb.commands.run(f"python3 -c '{WHERE}'")
        with self._create(None) as sb:
            host = sb.commands.run(f"python3 -c '{WHERE}'")
        self.results.notes.append(
            f"in a template sandbox: numpy, pandas, numpy's file: {where.stdout.strip()}"
        )
        self.results.notes.append(f"in a host sandbox: {host.stdout.strip()}")
        if f"{NUMPY} {PANDAS} /usr/local/" not in where.stdout:
            row.note += "; WARNING: the template's python does not import its own numpy/pandas"

    def cold(self) -> None:
        if not self.built:
            self.results.add(Row("cold", "-", "ms", note="needs the build section"))
            return
        subjects = [
            (TEMPLATE, IMPORTS),
            (HOST, IMPORTS),
            (TEMPLATE, "true"),
            (HOST, "true"),
        ]
        rows = {
            s: self.results.add(
                Row(
                    "cold",
                    f"{s[0]}: create + {'imports' if s[1] == IMPORTS else 'true'} + kill",
                    "ms",
                )
            )
            for s in subjects
        }
        for measured, order in (
            (False, subjects),
            (True, list(shuffled_rounds(self.rng, subjects, self.args.rounds))),
        ):
            if measured:
                self.log(f"cold: {self.args.rounds} rounds of {len(subjects)}")
            for subject in order:
                template, command = subject
                start = now()
                sb = self._create(NAME if template == TEMPLATE else None)
                result = sb.commands.run(command)
                sb.kill()
                took = (now() - start) * 1000
                if result.exit_code != 0:
                    rows[subject].failed = True
                    rows[subject].note = f"exit {result.exit_code}: {result.stderr[-200:]}"
                if measured:
                    rows[subject].samples.append(took)
        for command in (IMPORTS, "true"):
            tpl, host = rows[(TEMPLATE, command)], rows[(HOST, command)]
            if tpl.p50 is not None and host.p50:
                tpl.ratio = tpl.p50 / host.p50
            host.note = host.note or "the host's /usr (Debian's numpy 1.24, pandas 1.5)"
            tpl.note = tpl.note or "the template's layer over the host's /usr"
        imports = rows[(TEMPLATE, IMPORTS)]
        imports.target = f"p50 <= {RATIO_TARGET:g}x host"
        imports.ok = imports.ratio is not None and imports.ratio <= RATIO_TARGET

    def rebuild(self) -> None:
        if not self.built:
            self.results.add(Row("rebuild", "-", "s", note="needs the build section"))
            return
        total = self.results.add(Row("rebuild", "rebuild after changing the last step", "s"))
        step = self.results.add(Row("rebuild", "that step's own time (its event)", "s"))
        cached_pip = 0
        rounds = max(3, self.args.rounds // 4)
        self.log(f"rebuild: {rounds} rebuilds")
        for _ in range(rounds):
            self.version += 1
            took, events = self._build(f"echo v{self.version}")
            finished = {e.index: e for e in events if e.type == "step_finished"}
            cached_pip += finished[1].cached
            total.samples.append(took)
            step.samples.append(finished[2].seconds)
        if total.p50 is not None and step.p50 is not None:
            total.ratio = total.p50 - step.p50  # the build's own overhead, seconds
            total.target = f"p50 <= {REBUILD_SLACK_S:g} s + step p50"
            total.ok = total.ratio <= REBUILD_SLACK_S and cached_pip == rounds
        total.note = f"pip step from the cache {cached_pip}/{rounds} times"
        step.note = "a run step: a build sandbox on the template so far, its changes kept"

    def pool(self) -> None:
        if not self.built:
            self.results.add(Row("pool", "-", "ms", note="needs the build section"))
            return
        from sandlot.models import SandboxSpec

        subjects = [TEMPLATE, HOST]
        rows = {
            TEMPLATE: self.results.add(
                Row("pool", f"take from a pool of {POOL_SIZE} ({NAME})", "ms")
            ),
            HOST: self.results.add(Row("pool", f"take from a pool of {POOL_SIZE} (host)", "ms")),
        }
        keys = {
            subject: self._on_manager(
                lambda m, t=template: m.pools.set(SandboxSpec(template=t), POOL_SIZE)
            ).key
            for subject, template in ((TEMPLATE, NAME), (HOST, None))
        }
        try:
            order = [(False, s) for s in subjects]  # unrecorded warm-up round
            order += [(True, s) for s in shuffled_rounds(self.rng, subjects, self.args.rounds)]
            for measured, subject in order:
                deadline = time.monotonic() + 60
                while any(
                    self._on_manager(lambda m, k=k: _ready(m, k)) < POOL_SIZE for k in keys.values()
                ):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.005)
                start = now()
                sb = self._create(NAME if subject == TEMPLATE else None)
                took = (now() - start) * 1000
                pooled = bool(sb.info.handle.get("pooled"))
                sb.kill()
                if measured:
                    rows[subject].samples.append(took)
                    rows[subject].misses += not pooled
        finally:

            async def remove_all(manager: Any) -> None:
                for found in manager.pools.list():
                    await manager.pools.remove(found.key)

            self._on_manager(remove_all)
        for row in rows.values():
            row.note = f"{row.misses} misses" if row.misses else "every sample a hit"
        tpl, host = rows[TEMPLATE], rows[HOST]
        if tpl.p50 is not None and host.p50:
            tpl.ratio = tpl.p50 / host.p50
        tpl.target = f"p50 <= {POOL_TARGET_MS:g} ms"
        tpl.ok = tpl.p50 is not None and tpl.p50 <= POOL_TARGET_MS and tpl.misses == 0
        host.note += " (the same take without a template, for comparison)"


async def _ready(manager: Any, key: str) -> int:
    return sum(1 for m in manager.store.pool_members(key) if m[3])


# --------------------------------------------------------------------------------------------
# output


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if unit == "ms" else f"{value:.3f}"


def _versus(row: Row) -> str:
    if row.ratio is None:
        return ""
    if row.section == "rebuild":
        return f"+{row.ratio:.2f} s"
    return f"{row.ratio:.2f}x"


HEADERS, table_cells = percentile_columns("vs", _versus, fmt_value)

LAYOUT = Layout(
    title="sandlot templates",
    stem="templates",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p90", "vs", "target", "verdict"],
    targets_heading="Targets",
    reading="bwrap, the sync SDK embedded in this process. cold: p50 / p90 / p99 of create +"
    " first command + kill, the subjects interleaved (shuffled every round, after an unrecorded"
    " warm-up round); vs: the template's p50 / the host's for the same command. rebuild: the"
    " build's wall time after changing its last step; vs: its p50 minus that step's own p50."
    " pool: the wall time of a create taken from a pool (interleaved, both pools back to their"
    " size before each sample); vs: the template pool's p50 / the host pool's.",
    how_to_run=[
        "python benchmarks/bench_templates.py --max-load 1.5",
        "python benchmarks/bench_templates.py --help",
    ],
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--rounds", type=int, default=20, help="rounds of cold and pool (default 20)")
    add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 4
    args.sections = choose(p, args.sections, SECTIONS, "section")
    if "build" not in args.sections:
        p.error("every other section needs the build section")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fresh_sandlot_home("slb-tpl-")
    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()
    results = Results()
    bench = Bench(args, results)
    bench.run_sections()
    results.note_load()
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = run_meta("bench_templates.py", argv, started, load0, commit, base_versions(), args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
