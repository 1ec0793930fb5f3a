#!/usr/bin/env python
"""Soak: rounds of concurrent remote clients against one ``sandlot serve``, for half an hour
or more, with what the server holds measured after every round (issue 16).

Each round (the load of ``tests/soak/driver.py``, shared with the CI soak test): ``--clients``
clients each create a sandbox and run ``--commands`` commands whose output is checked
exactly; ``--streams`` clients each stream ``--stream-mib`` MiB out of a sandbox and count
it; one task creates, uses and kills ``--churn`` sandboxes in turn; ``--hogs`` busy loops
share the CPU with the server. Every call is bounded (``--call-bound``): a bound hit is a
hang. After the round, once no sandbox is left: the server's RSS, threads and descriptors,
its sandboxes' processes, cgroup folders and mounts, and the database's rows.

Targets: at least 150 commands/s (``--target``) with 32 clients on a quiet machine, no
errors, no hangs, and no degradation across rounds: the last round's commands/s at least
80% of the first's; after ``--rest`` seconds at rest (the server keeps ended runs 60 s and
trims its heap every 30 s), RSS within 20% of the first round's and descriptors within 8.

    python benchmarks/bench_soak.py                       # rounds for 45 minutes, the issue's load
    python benchmarks/bench_soak.py --rounds 2            # a short proof
    python benchmarks/bench_soak.py --hogs 2 --minutes 30 # under CPU contention, as in the field
    python benchmarks/bench_soak.py --postgres --rounds 4 # PostgreSQL (a throwaway cluster)
    python benchmarks/bench_soak.py --quick --no-write    # smoke test

Results: a table on the terminal, and benchmarks/results/soak-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when not run as a script
from _common import (
    REPO,
    Layout,
    Results,
    Sampled,
    add_run_options,
    base_versions,
    git_commit,
    new_parser,
    now,
    report,
    run_meta,
    verdict,
    version_of,
)

MIN_RATE_SHARE = 0.8  # the last round's commands/s over the first's, at least
RSS_GROWTH = 0.2
FD_SLACK = 8


@dataclass
class Row(Sampled):
    """One round: its client commands' latencies (ms) and what was left after it."""

    QUANTILES: ClassVar[tuple[int, ...]] = (50, 99)

    section: str
    subject: str
    samples: list[float] = field(default_factory=list)
    unit: str = "ms"
    rate: float = 0.0  # client commands per second of the command phase
    commands: int = 0
    wall_s: float = 0.0
    errors: int = 0
    hangs: int = 0
    wedged: bool = False
    rss_mib: float = 0.0
    peak_mib: float = 0.0
    threads: int = 0
    fds: int = 0
    procs: int = 0  # the server's children and processes in its cgroups
    cgroup_folders: int = 0
    mounts: int = 0
    db: dict[str, int] = field(default_factory=dict)
    target: str = ""
    ok: bool | None = None
    note: str = ""


