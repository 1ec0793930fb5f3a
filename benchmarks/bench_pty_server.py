#!/usr/bin/env python
"""Terminal benchmarks through the server: the keystroke echo round trip of a pty, embedded
and through a ``sandlot serve`` on loopback, measured side by side in one run.

A key is one byte sent to ``cat`` on a pseudo-terminal in the sandbox; the round trip ends
when the terminal's echo of that byte is back (the line discipline echoes it, cat itself
prints nothing until a newline). Subjects, interleaved (every round runs each once, in a
shuffled order, so the machine's noise hits them alike):

  embedded        the SDK's channel to the agent (``op pty``), in this process
  server-ws       a plain WebSocket client (aiohttp) on ``/v1/sandboxes/{id}/pty``
  server-sdk      the remote SDK's channel (RemoteChannel: the same WebSocket, tagged)

Targets (issue 18): p50 <= 2 ms embedded, <= 4 ms through the server.

Then ``replay``: reattaching to a process whose buffer holds 1 MiB and reading all of it
back (``proc.attach`` from offset 0), embedded and through the server's WebSocket. Target:
<= 50 ms.

    python benchmarks/bench_pty_server.py                # about half a minute
    python benchmarks/bench_pty_server.py --keys 3000 --write
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when not run as a script
from _common import REPO, RESULTS, fresh_sandlot_home, git_commit, percentile

TARGETS_MS = {"embedded": 2.0, "server-ws": 4.0, "server-sdk": 4.0}
REPLAY_TARGET_MS = 50.0
MiB = 1 << 20

Key = Callable[[], Awaitable[float]]
Close = Callable[[], Awaitable[None]]


async def embedded_terminal(sandbox: Any) -> tuple[Key, Close]:
    from sandlot.agent import protocol as p

    return await _channel_terminal(sandbox._channel, p)


async def _channel_terminal(channel: Any, p: Any) -> tuple[Key, Close]:
    request = channel.open("pty", cmd="cat", cols=80, rows=24)
    kind, _, _ = await request.receive()
    assert kind == p.EVENT

    async def key() -> float:
        started = time.perf_counter()
        await request.send_data(b"k")
        while True:
            kind, _, payload = await request.receive()
            if kind == p.DATA:
                request.consumed(len(payload))
                if b"k" in payload:
                    return time.perf_counter() - started

    async def close() -> None:
        request.cancel()

    return key, close


async def websocket_terminal(url: str, sandbox_id: str) -> tuple[Key, Close]:
    import aiohttp

    session = aiohttp.ClientSession()
    ws_url = url.replace("http://", "ws://") + f"/v1/sandboxes/{sandbox_id}/pty"
    ws = await session.ws_connect(ws_url, protocols=("sandlot.pty",), compress=0)
    await ws.send_str(json.dumps({"type": "start", "cmd": "cat"}))
    started = json.loads((await ws.receive()).data)
    assert started["type"] == "started", started

    async def key() -> float:
        begun = time.perf_counter()
        await ws.send_bytes(b"k")
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.BINARY and b"k" in message.data:
                return time.perf_counter() - begun

    async def close() -> None:
        await ws.send_str(json.dumps({"type": "kill"}))
        await ws.close()
        await session.close()

    return key, close


async def replay(channel: Any, p: Any, size: int) -> float:
    """Seconds to reattach to a process holding ``size`` bytes and read them all."""
    request = channel.open("exec", cmd=f"head -c {size} /dev/zero; sleep 60")  # 2 MiB kept
    kind, _, payload = await request.receive()
    pid = json.loads(payload)["pid"]
    got = 0
    while got < size:  # the first reader drains it all: then the log holds `size` bytes
        kind, _, payload = await request.receive()
        if kind == p.DATA:
            got += len(payload)
            request.consumed(len(payload))
    started = time.perf_counter()
    again = channel.open("proc.attach", pid=pid, offset=0)
    got = 0
    while got < size:
        kind, _, payload = await again.receive()
        if kind == p.DATA:
            got += len(payload)
            again.consumed(len(payload))
    elapsed = time.perf_counter() - started
    again.cancel()
    await channel.call("signal", pid=pid, signal=9)
    while (await request.receive())[0] != p.END:
        pass
    return elapsed


async def run(args: argparse.Namespace, server_url: str) -> dict[str, Any]:
    import sandlot
    from sandlot.agent import protocol as p

    local = await sandlot.AsyncSandbox.create()
    remote = await sandlot.AsyncSandbox.create(client=sandlot.Client(url=server_url))
    subjects: dict[str, tuple[Key, Close]] = {
        "embedded": await embedded_terminal(local),
        "server-ws": await websocket_terminal(server_url, remote.id),
        "server-sdk": await _channel_terminal(remote._channel, p),
    }
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    rng = random.Random(args.seed)
    for _ in range(args.warmup):
        for key, _ in subjects.values():
            await key()
    for _ in range(args.keys):
        order = list(subjects)
        rng.shuffle(order)
        for name in order:
            samples[name].append(await subjects[name][0]())
    for _, close in subjects.values():
        await close()
    replays: dict[str, list[float]] = {"embedded": [], "server-sdk": []}
    for _ in range(args.replays):
        replays["embedded"].append(await replay(local._channel, p, MiB))
        replays["server-sdk"].append(await replay(remote._channel, p, MiB))
    await local.kill()
    await remote.kill()
    return {"echo": samples, "replay": replays}


def table(found: dict[str, Any]) -> list[str]:
    lines = [
        "| measure | subject | n | p50 ms | p90 ms | p99 ms | target | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for measure, targets in (("echo", TARGETS_MS), ("replay 1 MiB", None)):
        rows = found["echo" if measure == "echo" else "replay"]
        for name, samples in rows.items():
            ms = [s * 1000 for s in samples]
            p50, p90, p99 = (percentile(ms, q) for q in (50, 90, 99))
            target = targets[name] if targets else REPLAY_TARGET_MS
            verdict = "met" if p50 <= target else "MISSED"
            lines.append(
                f"| {measure} | {name} | {len(ms)} | {p50:.3f} | {p90:.3f} | {p99:.3f} "
                f"| p50 <= {target:g} ms | {verdict} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1000, help="round trips per subject")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()

    os.environ["SANDLOT_HOME"] = str(fresh_sandlot_home("slbpty-"))
    os.environ.pop("SANDLOT_URL", None)
    sys.path.insert(0, str(REPO / "tests"))
    from remote.server import ServerProcess  # type: ignore[import-not-found]

    server = ServerProcess(fresh_sandlot_home("slbptys-")).start()
    try:
        found = asyncio.run(run(args, server.url))
    finally:
        server.stop()
    lines = table(found)
    print("\n".join(lines))
    if args.write:
        day = datetime.date.today().isoformat()
        head = [
            f"# Terminals through the server ({day}, commit {git_commit().split()[0]})",
            "",
            f"`python benchmarks/bench_pty_server.py --keys {args.keys}`",
            "",
        ]
        (RESULTS / f"pty-server-{day}.md").write_text("\n".join(head + lines) + "\n")
        rounded = {k: {n: [round(x * 1000, 4) for x in v] for n, v in rows.items()}
                   for k, rows in found.items()}  # fmt: skip
        (RESULTS / f"pty-server-{day}.json").write_text(json.dumps({"ms": rounded}) + "\n")


if __name__ == "__main__":
    main()
