#!/usr/bin/env python
"""Docker provider benchmark: a sandbox's cold start on Docker next to Docker's own CLI and
the Docker-based peers, all on the same engine and the same local image, in one run.

Section:

  cold   ``AsyncSandbox.create(provider="docker", image=IMAGE)`` + ``commands.run("true")`` +
         ``kill``, vs ``docker run --rm --network none --init IMAGE true`` (the CLI, a
         subprocess). Target (issue 5): sandlot's p50 at most 1.1x the CLI's. Next to them:
         llm-sandbox (Docker backend, with an init, no network: open + ``true`` + close) and
         SWE-ReX's ``DockerDeployment`` (start + bash session + ``true`` + stop) when it can
         run on the image at all; when it cannot, its row says exactly why.

sandlot's ``kill`` returns once the container is marked dead and its removal is on its way
(the engine takes ~65 ms to stop a container, which nobody waits for); ``docker run --rm``
returns after the removal. So the table also has sandlot *with* the removal (the same runs,
timed until the manager's ``settle()`` returned), for a like-for-like reading. Between
subjects every background removal is awaited untimed, so each sample starts on an idle
engine.

Subjects are interleaved: each round runs every subject once, in a shuffled order. Peers run
in worker processes (their imports stay out of this one), driven one operation at a time.

    python tests/docker_env.py                # dockerd and the local images (once)
    python benchmarks/bench_docker.py         # 15 rounds, about a minute
    python benchmarks/bench_docker.py --rounds 30 --peers llm-sandbox
    python benchmarks/bench_docker.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/docker-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import shutil
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
    WorkerProcess,
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
    serve_worker,
    shuffled_rounds,
    tool_version,
    version_of,
)

SECTIONS = ("cold",)
PEERS = ("llm-sandbox", "swerex")
DEFAULT_IMAGE = "sandlot-test-bookworm:v2"  # tests/docker_env.py builds it
LABEL = "sandlot-bench=1"
TARGET = 1.1  # sandlot's p50 over `docker run --rm`'s


# --------------------------------------------------------------------------------------------
# rows


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 99)

    section: str
    subject: str
    unit: str = "ms"
    samples: list[float] = field(default_factory=list)
    note: str = ""
    target: str = ""
    ok: bool | None = None
    ratio50: float | None = None
    ratio90: float | None = None
    skipped: bool = False
    failed: bool = False


def compare(row: Row, base: Row, limit: float | None = None) -> None:
    """p50 and p90 of row over base's; the verdict (if a limit is given) checks p50."""
    if not row.samples or not base.samples:
        return
    b50, b90 = base.p(50), base.p(90)
    row.ratio50 = row.p(50) / b50 if b50 else None  # type: ignore[operator]
    row.ratio90 = row.p(90) / b90 if b90 else None  # type: ignore[operator]
    if limit is not None and row.ratio50 is not None:
        row.target = f"p50 ≤ {limit:g}x docker run --rm"
        row.ok = row.ratio50 <= limit


# --------------------------------------------------------------------------------------------
# peers, each in a worker process


class PeerUnavailable(Exception):
    pass


def docker_binary() -> str | None:
    # Debian's docker.io client matches its engine; prefer it over other clients on PATH.
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    return shutil.which("docker")


class LlmSandboxPeer:
    """llm-sandbox's Docker backend on the local image: open + ``true`` + close."""

    def __init__(self, image: str) -> None:
        self.image = image

    def setup(self) -> dict[str, Any]:
        try:
            from llm_sandbox import SandboxSession
        except ImportError as exc:
            raise PeerUnavailable(f"not installed ({exc}); pip install llm-sandbox") from None
        self.SandboxSession = SandboxSession
        return {"version": version_of("llm-sandbox")}

    def cold(self) -> float:
        t = now()
        # An init as PID 1, or its close waits 10 s for SIGTERM to time out; the imported
        # image has no CMD, so give it one that idles. No pull: the image is local.
        session = self.SandboxSession(
            lang="python",
            image=self.image,
            skip_environment_setup=True,
            runtime_configs={
                "init": True,
                "network_mode": "none",
                "command": ["sleep", "infinity"],
                "labels": {"sandlot-bench": "1"},
            },
        )
        session.open()
        result = session.execute_command("true")
        if result.exit_code != 0:
            raise RuntimeError(f"`true` exited {result.exit_code}")
        session.close()
        return now() - t

    def close(self) -> None:
        pass