def cells(row: Row) -> list[str]:
    def num(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return [
        row.subject,
        str(row.commands),
        num(row.rate),
        num(row.p50, 1),
        num(row.p99, 1),
        num(row.rss_mib),
        num(row.peak_mib),
        str(row.threads),
        str(row.fds),
        str(row.procs),
        str(row.cgroup_folders),
        str(row.mounts),
        str(row.errors),
        str(row.hangs) + (" wedged" if row.wedged else ""),
        row.target,
        verdict(row),
        row.note,
    ]


HEADERS = [
    "round", "commands", "cmd/s", "p50 ms", "p99 ms", "RSS MiB", "peak MiB", "threads", "fds",
    "procs", "cgroups", "mounts", "errors", "hangs", "target", "verdict", "note",
]  # fmt: skip

TARGETS = ["round", "cmd/s", "p50 ms", "p99 ms", "RSS MiB", "fds", "errors", "hangs"]
TARGETS += ["target", "verdict"]

LAYOUT = Layout(
    title="sandlot soak",
    stem="soak",
    headers=HEADERS,
    cells=cells,
    targets=TARGETS,
    targets_heading="Rounds",
    reading="one row per round of the load in tests/soak/driver.py against one sandlot serve "
    "(SQLite unless said); cmd/s: the clients' commands over the time from the first to the "
    "last (creates and kills around them not counted); p50/p99: each command's wall time in "
    "the client; RSS, threads, fds: the server process once no sandbox is left; procs: its "
    "children and the processes in its cgroups then (0 expected); cgroups: folders of its "
    "state folder's scope, the scope included; mounts: lines of its mountinfo.",
    how_to_run=[
        "python benchmarks/bench_soak.py                # 45 minutes of rounds",
        "python benchmarks/bench_soak.py --rounds 2     # a short proof",
        "python benchmarks/bench_soak.py --help",
    ],
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--minutes", type=float, default=45, help="run rounds this long (default 45)")
    p.add_argument("--rounds", type=int, default=0, help="this many rounds instead (0: by time)")
    p.add_argument("--clients", type=int, default=32, help="clients running commands (32)")
    p.add_argument("--commands", type=int, default=50, help="commands per client (50)")
    p.add_argument("--streams", type=int, default=4, help="streaming clients (4)")
    p.add_argument("--stream-mib", type=int, default=16, help="MiB per stream (16)")
    p.add_argument("--churn", type=int, default=16, help="sandboxes made and killed in turn (16)")
    p.add_argument("--hogs", type=int, default=0, help="busy loops beside the server (0)")
    p.add_argument("--call-bound", type=float, default=120, help="seconds before a call hangs")
    p.add_argument("--retention", type=float, default=30, help="the server's retention (s)")
    p.add_argument("--database-url", default=None, help="a PostgreSQL URL (default: SQLite)")
    p.add_argument(
        "--postgres", action="store_true", help="a throwaway PostgreSQL cluster (tests/pg.py)"
    )
    p.add_argument("--target", type=float, default=150, help="commands/s per round, at least")
    p.add_argument(
        "--rest",
        type=float,
        default=95,
        help="seconds after the last round before the last measure",
    )
    add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.clients, args.commands = 2, 8, 10
        args.streams, args.stream_mib, args.churn, args.rest = 1, 4, 4, 5
    return args


def row_of(result: Any, target: float) -> Row:
    s = result.snapshot
    row = Row(
        "soak",
        str(result.round + 1),
        samples=[x * 1000 for x in result.latencies],
        rate=result.per_second,
        commands=result.commands,
        wall_s=result.wall_s,
        errors=len(result.errors),
        hangs=len(result.hangs),
        wedged=result.wedged,
        rss_mib=s.rss_kb / 1024,
        peak_mib=s.hwm_kb / 1024,
        threads=s.threads,
        fds=s.fds,
        procs=s.children + s.cgroup_procs,
        cgroup_folders=s.cgroup_folders,
        mounts=s.mounts,
        db=s.db,
        target=f">= {target:g}/s, 0 errors, 0 hangs",
    )
    row.ok = not row.errors and not row.hangs and row.rate >= target
    notes = [f"{result.wall_s:.0f} s"]
    if result.leftover:
        notes.append(f"left: {result.leftover}")
    if result.log_problems:
        notes.append(f"server log: {result.log_problems[0][:120]}")
    notes += [p[:160] for p in (result.hangs + result.errors)[:2]]
    row.note = "; ".join(notes)
    return row


def degradation(rows: list[Row], rested: Any, rest: float) -> Row:
    """The last round against the first (throughput, leftovers), and the server at rest
    after the load against the first round (RSS, descriptors)."""
    first, last = rows[0], rows[-1]
    row = Row("soak", f"{first.subject} -> {last.subject}, rest", target="no degradation")
    rss, fds = rested.rss_kb / 1024, rested.fds
    problems = []
    if first.rate and last.rate < MIN_RATE_SHARE * first.rate:
        problems.append(f"cmd/s {first.rate:.0f} -> {last.rate:.0f}")
    if rss > first.rss_mib * (1 + RSS_GROWTH):
        problems.append(f"RSS {first.rss_mib:.0f} -> {rss:.0f} MiB at rest")
    if fds > first.fds + FD_SLACK:
        problems.append(f"fds {first.fds} -> {fds} at rest")
    for name in ("procs", "cgroup_folders", "mounts"):
        if getattr(last, name) > getattr(first, name):
            problems.append(f"{name} {getattr(first, name)} -> {getattr(last, name)}")
    expired = last.db.get("expired_events", 0)
    if expired:
        problems.append(f"{expired} events kept beyond retention")
    row.ok = not problems
    row.rss_mib, row.peak_mib, row.fds = rss, rested.hwm_kb / 1024, fds
    row.threads, row.mounts, row.cgroup_folders = (
        rested.threads,
        rested.mounts,
        rested.cgroup_folders,
    )
    row.procs = rested.children + rested.cgroup_procs
    row.rate = last.rate
    row.note = "; ".join(problems) or (
        f"cmd/s {first.rate:.0f} -> {last.rate:.0f}; RSS {first.rss_mib:.0f} MiB after round "
        f"{first.subject}, {rss:.0f} MiB after {rest:g} s at rest; fds {first.fds} -> {fds}"
    )
    return row


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace, results: Results) -> None:
    # The clients run this checkout's SDK, like the server (not an installed sandlot).
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from soak.driver import Soak, SoakConfig  # type: ignore[import-not-found]

    config = SoakConfig(
        rounds=args.rounds,
        clients=args.clients,
        commands=args.commands,
        streams=args.streams,
        stream_mib=args.stream_mib,
        churn=args.churn,
        hogs=args.hogs,
        call_bound=args.call_bound,
        stream_bound=max(args.call_bound, 300.0),
        retention_seconds=args.retention,
        database_url=args.database_url,
    )
    soak = Soak(config)
    soak.start()
    idle = await soak.measure()
    results.notes.append(
        f"the server at start, idle: RSS {idle.rss_kb / 1024:.0f} MiB, {idle.threads} threads, "
        f"{idle.fds} fds; it imports sandlot from {soak.server_module()}, the clients from "
        f"{Path(sys.modules['sandlot'].__file__ or '?').parent.parent}"
    )
    rows: list[Row] = []
    stopped = ""
    deadline = time.monotonic() + args.minutes * 60
    try:
        number = 0
        while (number < args.rounds) if args.rounds else (time.monotonic() < deadline):
            result = await soak.round(number)
            log(result.line())
            rows.append(results.add(row_of(result, args.target)))
            number += 1
            if result.wedged or not soak.alive():
                stopped = f"stopped after round {number}: the server " + (
                    "is wedged" if soak.alive() else "died"
                )
                break
        if rows and not rows[-1].wedged and soak.alive():
            log(f"resting {args.rest:g} s before the last measure")
            rested = await soak.rest(args.rest)
            results.add(degradation(rows, rested, args.rest))
    finally:
        await soak.stop()
        if stopped:  # a wedged server's dead task says why only as it shuts down
            results.notes.append(f"{stopped}; its log ends: {soak.log_tail(700)!r}")
        shutil.rmtree(soak.home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("bwrap") is None:
        print("bubblewrap is not installed: run scripts/bench-setup.sh", file=sys.stderr)
        return 2
    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()
    results = Results()
    cluster = None
    if args.postgres:
        sys.path.insert(0, str(REPO / "tests"))
        from pg import Postgres, find_bindir  # type: ignore[import-not-found]

        bindir = find_bindir()
        if bindir is None:
            print("no PostgreSQL binaries: run scripts/setup.sh", file=sys.stderr)
            return 2
        cluster = Postgres(bindir)
        cluster.start()
        args.database_url = cluster.new_database()
    try:
        asyncio.run(run(args, results))
    finally:
        if cluster is not None:
            cluster.stop()
    results.notes.append(
        f"load: {args.clients} clients x {args.commands} commands, {args.streams} streams x "
        f"{args.stream_mib} MiB, {args.churn} churned sandboxes, {args.hogs} CPU hogs a round; "
        f"{'PostgreSQL' if args.database_url else 'SQLite'}; retention {args.retention:g} s"
    )
    versions = {**base_versions(), **{d: version_of(d) for d in ("fastapi", "uvicorn")}}
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = run_meta("bench_soak.py", argv, started, load0, commit, versions, args_json)
    report(results, meta, args, LAYOUT)
    return 0 if all(row.ok is not False for row in results.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
