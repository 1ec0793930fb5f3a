"""Terminals and reattaching, embedded (issue 18), against a warm ``commands.run("true")``
measured in the same run.

- keystroke echo: one byte sent to a terminal, until its echo comes back; on a terminal in
  its normal (cooked) mode the terminal itself echoes, and on a raw one ``cat`` does (the
  path an editor's keystroke takes: into the program and out again);
- reattach + replay of 1 MiB: ``sb.commands.connect(pid)`` to a finished process whose log
  holds 1 MiB, until its end (all of it received);
- the baseline: ``sb.commands.run("true")`` on a warm sandbox.

Subjects are interleaved (each round runs each once, in a shuffled order), so drift in the
machine's load hits all alike.

    python benchmarks/bench_pty.py            # ~1 minute; writes results/pty-<date>.{md,json}
    python benchmarks/bench_pty.py --quick --no-write
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import _common as c

c.fresh_sandlot_home("sl-bench-pty-")

import sandlot  # noqa: E402

REPLAY_BYTES = 1024 * 1024
BASELINE = "baseline: sb.commands.run('true'), warm"


@dataclass
class Row(c.Sampled):
    section: str
    subject: str
    unit: str = "ms"
    target: str = ""
    limit_ms: float | None = None  # the p50 the target allows
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None
    ok: bool | None = None
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 95, 99)

    @property
    def p95(self) -> float | None:
        return self.p(95)


class Echo:
    """A terminal and a way to time one byte's round trip through it."""

    def __init__(self) -> None:
        self.waiting: asyncio.Future[None] | None = None
        self.seen = 0
        self.handle: sandlot.AsyncPtyHandle | None = None

    def on_data(self, data: bytes) -> None:
        self.seen += len(data)
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(None)

    async def open(self, sb: sandlot.AsyncSandbox, cmd: str) -> None:
        self.handle = await sb.pty.create(cmd=cmd, on_data=self.on_data)
        await self.settle()

    async def settle(self) -> None:
        """Until the terminal has been quiet a moment (its start-up output, a late echo)."""
        while True:
            before = self.seen
            await asyncio.sleep(0.05)
            if self.seen == before:
                return

    async def once(self) -> float:
        assert self.handle is not None
        loop = asyncio.get_running_loop()
        self.waiting = loop.create_future()
        t = c.now()
        await self.handle.send_stdin(b"x")
        await asyncio.wait_for(self.waiting, 10)
        return (c.now() - t) * 1000


async def measure(rounds: int, seed: int, results: c.Results) -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        await sb.commands.run("true")
        cooked, raw = Echo(), Echo()
        await cooked.open(sb, "exec cat > /dev/null")  # the terminal echoes what is typed
        await raw.open(sb, "stty raw -echo; exec cat")  # cat writes back what it reads

        async def replay() -> float:
            # A fresh finished process each time (untimed): the agent keeps only the newest
            # 64 ended ones, and the baseline's commands would push an old one out.
            logged = await sb.commands.run(f"head -c {REPLAY_BYTES} /dev/zero")
            assert len(logged.stdout_bytes) == REPLAY_BYTES and logged.pid is not None
            pid = logged.pid
            t = c.now()
            handle = await sb.commands.connect(pid)
            result = await handle.wait()
            elapsed = (c.now() - t) * 1000
            assert len(result.stdout_bytes) == REPLAY_BYTES and handle.gap == 0
            return elapsed

        async def baseline() -> float:
            t = c.now()
            await sb.commands.run("true")
            return (c.now() - t) * 1000

        subjects = {
            BASELINE: baseline,
            "keystroke echo, cooked terminal (the terminal echoes)": cooked.once,
            "keystroke echo, raw terminal (cat echoes)": raw.once,
            "reattach + replay of 1 MiB (a finished process)": replay,
        }
        rows = {name: results.add(Row("embedded", name)) for name in subjects}
        for name in (
            "keystroke echo, cooked terminal (the terminal echoes)",
            "keystroke echo, raw terminal (cat echoes)",
        ):
            rows[name].target, rows[name].limit_ms = "p50 <= 2 ms", 2.0
        replay_row = rows["reattach + replay of 1 MiB (a finished process)"]
        replay_row.target, replay_row.limit_ms = "p50 <= 50 ms", 50.0
        for _ in range(3):  # warm every path once, unmeasured
            for fn in subjects.values():
                await fn()
        for name in c.shuffled_rounds(random.Random(seed), list(subjects), rounds):
            rows[name].samples.append(await subjects[name]())
        for echo in (cooked, raw):
            assert echo.handle is not None
            await echo.handle.kill()
    base = rows[BASELINE]
    for row in results.rows:
        if row is not base and row.p50 is not None and base.p50:
            row.ratio = row.p50 / base.p50
        if row.limit_ms is not None and row.p50 is not None:
            row.ok = row.p50 <= row.limit_ms


def main() -> None:
    p = c.new_parser(__doc__ or "")
    c.add_run_options(p)
    p.add_argument("--rounds", type=int, default=400)
    args = p.parse_args()
    rounds = 20 if args.quick else args.rounds
    if args.max_load:
        c.wait_for_quiet(args.max_load, args.max_wait)
    started, load0 = c.now(), os.getloadavg()[0]
    results = c.Results()
    asyncio.run(measure(rounds, args.seed, results))
    meta = c.run_meta(
        "bench_pty.py",
        None,
        started,
        load0,
        c.git_commit(),
        c.base_versions(),
        vars(args) | {"out": str(args.out)},
    )
    layout = c.Layout(
        title="sandlot terminal and reattach benchmarks",
        stem="pty",
        headers=[
            "section",
            "subject",
            "p50",
            "p95",
            "p99",
            "n",
            "vs baseline (p50)",
            "target",
            "verdict",
        ],
        cells=lambda r: [
            r.section,
            r.subject,
            _ms(r.p50),
            _ms(r.p95),
            _ms(r.p99),
            str(r.n),
            f"{r.ratio:.2f}x" if r.ratio is not None else "-",
            r.target,
            c.verdict(r),
        ],
        targets=["section", "subject", "p50", "p95", "target", "verdict"],
        targets_heading="Targets (issue 18)",
        reading="times in ms over n interleaved samples; 'vs baseline' is the p50 over the p50 "
        "of a warm commands.run('true') in the same run",
        how_to_run=["python benchmarks/bench_pty.py", "python benchmarks/bench_pty.py --quick"],
    )
    c.report(results, meta, args, layout)


def _ms(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


if __name__ == "__main__":
    sys.exit(main())