class SweRexPeer:
    """SWE-ReX's DockerDeployment on the local image: start + bash session + ``true`` +
    stop. It runs ``swerex-remote`` inside the container (or pip-installs it with pipx) and
    reaches it over a published TCP port: a python-only image without network has neither;
    ``setup`` tries once and reports what happened."""

    def __init__(self, image: str) -> None:
        self.image = image

    def setup(self) -> dict[str, Any]:
        try:
            from swerex.deployment.docker import DockerDeployment
            from swerex.runtime.abstract import BashAction, CreateBashSessionRequest
        except ImportError as exc:
            raise PeerUnavailable(f"not installed ({exc}); pip install swe-rex aiohttp") from None
        self.DockerDeployment = DockerDeployment
        self.BashAction, self.CreateBashSessionRequest = BashAction, CreateBashSessionRequest
        self.logger = logging.getLogger("bench.swerex")
        self.logger.setLevel(logging.CRITICAL)
        self.loop = asyncio.new_event_loop()
        try:
            self.cold()  # the first start is the test: can it run on this image at all?
        except Exception as exc:
            raise PeerUnavailable(
                "SWE-ReX runs its server (swerex-remote) inside the container, or installs it"
                " there with pip + pipx from PyPI, and reaches it over a published TCP port;"
                f" {self.image} has Python but not swerex-remote (its pip refuses to install"
                " into Debian's system Python), and a sandbox without network cannot publish a"
                f" port. Tried once (bridge network): {exc}"
            ) from None
        return {"version": version_of("swe-rex")}

    async def _cold(self) -> float:
        t = now()
        # Its port is published with -p, so no --network none here (it would not be reachable).
        deployment = self.DockerDeployment(
            image=self.image,
            pull="never",
            startup_timeout=60,
            docker_args=["--init", "--label", LABEL],
            logger=self.logger,
        )
        try:
            await deployment.start()
            await deployment.runtime.create_session(self.CreateBashSessionRequest())
            obs = await deployment.runtime.run_in_session(self.BashAction(command="true"))
            if obs.exit_code != 0:
                raise RuntimeError(f"`true` exited {obs.exit_code}")
        except Exception as exc:
            raise RuntimeError(_first_lines(str(exc))) from None
        finally:
            with contextlib.suppress(Exception):
                await deployment.stop()
        return now() - t

    def cold(self) -> float:
        return self.loop.run_until_complete(self._cold())

    def close(self) -> None:
        self.loop.close()


def _first_lines(text: str, limit: int = 400) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines)[:limit]


PEER_CLASSES: dict[str, Any] = {"llm-sandbox": LlmSandboxPeer, "swerex": SweRexPeer}


def worker_main(kind: str, image: str) -> int:
    def start() -> tuple[Any, dict[str, Any]]:
        peer = PEER_CLASSES[kind](image)
        return peer, peer.setup()

    return serve_worker(start, PeerUnavailable)


class PeerProcess(WorkerProcess):
    gone = PeerUnavailable
    quit_timeout = 60

    def __init__(self, kind: str, image: str, timeout: float, logdir: Path) -> None:
        self.kind = kind
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--image", image]
        super().__init__(argv, timeout, logdir / f"{kind}.log")


# --------------------------------------------------------------------------------------------
# the benchmark


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace, results: Results, logdir: Path) -> None:
        super().__init__(args, results)
        self.logdir = logdir
        self.docker = docker_binary()
        self.peers: dict[str, PeerProcess] = {}

    def docker_run(self) -> float:
        assert self.docker is not None
        argv = [self.docker, "run", "--rm", "--network", "none", "--init", "--label", LABEL]
        t = now()
        subprocess.run([*argv, self.args.image, "true"], check=True, stdin=subprocess.DEVNULL)
        return now() - t

    async def sandlot_once(self) -> tuple[float, float, float]:
        """(create + run + kill, the same + the container's removal, create alone)."""
        from sandlot.manager import Manager

        S = self.sandlot
        t0 = now()
        sb = await S.AsyncSandbox.create(provider="docker", image=self.args.image, pull="never")
        t1 = now()
        r = await sb.commands.run("true")
        await sb.kill()
        t2 = now()
        await Manager.current().settle()  # the background removal, which docker run --rm waits for
        t3 = now()
        if r.exit_code != 0:
            raise RuntimeError(f"sandlot: `true` exited {r.exit_code}: {r.stderr}")
        return t2 - t0, t3 - t0, t1 - t0

    def warm_up(self) -> None:
        """Untimed: sandlot's imports (aiodocker), its agent copy and the manager's start-up
        gc; the engine's first start of the image; each peer's start-up."""
        self.arun(self.sandlot_once())
        self.docker_run()
        for kind in self.args.peers:
            proc = PeerProcess(kind, self.args.image, self.args.peer_timeout, self.logdir)
            self.peers[kind] = proc
            if proc.dead is None:
                with contextlib.suppress(Exception):
                    proc.call("cold")

    def cold(self) -> None:
        a, R = self.args, self.results
        self.log(f"cold start: {a.rounds} rounds")
        rows = {
            "sandlot": Row(
                "cold",
                'sandlot docker: create + run("true") + kill (removal in the background)',
            ),
            "docker": Row("cold", "docker run --rm --network none --init IMAGE true (CLI)"),
            "sandlot+rm": Row(
                "cold", "sandlot docker: the same, until the container is removed (settle)"
            ),
            "create": Row("cold", "sandlot docker: create alone (part of the first row)"),
            "llm-sandbox": Row(
                "cold", "llm-sandbox (docker, init, no network): open + `true` + close"
            ),
            "swerex": Row("cold", "SWE-ReX DockerDeployment: start + session + `true` + stop"),
        }
        subjects = ["sandlot", "docker"]
        for kind in PEERS:
            proc = self.peers.get(kind)
            row = rows[kind]
            if proc is None:
                row.skipped, row.note = True, "skipped: not selected (--peers)"
            elif proc.dead is not None:
                row.skipped, row.note = True, f"skipped: {proc.dead}"
            else:
                subjects.append(kind)
        for subject in shuffled_rounds(self.rng, subjects, a.rounds):
            gc.collect()
            try:
                if subject == "sandlot":
                    total, removed, created = self.arun(self.sandlot_once())
                    rows["sandlot"].samples.append(total * 1000)
                    rows["sandlot+rm"].samples.append(removed * 1000)
                    rows["create"].samples.append(created * 1000)
                elif subject == "docker":
                    rows["docker"].samples.append(self.docker_run() * 1000)
                else:
                    rows[subject].samples.append(self.peers[subject].call("cold") * 1000)
            except Exception as exc:
                row = rows[subject]
                row.failed = True
                row.note = f"failed after {row.n} samples: {exc}"[:300]
                if subject in self.peers:
                    subjects.remove(subject)
            time.sleep(0.2)  # let the engine finish what the last subject left behind
        base = rows["docker"]
        compare(rows["sandlot"], base, TARGET)
        for name in ("sandlot+rm", "llm-sandbox", "swerex"):
            compare(rows[name], base)
        rows["sandlot+rm"].note = "like for like with docker run --rm, which waits for the removal"
        for row in rows.values():
            R.add(row)

    def close(self) -> None:
        for proc in self.peers.values():
            proc.close()
        if self.docker:
            ids = subprocess.run(
                [self.docker, "ps", "-aq", "--filter", f"label={LABEL}"],
                capture_output=True,
                text=True,
            ).stdout.split()
            if ids:
                subprocess.run([self.docker, "rm", "-f", *ids], capture_output=True)


