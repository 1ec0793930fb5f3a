#!/usr/bin/env python
"""Controlled egress benchmarks: the allowlist proxy and the callback bridge vs direct loopback.

Sections:

  download  curl fetches --mib MiB over HTTP from an upstream on the host's loopback. Through
            the proxy: curl in a bwrap sandbox whose policy allows ``files.test`` (pinned to
            127.0.0.1), through HTTP_PROXY (the agent's loopback port, the channel, the
            host-side proxy). Baseline: the same curl on the host, straight to 127.0.0.1.
            For information: curl in the sandbox through a CONNECT tunnel (``curl -p``), and
            curl on the host through the same proxy code (``serve_proxy`` over plain sockets,
            in a process of its own). Interleaved rounds, MiB/s from curl's time_total.
            Target (issue 8): the proxied download at least 50% of the direct one's p50.
  bridge    a small GET per request on one keep-alive connection (stdlib http.client, timed
            per request with perf_counter): in the sandbox to $SANDLOT_BRIDGE_URL/ping with
            the bridge token, forwarded by the host to the upstream's /api/ping with the
            configured header. Baseline: the same script on the host, straight to the
            upstream's /api/ping. Interleaved batches of --requests requests.
            Target (issue 8): bridged p50 at most 2 ms above direct p50.
  connect   a new connection for each small GET (the same script): through the proxy and
            through the bridge from the sandbox, through the proxy code on the host, and
            direct. For information.

The upstream is one program for every path: a threaded raw-socket HTTP/1.1 server (keep-alive,
``/big/N`` sends N bytes, anything else a 4-byte body) run by the host's /usr/bin/python3 in a
process of its own; the clients run in processes of their own too (curl, python3).

    python benchmarks/bench_egress.py --max-load 1.5   # everything, about two minutes
    python benchmarks/bench_egress.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/egress-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
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

SECTIONS = ("download", "bridge", "connect")
MiB = 1024 * 1024
HOST_PYTHON = "/usr/bin/python3"  # the sandbox's python3 too (/usr is shared)
NAME = "files.test"
POLICY = {"allow": [NAME, "127.0.0.1"], "resolve": {NAME: "127.0.0.1"}}
NO_PROXY_ENV = {
    k: v
    for k, v in os.environ.items()
    if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
}

# The upstream: HTTP/1.1 with keep-alive; closes after a request that says Connection: close
# (the proxy's do). "/big/N" answers N zero bytes, sent from one 1 MiB buffer; else "pong".
UPSTREAM = r"""
import socket, sys, threading
CHUNK = memoryview(bytes(1 << 20))
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            method, path, version = lines[0].split(b" ", 2)
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip().lower()
            length = int(fields.get(b"content-length", 0))
            while len(buf) < length:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf[length:]
            close = fields.get(b"connection") == b"close" or version == b"HTTP/1.0"
            end = b"Connection: close\r\n\r\n" if close else b"\r\n"
            if path.startswith(b"/big/"):
                size = int(path[5:])
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                          b"Content-Length: %d\r\n" % size + end)
                left = size
                while left > 0:
                    left -= c.send(CHUNK[: min(len(CHUNK), left)])
            else:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                          b"Content-Length: 4\r\n" + end + b"pong")
            if close:
                return
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(128)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# The latency client, the same in the sandbox and on the host: "keep" sends N GETs on one
# connection (one more first, untimed, to open it), "new" opens a connection for each. With
# --proxy it sends absolute URIs to $http_proxy. $VARIABLES in the URL are expanded (the
# bridge's URL). Prints the samples in ms as JSON.
LATENCY = r"""
import http.client, json, os, sys, time, urllib.parse
mode, url, n = sys.argv[1], os.path.expandvars(sys.argv[2]), int(sys.argv[3])
u = urllib.parse.urlsplit(url)
if "--proxy" in sys.argv:
    p = urllib.parse.urlsplit(os.environ["http_proxy"])
    host, port, target = p.hostname, p.port, url
else:
    host, port, target = u.hostname, u.port, u.path
headers = {"Authorization": "Bearer " + os.environ.get("SANDLOT_BRIDGE_TOKEN", "x")}
def get(conn):
    conn.request("GET", target, headers=headers)
    answer = conn.getresponse()
    body = answer.read()
    if answer.status != 200:
        sys.exit(f"HTTP {answer.status}: {body[:300]!r}")
samples = []
clock = time.perf_counter
if mode == "keep":
    conn = http.client.HTTPConnection(host, port, timeout=30)
    get(conn)
    for _ in range(n):
        t = clock()
        get(conn)
        samples.append((clock() - t) * 1000)
    conn.close()
else:
    for _ in range(n):
        t = clock()
        conn = http.client.HTTPConnection(host, port, timeout=30)
        get(conn)
        samples.append((clock() - t) * 1000)
        conn.close()
print(json.dumps(samples))
"""

