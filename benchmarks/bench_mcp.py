"""sandlot's MCP server over stdio (issue 20) against the SDK it fronts, in the same run.

- ``sdk run_code``: ``await sb.run_code("1 + 1")`` on a warm embedded sandbox (the baseline);
- ``mcp run_code``: the ``run_code`` tool through a ``sandlot mcp`` subprocess, called with the
  ``mcp`` package's own client (JSON-RPC over pipes, the tool, the same SDK call inside);
- ``mcp no-op``: a tool call refused before it reaches a sandbox (a relative path to
  ``read_file``): what the protocol and transport cost alone.

Target: the MCP round trip at most 2 ms p50 above the SDK's. Subjects are interleaved (each
round runs each once, in a shuffled order), so drift in the machine's load hits all alike.

    python benchmarks/bench_mcp.py            # ~30 s; writes results/mcp-<date>.{md,json}
    python benchmarks/bench_mcp.py --quick --no-write
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import _common as c

c.fresh_sandlot_home("sl-bench-mcp-")

import sandlot  # noqa: E402

BASELINE = "sdk run_code('1 + 1'), warm"
TARGET_MS = 2.0


@dataclass
class Row(c.Sampled):
    section: str
    subject: str
    unit: str = "ms"
    target: str = ""
    samples: list[float] = field(default_factory=list)
    over: float | None = None  # p50 above the baseline's, ms
    ok: bool | None = None
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 95, 99)

    @property
    def p95(self) -> float | None:
        return self.p(95)


async def measure(rounds: int, seed: int, results: c.Results) -> None:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    server = StdioServerParameters(
        command=sys.executable, args=["-m", "sandlot.cli", "mcp"], env=dict(os.environ)
    )
    sb = await sandlot.AsyncSandbox.create()
    try:
        async with Client(server) as client:
            await client.call_tool("run_code", {"code": "1"})  # its default sandbox, warm
            await sb.run_code("1")

            async def sdk() -> Any:
                return await sb.run_code("1 + 1")

            async def mcp() -> Any:
                return await client.call_tool("run_code", {"code": "1 + 1"})

            async def noop() -> Any:
                return await client.call_tool("read_file", {"path": "relative"})

            subjects = {BASELINE: sdk, "mcp run_code('1 + 1')": mcp, "mcp no-op tool call": noop}
            rows = {name: results.add(Row("stdio", name)) for name in subjects}
            rows["mcp run_code('1 + 1')"].target = f"p50 <= baseline + {TARGET_MS:g} ms"
            for name in c.shuffled_rounds(random.Random(seed), list(subjects), rounds):
                started = c.now()
                await subjects[name]()
                rows[name].samples.append((c.now() - started) * 1000)
    finally:
        await sb.kill()
    base = rows[BASELINE].p50
    for row in rows.values():
        if base is not None and row.p50 is not None and row.subject != BASELINE:
            row.over = row.p50 - base
    target = rows["mcp run_code('1 + 1')"]
    if target.over is not None:
        target.ok = target.over <= TARGET_MS


def main() -> None:
    p = c.new_parser(__doc__ or "")
    c.add_run_options(p)
    p.add_argument("--rounds", type=int, default=300)
    args = p.parse_args()
    rounds = 20 if args.quick else args.rounds
    if args.max_load:
        c.wait_for_quiet(args.max_load, args.max_wait)
    started, load0 = c.now(), os.getloadavg()[0]
    results = c.Results()
    asyncio.run(measure(rounds, args.seed, results))
    versions = c.base_versions() | {"mcp": c.version_of("mcp")}
    meta = c.run_meta(
        "bench_mcp.py", None, started, load0, c.git_commit(), versions,
        vars(args) | {"out": str(args.out)},
    )  # fmt: skip
    layout = c.Layout(
        title="sandlot MCP server benchmarks",
        stem="mcp",
        headers=[
            "section",
            "subject",
            "p50",
            "p95",
            "p99",
            "n",
            "over baseline (p50)",
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
            f"+{r.over:.2f} ms" if r.over is not None else "-",
            r.target,
            c.verdict(r),
        ],
        targets=["section", "subject", "p50", "target", "verdict"],
        targets_heading="Targets (issue 20)",
        reading="times in ms over n interleaved samples; 'over baseline' is the p50 minus the "
        "p50 of the SDK's own run_code in the same run",
        how_to_run=["python benchmarks/bench_mcp.py", "python benchmarks/bench_mcp.py --quick"],
    )
    c.report(results, meta, args, layout)


def _ms(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


if __name__ == "__main__":
    sys.exit(main())
