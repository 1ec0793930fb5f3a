"""Real processes, files and git repositories for the relay's integration tests.

A :class:`Site` is a temporary ``$HOME`` (the shared home of a cluster), a folder outside it
(standing for the rest of the login node's filesystem) and a queue folder. Daemons run as
``python -m sandlot.cli relay daemon`` processes with that ``$HOME``; clients run in the test
process or as ``python -c`` processes. The tests' own git calls are hermetic (no global or
system config) and name their author through the environment, never in a repository's
``.git/config``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandlot.relay.queue import Queue

PYTHON = sys.executable

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Relay Test",
    "GIT_AUTHOR_EMAIL": "relay@test.invalid",
    "GIT_COMMITTER_NAME": "Relay Test",
    "GIT_COMMITTER_EMAIL": "relay@test.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
}


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class Site:
    base: Path
    home: Path = field(init=False)
    outside: Path = field(init=False)
    queue: Path = field(init=False)

    def __post_init__(self) -> None:
        self.base = self.base.resolve()
        self.home = self.base / "home"
        self.outside = self.base / "outside"
        self.queue = self.home / ".relay"
        self.home.mkdir(parents=True, exist_ok=True)
        self.outside.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env["HOME"] = str(self.home)
        env.pop("XDG_CONFIG_HOME", None)
        return env

    def q(self) -> Queue:
        return Queue(self.queue)

    # -- the command line ------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "sandlot.cli", "relay", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cli_json(self, *args: str) -> Any:
        done = self.cli(*args, "--queue", str(self.queue), "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def log(self) -> list[dict[str, Any]]:
        return self.cli_json("status", "--last", "100000")["last"]

    def events(self, request_id: str) -> list[str]:
        return [e["event"] for e in self.log() if e.get("id") == request_id]

    def pending(self) -> list[dict[str, Any]]:
        return self.cli_json("pending")

    # -- config ----------------------------------------------------------------------------------

    def config(self, text: str, name: str = "relay.toml") -> Path:
        path = self.outside / name
        path.write_text(textwrap.dedent(text))
        return path

    def script(self, name: str, body: str) -> Path:
        """An executable Python script outside $HOME."""
        path = self.outside / name
        path.write_text(f"#!{PYTHON}\n" + textwrap.dedent(body))
        path.chmod(0o755)
        return path

    # -- git -------------------------------------------------------------------------------------

    def git(
        self, cwd: Path, *args: str, check: bool = True, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **GIT_ENV, **(extra_env or {})}
        done = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        )
        if check:
            assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
        return done

    def remote(self, name: str = "remote.git") -> Path:
        """A bare repository outside $HOME with one commit on main."""
        bare = self.outside / name
        self.git(self.outside, "init", "-q", "--bare", "-b", "main", str(bare))
        seed = self.outside / f"{name}-seed"
        self.git(self.outside, "clone", "-q", str(bare), str(seed))
        (seed / "README").write_text("seed\n")
        self.git(seed, "add", "README")
        self.git(seed, "commit", "-q", "-m", "seed")
        self.git(seed, "push", "-q", "origin", "HEAD:main")
        return bare

    def clone(self, bare: Path, where: Path) -> Path:
        self.git(where.parent, "clone", "-q", str(bare), str(where))
        return where

    def commit(self, repo: Path, name: str, text: str = "x\n", message: str = "") -> str:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
        self.git(repo, "add", name)
        self.git(repo, "commit", "-q", "-m", message or f"add {name}")
        return self.rev(repo, "HEAD")

    def rev(self, repo: Path, ref: str) -> str:
        done = self.git(repo, "rev-parse", "--verify", "-q", ref, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def refs(self, bare: Path) -> str:
        return self.git(bare, "for-each-ref", "--format=%(refname) %(objectname)").stdout


class Daemon:
    """A ``sandlot relay daemon`` process."""

    def __init__(self, site: Site, *args: str, queue: Path | None = None) -> None:
        self.site = site
        self.queue = queue or site.queue
        self.stderr_path = site.base / f"daemon-{time.time_ns()}.err"
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 (closed in stop)
        command = [PYTHON, "-m", "sandlot.cli", "relay", "daemon", "--queue", str(self.queue)]
        self.process = subprocess.Popen(
            [*command, "--poll", "0.05", *args],
            env=site.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def wait_ready(self, timeout: float = 20) -> Daemon:
        """Until the daemon serves: its heartbeat exists and it announced itself."""
        heartbeat = self.queue / "heartbeat"

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the daemon exited {self.process.returncode}: {self.stderr()}"
                )
            return heartbeat.exists() and "relay daemon serving" in self.stderr()

        assert wait_until(ready, timeout), f"the daemon did not start: {self.stderr()}"
        return self

    def consent_code(self, request_id: str, timeout: float = 10) -> str:
        """The consent code the daemon printed in its terminal for ``request_id``."""
        found: list[str] = []

        def printed() -> bool:
            found[:] = re.findall(rf"approve {request_id} --code (\S+)", self.stderr())
            return bool(found)

        assert wait_until(printed, timeout), f"no consent code printed: {self.stderr()}"
        return found[-1]

    def wait_exit(self, timeout: float = 20) -> int:
        return self.process.wait(timeout=timeout)

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL, for a daemon a test may have left stuck."""
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._stderr.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(timeout=10)
        self._stderr.close()


CLIENT_CODE = """
import json, sys, threading
from sandlot.relay import RelayClient
spec = json.loads(sys.argv[1])
out = [None] * len(spec["requests"])
def one(i, req):
    rc = RelayClient(spec["cwd"], queue=spec["queue"])
    try:
        res = rc.request(req["op"], req.get("args", []), timeout=req.get("timeout"))
        out[i] = {"status": res.status, "returncode": res.returncode, "stdout": res.stdout,
                  "id": res.id}
    except Exception as exc:
        out[i] = {"error": type(exc).__name__, "message": str(exc),
                  "details": getattr(exc, "details", {})}
threads = [threading.Thread(target=one, args=(i, r)) for i, r in enumerate(spec["requests"])]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


def client_process(
    site: Site, cwd: Path, requests: list[dict[str, Any]], queue: Path | None = None
) -> subprocess.Popen[str]:
    """A client process sending ``requests`` (each in its own thread); prints JSON answers."""
    spec = {"cwd": str(cwd), "queue": str(queue or site.queue), "requests": requests}
    return subprocess.Popen(
        [PYTHON, "-c", CLIENT_CODE, json.dumps(spec)],
        env=site.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def client_answers(process: subprocess.Popen[str], timeout: float = 60) -> list[dict[str, Any]]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return json.loads(out)
