#!/usr/bin/env python
"""Exposed-port benchmarks: TCP throughput through ``sb.expose(port)`` vs a direct loopback copy.

Sections:

  download  a server in a bwrap sandbox sends --mib MiB down one connection; the client on the
            host reads it through the exposed port (the sandbox's network is off: the bytes
            ride the agent's channel). Baseline: the same server program run on the host,
            read directly over 127.0.0.1. Interleaved rounds, MiB/s per round.
            Target (issue 5): at least 50% of the direct copy's p50.
  upload    the same the other way: the client sends --mib MiB, the server in the sandbox
            reads it all and answers one byte. For information.
  connect   a new connection's round trip (connect, send 1 byte, get 1 byte back), through the
            exposed port vs direct. For information.

    python benchmarks/bench_ports.py                  # everything, about a minute
    python benchmarks/bench_ports.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/ports-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.parse
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

SECTIONS = ("download", "upload", "connect")
MiB = 1024 * 1024
SANDBOX_PORT = 7000

# One program for both sides: "down N" sends N bytes and closes; "up" reads to EOF, answers
# one byte; "ping" echoes one byte. It runs with the sandbox's python3 and the host's alike.
SERVER = r"""
import socket, sys, threading
CHUNK = bytes(1 << 20)
def serve(c):
    mode = c.recv(64).split()
    if mode[0] == b"down":
        left = int(mode[1])
        while left > 0:
            left -= c.send(CHUNK[: min(len(CHUNK), left)])
    elif mode[0] == b"up":
        c.sendall(b"k")
        while c.recv(1 << 20):
            pass
        c.sendall(b"!")
    else:
        c.sendall(b"p")
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 99)

    section: str
    subject: str
    unit: str  # MiB/s | ms
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None  # p50 / the direct copy's p50
    note: str = ""
    target: str = ""
    ok: bool | None = None
    failed: bool = False


# --------------------------------------------------------------------------------------------
# clients (the same code for both paths), each run in a process of its own as a real client
# would be: in this process it would share the GIL with the SDK's event loop thread


def in_process(function: str, *args: object) -> float:
    done = subprocess.run(
        [sys.executable, __file__, "--client", function, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-500:])
    return float(done.stdout)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=60)


def download(port: int, size: int) -> float:
    """MiB/s of reading ``size`` bytes."""
    buffer = bytearray(1 << 20)
    with _connect(port) as conn:
        start = now()
        conn.sendall(f"down {size}".encode())
        got = 0
        while True:
            n = conn.recv_into(buffer)
            if not n:
                break
            got += n
        elapsed = now() - start
    if got != size:
        raise RuntimeError(f"read {got} bytes of {size}")
    return size / MiB / elapsed


def upload(port: int, size: int) -> float:
    chunk = bytes(1 << 20)
    with _connect(port) as conn:
        conn.sendall(b"up")
        if conn.recv(1) != b"k":
            raise RuntimeError("the server did not start reading")
        start = now()
        left = size
        while left > 0:
            left -= conn.send(chunk[: min(len(chunk), left)])
        conn.shutdown(socket.SHUT_WR)
        if conn.recv(1) != b"!":
            raise RuntimeError("the server did not confirm the upload")
        return size / MiB / (now() - start)


def ping(port: int) -> float:
    start = now()
    with _connect(port) as conn:
        conn.sendall(b"ping")
        if conn.recv(1) != b"p":
            raise RuntimeError("no answer")
    return (now() - start) * 1000