CURL = ["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{time_total} %{size_download}"]


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 99)

    section: str
    subject: str
    unit: str  # MiB/s | ms
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None  # p50 / the direct baseline's p50
    diff: float | None = None  # p50 - the direct baseline's p50 (ms rows)
    note: str = ""
    target: str = ""
    ok: bool | None = None
    failed: bool = False
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU per sample, by process


# --------------------------------------------------------------------------------------------
# the host side of the "same proxy code" rows: serve_proxy over plain sockets, in a process
# of its own (as the manager serves it in the SDK's process), with the sandbox's policy


def proxy_server() -> int:
    import asyncio

    from sandlot.channel.stream import SocketStream
    from sandlot.egress.policy import NetworkPolicy
    from sandlot.egress.proxy import serve_proxy

    policy = NetworkPolicy.model_validate(POLICY)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_proxy(SocketStream(reader, writer), lambda: policy)

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())
    return 0


# --------------------------------------------------------------------------------------------
# the benchmark


def _started(argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """A server process that prints its port when it listens."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"{argv[0]} did not start: {line!r}")
    return proc, int(line)


def _curl_rate(out: str, size: int) -> float:
    seconds, got = out.split()
    if int(got) != size:
        raise RuntimeError(f"curl read {got} bytes of {size}")
    return size / MiB / float(seconds)


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace, results: Results) -> None:
        super().__init__(args, results)
        self.sandbox: Any = None
        self.procs: list[subprocess.Popen] = []

    def _setup(self) -> None:
        if self.sandbox is not None:
            return
        upstream, self.port = _started([HOST_PYTHON, "-c", UPSTREAM])
        self.procs.append(upstream)
        proxy, self.proxy_port = _started([sys.executable, __file__, "--proxy-server"])
        self.procs.append(proxy)
        ours = {upstream.pid, proxy.pid}
        before = set(_descendants(os.getpid())) - ours
        self.sandbox = self.sandlot.Sandbox.create(
            timeout=3600,
            network=POLICY,
            bridge={
                "target": f"http://127.0.0.1:{self.port}/api",
                "headers": {"Authorization": "Bearer upstream-credential"},
                "routes": [["GET", "/ping"]],
            },
        )
        self.sandbox.files.write("/tmp/latency.py", LATENCY)
        # The sandbox's processes (bwrap, the agent; commands are the agent's children).
        self.sandbox_pids = [p for p in _descendants(os.getpid()) if p not in ours | before]
        self.upstream_pid, self.proxy_pid = upstream.pid, proxy.pid

    def _cpu(self) -> dict[str, float]:
        """CPU seconds so far: this process (the SDK and the manager, which serves the
        sandbox's proxy and bridge), the sandbox (its agent and the commands it ran and
        reaped), the upstream, the host-side proxy process, this process's reaped children
        (the host's clients)."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "this process": time.process_time(),
            "sandbox": sum(_proc_cpu(p, True) for p in self.sandbox_pids),
            "upstream": _proc_cpu(self.upstream_pid),
            "host proxy": _proc_cpu(self.proxy_pid),
            "host client": children.ru_utime + children.ru_stime,
        }

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        if self.sandbox is not None:
            self.sandbox.kill()

    # -- clients -----------------------------------------------------------------------------

    def _in_sandbox(self, argv: list[str] | str) -> str:
        result = self.sandbox.commands.run(argv, timeout=300)
        if result.exit_code != 0:
            raise RuntimeError(f"{argv!r}: exit {result.exit_code}: {result.stderr[-500:]}")
        return result.stdout

    def _on_host(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=300, env=env or NO_PROXY_ENV
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv!r}: exit {done.returncode}: {done.stderr[-500:]}")
        return done.stdout

    def _latency(self, where: str, mode: str, url: str, n: int, proxy: str | None) -> list[float]:
        argv = ["python3" if where == "sandbox" else HOST_PYTHON, "/tmp/latency.py"]
        argv += [mode, url, str(n)] + (["--proxy"] if proxy is not None else [])
        if where == "sandbox":
            return json.loads(self._in_sandbox(argv))
        argv[1:2] = ["-c", LATENCY]
        env = dict(NO_PROXY_ENV, http_proxy=proxy) if proxy else None
        return json.loads(self._on_host(argv, env))

    # -- the comparison ----------------------------------------------------------------------

    def _compare(
        self, section: str, unit: str, subjects: dict[str, Any], target: str, cpu: bool = False
    ) -> None:
        """Interleaved rounds over ``subjects`` (name -> one round's samples); the first is
        the one with the target, the last the direct baseline. One warm-up round first.
        With ``cpu``, each row's note says how much CPU each process used per sample."""
        self._setup()
        rows = {name: self.results.add(Row(section, name, unit)) for name in subjects}
        self.log(f"{section}: warm-up, then {self.args.rounds} rounds")
        for measure in subjects.values():
            measure()
        for name in shuffled_rounds(self.rng, list(rows), self.args.rounds):
            try:
                c0 = self._cpu() if cpu else {}
                samples = measure_list(subjects[name]())
                for k, v in (self._cpu() if cpu else {}).items():
                    rows[name].cpu_ms[k] = rows[name].cpu_ms.get(k, 0.0) + (v - c0[k]) * 1000
                rows[name].samples += samples
            except Exception as exc:
                rows[name].failed = True
                self.results.notes.append(f"{section}, {name}: {exc}")
                self.log(f"{section}, {name}: {exc}")
        for row in rows.values():
            if row.cpu_ms and row.samples:
                row.cpu_ms = {k: v / row.n for k, v in row.cpu_ms.items()}
                spent = [f"{k} {v:.0f}" for k, v in row.cpu_ms.items() if v >= 0.5]
                row.note = "CPU ms per sample: " + ", ".join(spent)
        base = list(rows.values())[-1]
        for row in list(rows.values())[:-1]:
            if row.p50 is None or not base.p50:
                continue
            row.ratio = row.p50 / base.p50
            if unit == "ms":
                row.diff = row.p50 - base.p50
        ours = next(iter(rows.values()))
        if ours.ratio is not None and target:
            ours.target = target
            if unit == "MiB/s":
                ours.ok = ours.ratio >= 0.5
            else:
                assert ours.diff is not None
                ours.ok = ours.diff <= 2.0

    def download(self) -> None:
        size = self.args.mib * MiB
        path = f"/big/{size}"
        via_name = f"http://{NAME}:{{port}}{path}"
        direct = f"http://127.0.0.1:{{port}}{path}"

        def sandbox(*extra: str) -> Any:
            def run() -> float:
                argv = [*CURL, *extra, via_name.format(port=self.port)]
                return _curl_rate(self._in_sandbox(argv), size)

            return run

        def host(url: str, *extra: str) -> Any:
            return lambda: _curl_rate(self._on_host([*CURL, *extra, url]), size)

        self._setup()
        hop = f"http://127.0.0.1:{self.proxy_port}"
        self._compare(
            "download",
            "MiB/s",
            {
                "sandbox curl, HTTP_PROXY": sandbox(),
                "sandbox curl, CONNECT tunnel (-p)": sandbox("-p"),
                "host curl, same proxy code over TCP": host(
                    via_name.format(port=self.port), "-x", hop
                ),
                "host curl, direct": host(direct.format(port=self.port), "--noproxy", "*"),
            },
            ">= 50% of direct",
            cpu=True,
        )

    def bridge(self) -> None:
        self._setup()
        n = self.args.requests
        self._compare(
            "bridge",
            "ms",
            {
                "sandbox, via the bridge (keep-alive)": lambda: self._latency(
                    "sandbox", "keep", "$SANDLOT_BRIDGE_URL/ping", n, None
                ),
                "host, direct (keep-alive)": lambda: self._latency(
                    "host", "keep", f"http://127.0.0.1:{self.port}/api/ping", n, None
                ),
            },
            "<= direct + 2 ms",
        )

    def connect(self) -> None:
        self._setup()
        n = self.args.connects
        via_name = f"http://{NAME}:{self.port}/ping"
        self._compare(
            "connect",
            "ms",
            {
                "sandbox, HTTP_PROXY (new connection)": lambda: self._latency(
                    "sandbox", "new", via_name, n, "env"
                ),
                "sandbox, via the bridge (new connection)": lambda: self._latency(
                    "sandbox", "new", "$SANDLOT_BRIDGE_URL/ping", n, None
                ),
                "host, same proxy code over TCP (new connection)": lambda: self._latency(
                    "host", "new", via_name, n, f"http://127.0.0.1:{self.proxy_port}"
                ),
                "host, direct (new connection)": lambda: self._latency(
                    "host", "new", f"http://127.0.0.1:{self.port}/ping", n, None
                ),
            },
            "",  # for information
        )


def _descendants(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _proc_cpu(pid: int, reaped: bool = False) -> float:
    """utime + stime (+ the reaped children's, with ``reaped``) of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11 : 15 if reaped else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure_list(value: float | list[float]) -> list[float]:
    return value if isinstance(value, list) else [value]


# --------------------------------------------------------------------------------------------
# output


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if unit == "MiB/s" else f"{value:.3f}"


def _versus(row: Row) -> str:
    if row.ratio is None:
        return ""
    if row.diff is not None:
        return f"{row.diff:+.3f} ms ({row.ratio:.0%})"
    return f"{row.ratio:.0%}"


HEADERS, table_cells = percentile_columns("vs direct", _versus, fmt_value)

LAYOUT = Layout(
    title="sandlot controlled egress",
    stem="egress",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p90", "vs direct", "target", "verdict"],
    targets_heading="Targets",
    reading="p50 / p90 / p99 over n samples (download: one per round; bridge, connect: every"
    " request of every batch); the subjects of a section were interleaved (every round runs"
    " each once, in a shuffled order, after one unrecorded warm-up round) against the same"
    " upstream program on the host's loopback. vs direct: the p50s' ratio, and for"
    " latencies their difference.",
    how_to_run=[
        "python benchmarks/bench_egress.py --max-load 1.5",
        "python benchmarks/bench_egress.py --help",
    ],
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--rounds", type=int, default=15, help="rounds per section (default 15)")
    p.add_argument("--mib", type=int, default=100, help="MiB per download (default 100)")
    p.add_argument(
        "--requests", type=int, default=200, help="bridge: requests per batch (default 200)"
    )
    p.add_argument(
        "--connects", type=int, default=20, help="connect: connections per batch (default 20)"
    )
    add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.mib, args.requests, args.connects = 3, 32, 50, 10
    args.sections = choose(p, args.sections, SECTIONS, "section")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fresh_sandlot_home("slb-egress-")
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
    meta = run_meta("bench_egress.py", argv, started, load0, commit, base_versions(), args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--proxy-server"]:
        sys.exit(proxy_server())
    sys.exit(main())
