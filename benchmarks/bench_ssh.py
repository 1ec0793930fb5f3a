#!/usr/bin/env python
"""ssh provider benchmarks: a sandbox on a host reached over SSH next to plain asyncssh on the
same server, measured side by side in one run.

Sections:

  warm   ``sb.commands.run("true")`` in a live ssh sandbox (bwrap on the remote host; also
         unisolated, and the async SDK) vs ``await conn.run("true")`` on an already-open
         asyncssh connection to the same sshd. root's login shell here runs pyenv's init
         (~160 ms), so the target (sandlot p50 at most 1.5x) is checked against a lean exec,
         ``conn.run("true", env={"SHLVL": "1"})``, which makes bash skip ``.bashrc``. A floor:
         one line echoed by ``cat`` on an open exec channel (the SSH round trip alone).
  cold   ``Sandbox.create()`` + ``commands.run("true")`` + ``kill()`` on an open connection,
         bwrap and unisolated (no target); the first sandbox of a new connection (SSH
         handshake and the remote helper's start included) and the very first one on a host
         (the agent's upload too).

The server is ``tests/ssh_env.py``'s: a real OpenSSH sshd in its own network namespace on this
machine, reached over a veth pair, logging in as the current user (root here, whose
``.bashrc`` initialises pyenv: every exec, conn.run's included, pays for that login shell).
Compared subjects are interleaved (every round runs each once, in a shuffled order).

    python benchmarks/bench_ssh.py                 # everything, about a minute
    python benchmarks/bench_ssh.py --sections warm --warm-iters 2000
    python benchmarks/bench_ssh.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/ssh-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when not run as a script
from _common import (
    REPO,
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
    tool_version,
    version_of,
)

SECTIONS = ("warm", "cold")
PYTHON = "/usr/bin/python3"  # the login shell's PATH starts with a pyenv shim


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 99)

    section: str
    subject: str
    unit: str  # ms
    samples: list[float] = field(default_factory=list)
    note: str = ""
    baseline: str | None = None
    target: str = ""
    ok: bool | None = None
    ratio50: float | None = None
    ratio90: float | None = None
    failed: bool = False

    def fail(self, why: str) -> None:
        self.failed = True
        self.note = f"{self.note}; {why}" if self.note else why


def compare(row: Row, base: Row, target: float | None = None) -> None:
    if not row.samples or not base.samples:
        return
    row.baseline = base.subject
    b50, b90, r50, r90 = base.p(50), base.p(90), row.p(50), row.p(90)
    assert b50 and b90 and r50 is not None and r90 is not None
    row.ratio50, row.ratio90 = r50 / b50, r90 / b90
    if target is not None:
        row.target = f"p50 ≤ {target:g}x lean conn.run"
        row.ok = row.ratio50 <= target


def guarded(section: Callable[[Bench], None]) -> Callable[[Bench], None]:
    """A section that raises becomes a failed row and a note; the run goes on."""

    @functools.wraps(section)
    def run(self: Bench) -> None:
        try:
            section(self)
        except Exception as exc:
            traceback.print_exc()
            name = section.__name__
            row = self.results.add(Row(name, f"{name}: the section failed", ""))
            row.fail(f"{type(exc).__name__}: {exc}"[:400])

    return run


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace, results: Results, server: Any) -> None:
        super().__init__(args, results)
        self.server = server
        self.remote_dir = tempfile.mkdtemp(prefix="slb-ssh-", dir="/tmp")
        self.conn: Any = None

    def settings(self, isolation: str, remote_dir: str | None = None) -> dict[str, Any]:
        return self.server.provider_config(
            python=PYTHON, remote_dir=remote_dir or self.remote_dir, isolation=isolation
        )

    def start(self) -> None:
        import asyncssh

        s = self.server
        self.conn = self.arun(
            asyncssh.connect(
                s.host,
                port=s.port,
                username=s.user,
                client_keys=[str(s.client_key)],
                known_hosts=str(s.known_hosts),
                config=[],
            )
        )

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.arun(self.conn.wait_closed())
        shutil.rmtree(self.remote_dir, ignore_errors=True)

    # -- warm ---------------------------------------------------------------------------------

    @guarded
    def warm(self) -> None:
        a, R, S = self.args, self.results, self.sandlot
        self.log(f"warm round trip: {a.warm_iters} rounds")
        names = {
            "bwrap": 'sandlot (bwrap): sb.commands.run("true")',
            "none": 'sandlot (unisolated): sb.commands.run("true")',
            "async": 'sandlot (bwrap) async: await sb.commands.run("true")',
            "conn.run": 'asyncssh: await conn.run("true") on an open connection',
            "lean": 'asyncssh: await conn.run("true", env={"SHLVL": "1"}): no .bashrc',
            "echo": "floor: a line echoed by cat on an open exec channel",
        }
        rows = {key: R.add(Row("warm", name, "ms")) for key, name in names.items()}
        boxes = {
            "bwrap": S.Sandbox.create(provider="ssh", **self.settings("bwrap")),
            "none": S.Sandbox.create(provider="ssh", **self.settings("none")),
        }
        abox = self.arun(S.AsyncSandbox.create(provider="ssh", **self.settings("bwrap")))
        cat = self.arun(self.conn.create_process("cat", encoding=None))

        async def conn_run() -> None:
            result = await self.conn.run("true")
            assert result.exit_status == 0, result

        async def lean_run() -> None:
            result = await self.conn.run("true", env={"SHLVL": "1"})
            assert result.exit_status == 0, result

        async def echo() -> None:
            cat.stdin.write(b"x\n")
            assert await cat.stdout.readline() == b"x\n"

        async def async_run() -> None:
            result = await abox.commands.run("true")
            assert result.exit_code == 0

        calls = {"conn.run": conn_run, "lean": lean_run, "echo": echo, "async": async_run}

        def once(key: str) -> float:
            t = now()
            if key in boxes:
                assert boxes[key].commands.run("true").exit_code == 0
            else:
                self.arun(calls[key]())
            return now() - t

        try:
            for key in shuffled_rounds(self.rng, list(rows), a.warm_warmup):
                once(key)
            for key in shuffled_rounds(self.rng, list(rows), a.warm_iters):
                rows[key].samples.append(once(key) * 1000)
        finally:
            cat.close()
            for box in boxes.values():
                box.kill()
            self.arun(abox.kill())
        # The target is checked against the lean exec (the stricter baseline); the ratio to
        # the plain one (this machine's root login runs pyenv's init) is in the note.
        for key in ("bwrap", "none", "async"):
            compare(rows[key], rows["lean"], a.target)
            r50, plain = rows[key].p(50), rows["conn.run"].p(50)
            if r50 is not None and plain:
                rows[key].note = f"{r50 / plain:.3f}x the plain conn.run p50"
        rows["lean"].note = "bash skips ~/.bashrc when SHLVL is set (sshd: AcceptEnv SHLVL)"
        rows["echo"].note = "the SSH channel's round trip: no process, no login shell"
        rows["conn.run"].note = "a new session channel, sshd's fork, the login shell (.bashrc)"

    # -- cold ---------------------------------------------------------------------------------

    @guarded
    def cold(self) -> None:
        a, R, S = self.args, self.results, self.sandlot
        self.log(f"cold start: {a.cold_iters} rounds")
        rows: dict[str, dict[str, Row]] = {}
        for isolation in ("bwrap", "none"):
            label = "bwrap" if isolation == "bwrap" else "unisolated"
            rows[isolation] = {
                "total": R.add(
                    Row("cold", f'{label}: create() + run("true") + kill(), open connection', "ms")
                ),
                "create": R.add(Row("cold", f"{label}: of which create()", "ms")),
                "run": R.add(Row("cold", f'{label}: of which the first run("true")', "ms")),
                "kill": R.add(Row("cold", f"{label}: of which kill()", "ms")),
            }

        def once(isolation: str, record: bool = True) -> None:
            t0 = now()
            box = S.Sandbox.create(provider="ssh", **self.settings(isolation))
            t1 = now()
            box.commands.run("true")
            t2 = now()
            box.kill()
            t3 = now()
            if record:
                row = rows[isolation]
                row["total"].samples.append((t3 - t0) * 1000)
                row["create"].samples.append((t1 - t0) * 1000)
                row["run"].samples.append((t2 - t1) * 1000)
                row["kill"].samples.append((t3 - t2) * 1000)

        for isolation in shuffled_rounds(self.rng, list(rows), 2):
            once(isolation, record=False)
        for isolation in shuffled_rounds(self.rng, list(rows), a.cold_iters):
            once(isolation)

        # A new manager each time: a new SSH connection and helper (no upload: already there).
        first = R.add(Row("cold", "first sandbox of a new connection (bwrap): create()", "ms"))
        first.note = "SSH handshake + the remote helper's start (a login shell) + create"
        upload = R.add(Row("cold", "first sandbox on a host (bwrap): create()", "ms"))
        upload.note = "as above, plus the agent's upload (once per version)"
        from sandlot.manager import Manager

        async def fresh(remote_dir: str | None) -> float:
            manager = Manager()
            spec = S.SandboxSpec(provider="ssh", config=self.settings("bwrap", remote_dir))
            try:
                t = now()
                live = await manager.create(spec)
                elapsed = now() - t
                await manager.kill(live.info.id)
            finally:
                await manager.close()
                await manager.provider("ssh").close()  # type: ignore[attr-defined]
            return elapsed

        for _ in range(a.first_iters):
            first.samples.append(self.arun(fresh(None)) * 1000)
            scratch = tempfile.mkdtemp(prefix="slb-ssh-", dir="/tmp")
            try:
                upload.samples.append(self.arun(fresh(scratch)) * 1000)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# output


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def fmt_versus(row: Row) -> str:
    if row.ratio50 is None:
        return "-"
    return f"{row.ratio50:.2f}x / {row.ratio90:.2f}x"


VERSUS = "vs lean conn.run (p50 / p90)"
HEADERS, table_cells = percentile_columns(VERSUS, fmt_versus, fmt_value)

LAYOUT = Layout(
    title="ssh provider: a sandbox over SSH vs asyncssh on the same server",
    stem="ssh",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p90", VERSUS, "target", "verdict"],
    targets_heading="Targets",
    reading="p50 / p90 / p99 over n samples. 'vs lean conn.run': the row's p50 and p90 over"
    ' those of `await conn.run("true", env={"SHLVL": "1"})` on an open asyncssh connection'
    " (an exec whose login shell skips root's .bashrc, which runs pyenv's init here: the plain"
    " conn.run row pays for it), measured in the same run,"
    " interleaved (each round runs every subject once, in a shuffled order). The sshd runs in"
    " a network namespace on this machine (tests/ssh_env.py), so the network is a veth pair;"
    " on a real network each row adds about one round trip per request.",
    how_to_run=[
        "# needs asyncssh (pip install 'sandlot[ssh]'), /usr/sbin/sshd, bubblewrap; as root",
        "python benchmarks/bench_ssh.py",
        "python benchmarks/bench_ssh.py --help",
    ],
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--warm-iters", type=int, default=300, help="rounds of 5 (default 300)")
    p.add_argument("--warm-warmup", type=int, default=10, help="unrecorded rounds (default 10)")
    p.add_argument("--target", type=float, default=1.5, help="sandlot / conn.run p50 (1.5)")
    p.add_argument("--cold-iters", type=int, default=30, help="create + kill rounds (30)")
    p.add_argument("--first-iters", type=int, default=3, help="fresh connections (default 3)")
    add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.warm_iters, args.warm_warmup, args.cold_iters, args.first_iters = 30, 3, 4, 1
    args.sections = choose(p, args.sections, SECTIONS, "section")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM unwinds like an exception: sshd, its namespace and the sandboxes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()
    fresh_sandlot_home("slb-ssh-home-")
    sys.path.insert(0, str(REPO / "tests"))
    from ssh_env import SshServer  # type: ignore[import-not-found]

    results = Results()
    server = SshServer()
    t = now()
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        server.stop()
        print(f"could not start sshd: {exc}", file=sys.stderr)
        return 1
    setup = Row("setup", "sshd: start until it answers", "ms", [(now() - t) * 1000])
    setup.note = f"{server.user}@{server.host}:{server.port}, netns {server.netns or 'none'}"
    results.add(setup)
    bench: Bench | None = None
    try:
        bench = Bench(args, results, server)
        bench.start()
        bench.run_sections()
    finally:
        if bench is not None:
            bench.stop()
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
    results.note_load()
    versions = {
        **base_versions(),
        "asyncssh": version_of("asyncssh"),
        "openssh": tool_version(["/usr/sbin/sshd", "-V"]) or tool_version(["ssh", "-V"]),
    }
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = run_meta("bench_ssh.py", argv, started, load0, commit, versions, args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
