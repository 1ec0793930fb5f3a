#!/usr/bin/env python
"""The E2B gateway's cost: the official E2B SDKs against a ``sandlot serve`` on loopback, side
by side with sandlot's own remote SDK against the same server, in one run.

Measures, each with two subjects interleaved (every round runs both, the order alternating
A B, B A, ... so drift in the machine's load hits them alike):

  run        ``commands.run("true")`` in one live sandbox: ``e2b_code_interpreter.Sandbox``
             (made with ``Sandbox.create()``) and ``sandlot.Sandbox.connect(its id)``
  run_code   ``run_code("x+=1")`` in the same sandbox, each SDK in its default context
  create     cold create: ``e2b.Sandbox.create()`` and ``sandlot.Sandbox.create()`` through
             the server (the kill after each is not timed)

Targets (issue 19): the E2B SDK's p50 at most 1 ms above sandlot's own for ``run`` and
``run_code``; ``create`` is reported next to sandlot's own. Both SDKs are synchronous clients
here (e2b's httpx, sandlot's aiohttp loop in a thread): what a user's script sees.

    python benchmarks/bench_e2b.py                  # about half a minute
    python benchmarks/bench_e2b.py --iters 1000 --creates 40 --write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when not run as a script
from _common import (
    REPO,
    RESULTS,
    fresh_sandlot_home,
    git_commit,
    interleaved,
    pair_table,
    timed,
    version_of,
)

TARGET_ABOVE_MS = {"run": 1.0, "run_code": 1.0}
SUBJECTS = ("e2b", "sandlot")


def run(args: argparse.Namespace, url: str, key: str) -> dict[str, dict[str, list[float]]]:
    import e2b
    import e2b_code_interpreter  # type: ignore[import-untyped]

    import sandlot

    client = sandlot.Client(url=url, api_key=key)
    found: dict[str, dict[str, list[float]]] = {}

    e2b_sandbox = e2b_code_interpreter.Sandbox.create()
    own = sandlot.Sandbox.connect(e2b_sandbox.sandbox_id, client=client)
    try:
        found["run"] = interleaved(
            {
                "e2b": timed(lambda: e2b_sandbox.commands.run("true")),
                "sandlot": timed(lambda: own.commands.run("true")),
            },
            args.iters,
            args.warmup,
        )
        e2b_sandbox.run_code("x = 0")
        own.run_code("x = 0")
        found["run_code"] = interleaved(
            {
                "e2b": timed(lambda: e2b_sandbox.run_code("x+=1")),
                "sandlot": timed(lambda: own.run_code("x+=1")),
            },
            args.iters,
            args.warmup,
        )
    finally:
        own.close()
        e2b_sandbox.kill()

    def e2b_create() -> float:
        started = time.perf_counter()
        sandbox = e2b.Sandbox.create()
        elapsed = time.perf_counter() - started
        sandbox.kill()
        return elapsed

    def own_create() -> float:
        started = time.perf_counter()
        sandbox = sandlot.Sandbox.create(client=client)
        elapsed = time.perf_counter() - started
        sandbox.kill()
        return elapsed

    found["create"] = interleaved({"e2b": e2b_create, "sandlot": own_create}, args.creates, 2)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300, help="rounds for run and run_code")
    parser.add_argument("--creates", type=int, default=15, help="rounds for create")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()

    fresh_sandlot_home("slbe2b-")
    for name in ("SANDLOT_URL", "SANDLOT_API_KEY", "E2B_DOMAIN", "E2B_DEBUG"):
        os.environ.pop(name, None)
    sys.path.insert(0, str(REPO / "tests"))
    from remote.server import ServerProcess  # type: ignore[import-not-found]

    load_before = os.getloadavg()[0]
    server = ServerProcess(fresh_sandlot_home("slbe2bs-")).start()
    try:
        key = server.keys("create", "--name", "bench")
        # What a user exports to move E2B code onto sandlot (docs/e2b.md).
        os.environ.update(E2B_API_URL=server.url, E2B_SANDBOX_URL=server.url, E2B_API_KEY=key)
        found = run(args, server.url, key)
    finally:
        server.stop()
    load = f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    lines = pair_table(found, SUBJECTS, TARGET_ABOVE_MS)
    print("\n".join(lines))
    print(load)
    if args.write:
        day = datetime.date.today().isoformat()
        versions = ", ".join(
            f"{dist} {version_of(dist)}" for dist in ("e2b", "e2b-code-interpreter", "httpx")
        )
        head = [
            f"# The E2B SDKs next to sandlot's own ({day}, commit {git_commit().split()[0]})",
            "",
            f"`python benchmarks/bench_e2b.py --iters {args.iters} --creates {args.creates}`; "
            f"{versions}; {load}.",
            "",
        ]
        (RESULTS / f"e2b-{day}.md").write_text("\n".join(head + lines) + "\n")
        rounded = {m: {n: [round(x * 1000, 4) for x in v] for n, v in rows.items()}
                   for m, rows in found.items()}  # fmt: skip
        (RESULTS / f"e2b-{day}.json").write_text(json.dumps({"ms": rounded}) + "\n")


if __name__ == "__main__":
    main()
