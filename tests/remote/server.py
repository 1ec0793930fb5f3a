"""A real ``sandlot serve`` process on loopback, for the remote-mode tests."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m sandlot.cli serve`` with its own state folder (and database URL)."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        database_url: str | None = None,
        args: tuple[str, ...] = ("--kill-on-exit",),
        env: dict[str, str] | None = None,
    ) -> None:
        self.extra_env = env or {}
        self.home = home
        self.port = port or free_port()
        self.database_url = database_url
        self.args = args
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / "server.log"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SANDLOT_HOME": str(self.home), "SANDLOT_LOG_LEVEL": "warning"}
        env.update(self.extra_env)
        env.pop("SANDLOT_URL", None)
        env.pop("SANDLOT_API_KEY", None)
        command = [sys.executable, "-m", "sandlot.cli", "serve", "--port", str(self.port)]
        if self.database_url:
            command += ["--database-url", self.database_url]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [*command, *self.args],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the server did not get ready: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def keys(self, *args: str) -> str:
        """Run ``sandlot keys ...`` against this server's database; its stdout."""
        env = {**os.environ, "SANDLOT_HOME": str(self.home)}
        command = [sys.executable, "-m", "sandlot.cli", "keys", *args]
        if self.database_url:
            command += ["--database-url", self.database_url]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return done.stdout.strip()


def _die_with_parent() -> None:
    """SIGTERM the server when the test process dies: a killed pytest (a cut-short run) leaves
    no orphaned server behind (one was found 38 minutes old)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
