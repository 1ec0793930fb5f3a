#!/usr/bin/env python
"""What a framework front costs: each integration's call next to sandlot's own SDK call on
the same sandbox, in one run (issue 20).

Every measure has two subjects interleaved (each round runs both, the order alternating A B,
B A, ... so drift in the machine's load hits them alike):

  pydantic-ai run     ``SandlotWorkspaceBackend.run(["true"])`` vs ``commands.run(["true"])``
  deepagents execute  ``SandlotBackend.execute("true")`` (sync) vs ``Sandbox.commands.run``
  openai-agents exec  the sandbox session's ``exec("true")`` vs ``commands.run``
  smolagents code     ``SandlotExecutor(code)`` vs ``Sandbox.run_code(code, context=...)``

Target: each front's p50 at most 2 ms above the SDK's. Embedded (bwrap) sandboxes. The MCP
server's round trip has a script of its own, ``bench_mcp.py``.

    python benchmarks/bench_integrations.py                 # about a minute
    python benchmarks/bench_integrations.py --iters 500 --write
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when not run as a script
from _common import (
    RESULTS,
    fresh_sandlot_home,
    git_commit,
    interleaved,
    pair_table,
    timed,
    version_of,
)

TARGET_ABOVE_MS = 2.0
SUBJECTS = ("front", "sdk")
FRAMEWORKS = ("pydantic-ai-slim", "deepagents", "openai-agents", "smolagents")

Samples = dict[str, list[float]]
Found = dict[str, Samples]


async def ainterleaved(
    ops: dict[str, Callable[[], Awaitable[object]]], rounds: int, warmup: int
) -> Samples:
    """:func:`interleaved` for coroutines, on the running loop."""
    for _ in range(warmup):
        for op in ops.values():
            await op()
    samples: Samples = {name: [] for name in ops}
    names = list(ops)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            await ops[name]()
            samples[name].append(time.perf_counter() - started)
    return samples


# -- the async fronts, on one loop -----------------------------------------------------------


async def pydantic_ai_run(rounds: int, warmup: int) -> Samples:
    from pydantic_ai.workspaces import WorkspaceRef

    import sandlot
    from sandlot.integrations.pydantic_ai import SandlotWorkspaceBackend

    sb = await sandlot.AsyncSandbox.create()
    try:
        backend = SandlotWorkspaceBackend(ref=WorkspaceRef(provider="sandlot", id=sb.id))
        await backend.working_dir()  # attached once, untimed
        return await ainterleaved(
            {"front": lambda: backend.run(["true"]), "sdk": lambda: sb.commands.run(["true"])},
            rounds,
            warmup,
        )
    finally:
        await sb.kill()


async def openai_agents_exec(rounds: int, warmup: int) -> Samples:
    from sandlot.integrations.openai_agents import (
        SandlotSandboxClient,
        SandlotSandboxClientOptions,
    )

    client = SandlotSandboxClient()
    session = await client.create(options=SandlotSandboxClientOptions(durable=False))
    await session.start()
    sb = session._inner.sandbox  # the AsyncSandbox behind the SDK's session wrapper
    try:
        # shell=False: the SDK's default wraps the command in `sh -lc`, which the SDK side
        # would then have to run too.
        return await ainterleaved(
            {
                "front": lambda: session.exec("true", shell=False),
                "sdk": lambda: sb.commands.run(["true"], cwd="/workspace"),
            },
            rounds,
            warmup,
        )
    finally:
        await client.delete(session)


async def async_fronts(rounds: int, warmup: int) -> Found:
    return {
        "pydantic-ai run": await pydantic_ai_run(rounds, warmup),
        "openai-agents exec": await openai_agents_exec(rounds, warmup),
    }


# -- the sync fronts -------------------------------------------------------------------------


def deepagents_execute(rounds: int, warmup: int) -> Samples:
    import sandlot
    from sandlot.integrations.deepagents import SandlotBackend

    backend = SandlotBackend.create()
    own = sandlot.Sandbox.connect(backend.id)
    try:
        return interleaved(
            {
                "front": timed(lambda: backend.execute("true")),
                "sdk": timed(lambda: own.commands.run("true")),
            },
            rounds,
            warmup,
        )
    finally:
        own.close()
        backend.kill()


def smolagents_code(rounds: int, warmup: int) -> Samples:
    from rich.console import Console
    from smolagents.monitoring import AgentLogger, LogLevel

    from sandlot.integrations.smolagents import SandlotExecutor

    quiet = AgentLogger(LogLevel.OFF, console=Console(file=io.StringIO()))
    executor = SandlotExecutor(logger=quiet)
    code = "x = 1\nx + 1"
    try:
        return interleaved(
            {
                "front": timed(lambda: executor(code)),
                "sdk": timed(lambda: executor.sandbox.run_code(code, context=executor.context_id)),
            },
            rounds,
            warmup,
        )
    finally:
        executor.cleanup()


def run(rounds: int, warmup: int) -> Found:
    found = asyncio.run(async_fronts(rounds, warmup))
    found["deepagents execute"] = deepagents_execute(rounds, warmup)
    found["smolagents code"] = smolagents_code(rounds, warmup)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=200, help="rounds per measure")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()

    fresh_sandlot_home("slbint-")
    for name in ("SANDLOT_URL", "SANDLOT_API_KEY"):
        os.environ.pop(name, None)
    load_before = os.getloadavg()[0]
    found = run(args.iters, args.warmup)
    load = f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    lines = pair_table(found, SUBJECTS, dict.fromkeys(found, TARGET_ABOVE_MS))
    print("\n".join(lines))
    print(load)
    if args.write:
        day = datetime.date.today().isoformat()
        versions = ", ".join(f"{dist} {version_of(dist)}" for dist in FRAMEWORKS)
        head = [
            f"# The framework fronts next to sandlot's SDK ({day}, commit "
            f"{git_commit().split()[0]})",
            "",
            f"`python benchmarks/bench_integrations.py --iters {args.iters}`; {versions}; {load}.",
            "",
        ]
        (RESULTS / f"integrations-{day}.md").write_text("\n".join(head + lines) + "\n")
        rounded: dict[str, Any] = {
            m: {n: [round(x * 1000, 4) for x in v] for n, v in rows.items()}
            for m, rows in found.items()
        }
        (RESULTS / f"integrations-{day}.json").write_text(json.dumps({"ms": rounded}) + "\n")


if __name__ == "__main__":
    main()