# --------------------------------------------------------------------------------------------
# output


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _ratio(row: Row) -> str:
    if row.ratio50 is None:
        return "-"
    r90 = f" / {row.ratio90:.2f}x" if row.ratio90 is not None else ""
    return f"{row.ratio50:.2f}x{r90}"


COMPARED = "vs docker run --rm (p50 / p90)"
HEADERS, table_cells = percentile_columns(COMPARED, _ratio, fmt_value)

LAYOUT = Layout(
    title="sandlot docker provider: cold start",
    stem="docker",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "p90", COMPARED, "target", "verdict"],
    targets_heading="Target (issue 5)",
    reading="p50 / p90 / p99 over n samples (with small n, p99 is close to the maximum); ratios"
    " are this row's p50 / p90 over `docker run --rm`'s, from this run. Subjects were"
    " interleaved: each round runs every subject once, in a shuffled order, with every"
    " background removal awaited (untimed) between subjects. Same engine, same local image.",
    how_to_run=[
        "python tests/docker_env.py                   # dockerd and the local images",
        "python benchmarks/bench_docker.py",
        "python benchmarks/bench_docker.py --help",
    ],
)


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated subset of {','.join(PEERS)} (default: all)",
    )
    p.add_argument("--no-peers", action="store_true", help="sandlot and docker run only")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"image (default {DEFAULT_IMAGE})")
    p.add_argument(
        "--peer-timeout",
        type=float,
        default=180,
        help="seconds a peer operation may take before its worker is killed (default 180)",
    )
    add_run_options(p)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 3
    args.sections = choose(p, args.sections, SECTIONS, "section")
    args.peers = [] if args.no_peers else choose(p, args.peers, PEERS, "peer")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.image)
    docker = docker_binary()
    if docker is None:
        print("no docker client: apt-get install docker.io", file=sys.stderr)
        return 2
    if subprocess.run([docker, "image", "inspect", args.image], capture_output=True).returncode:
        print(f"image {args.image} missing: run python tests/docker_env.py", file=sys.stderr)
        return 2

    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()  # the code measured is what is on disk now
    home = fresh_sandlot_home("slb-docker-")
    logdir = home / "peer-logs"
    logdir.mkdir()
    results = Results()
    bench = Bench(args, results, logdir)
    try:
        bench.warm_up()
        bench.run_sections()
    finally:
        bench.close()
    versions: dict[str, Any] = {
        **base_versions(),
        "docker engine": tool_version([docker, "version", "--format", "{{.Server.Version}}"]),
        "aiodocker": version_of("aiodocker"),
    }
    for kind, proc in bench.peers.items():
        if proc.info:
            versions[kind] = proc.info.get("version")
    results.notes.append(
        f"image {args.image}: Debian bookworm minbase + python3 (tests/docker_env.py);"
        " one untimed warm-up of every subject first (sandlot's imports, agent copy and start-up"
        " gc; the engine's first start of the image; each peer's start-up)"
    )
    results.note_load()
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args_json.pop("worker", None)
    meta = run_meta("bench_docker.py", argv, started, load0, commit, versions, args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