# --------------------------------------------------------------------------------------------
# the two servers


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace, results: Results) -> None:
        super().__init__(args, results)
        self.sandbox: Any = None
        self.host_server: subprocess.Popen[str] | None = None

    def _setup(self) -> tuple[int, int]:
        """(exposed port, direct port), both served by the same program."""
        if self.sandbox is None:
            self.sandbox = self.sandlot.Sandbox.create(timeout=3600)
            self.sandbox.files.write("/tmp/server.py", SERVER)
            self.sandbox.commands.run(
                f"python3 /tmp/server.py {SANDBOX_PORT}", background=True, timeout=None
            )
            self.exposed = urllib.parse.urlsplit(self.sandbox.expose(SANDBOX_PORT)).port
            with socket.socket() as probe:  # a free host port for the direct copy
                probe.bind(("127.0.0.1", 0))
                self.direct = probe.getsockname()[1]
            self.host_server = subprocess.Popen(
                ["/usr/bin/python3", "-c", SERVER, str(self.direct)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self.host_server.stdout is not None
            self.host_server.stdout.readline()
            for _ in range(400):  # the sandbox's server starts in the background
                try:
                    ping(self.exposed)
                    break
                except (OSError, RuntimeError):
                    time.sleep(0.025)
        assert self.exposed is not None
        return self.exposed, self.direct

    def close(self) -> None:
        if self.host_server is not None:
            self.host_server.kill()
            self.host_server.wait()
        if self.sandbox is not None:
            self.sandbox.kill()

    def _compare(self, section: str, unit: str, measure: Any, higher_is_better: bool) -> None:
        exposed, direct = self._setup()
        rows = {
            "sb.expose (through the channel)": self.results.add(Row(section, "sandlot", unit)),
            "direct loopback": self.results.add(Row(section, "direct", unit)),
        }
        rows["sb.expose (through the channel)"].subject = "sandlot exposed port"
        rows["direct loopback"].subject = "direct loopback TCP"
        ports = {"sb.expose (through the channel)": exposed, "direct loopback": direct}
        self.log(f"{section}: {self.args.rounds} rounds")
        for name in shuffled_rounds(self.rng, list(rows), self.args.rounds):
            rows[name].samples.append(measure(ports[name]))
        ours, base = rows["sb.expose (through the channel)"], rows["direct loopback"]
        if ours.p50 and base.p50:
            ours.ratio = ours.p50 / base.p50
            if section == "download":
                ours.target = ">= 50% of direct"
                ours.ok = ours.ratio >= 0.5
            elif not higher_is_better:
                ours.note = f"{ours.p50 - base.p50:+.2f} ms"

    def download(self) -> None:
        size = self.args.mib * MiB
        self._compare("download", "MiB/s", lambda port: in_process("download", port, size), True)

    def upload(self) -> None:
        size = self.args.mib * MiB
        self._compare("upload", "MiB/s", lambda port: in_process("upload", port, size), True)

    def connect(self) -> None:
        self._compare("connect", "ms", lambda port: in_process("ping", port), False)


# --------------------------------------------------------------------------------------------
# output


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if unit == "MiB/s" else f"{value:.3f}"


def _ratio(row: Row) -> str:
    return f"{row.ratio:.0%}" if row.ratio is not None else ""


HEADERS, table_cells = percentile_columns("vs direct", _ratio, fmt_value)

LAYOUT = Layout(
    title="sandlot exposed ports",
    stem="ports",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p90", "vs direct", "target", "verdict"],
    targets_heading="Targets",
    reading="p50 / p90 / p99 over n rounds; the exposed port and the direct copy were"
    " interleaved (every round runs both, in a shuffled order) against the same server"
    " program, in a bwrap sandbox and on the host. vs direct: the p50s' ratio.",
    how_to_run=["python benchmarks/bench_ports.py", "python benchmarks/bench_ports.py --help"],
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--rounds", type=int, default=15, help="rounds per section (default 15)")
    p.add_argument("--mib", type=int, default=512, help="MiB per transfer (default 512)")
    add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.mib = 3, 64
    args.sections = choose(p, args.sections, SECTIONS, "section")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fresh_sandlot_home("slb-ports-")
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
    meta = run_meta("bench_ports.py", argv, started, load0, commit, base_versions(), args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:  # one measurement, for in_process
        client = {"download": download, "upload": upload, "ping": ping}[sys.argv[2]]
        print(client(*(int(a) for a in sys.argv[3:])))  # type: ignore[operator]
        sys.exit(0)
    sys.exit(main())
