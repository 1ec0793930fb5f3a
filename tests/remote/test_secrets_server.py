"""``/v1/secrets`` through a real ``sandlot serve``: per tenant, values in and never out
(not in answers, not in the log, not in the database file), the Client's methods and the CLI
in remote mode."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sandlot
from sandlot.errors import InvalidArgumentError, SecretError
from sandlot.remote.secrets import RemoteSecrets
from sandlot.secrets.crypto import KEY_ENV, Cipher, encode_key
from sandlot.secrets.store import DatabaseSecrets
from sandlot.store.database import Database, sqlite_url

from .server import ServerProcess
from .test_server import http

ALICE_VALUE = "alice-value-5e1f0a9b77c3"
BOB_VALUE = "bob-value-0c3d2e1f44aa"


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A server of our own with two tenants' keys, and its key in a key file (not in the
    environment, whatever the caller's environment says)."""
    home = Path(tempfile.mkdtemp(prefix="slsec-", dir="/tmp"))
    process = ServerProcess(home, env={KEY_ENV: ""})
    keys = {name: process.keys("create", "--name", name) for name in ("alice", "bob")}
    process.start()
    yield process, keys
    process.stop()
    shutil.rmtree(home, ignore_errors=True)


def stored(server: ServerProcess, tenant: str, name: str, key: bytes | None = None) -> str:
    """A value as the server's database holds it (decrypted with the server's key)."""
    db = Database(sqlite_url(server.home))
    try:
        cipher = Cipher(key) if key is not None else None
        store = DatabaseSecrets(db, tenant, home=server.home, cipher=cipher)
        return asyncio.run(store.get(name))
    finally:
        db.close()


def test_put_list_delete(server: ServerProcess) -> None:
    url = f"{server.url}/v1/secrets"
    assert http("PUT", f"{url}/SRV_TOKEN", {"value": ALICE_VALUE}) == (204, None)
    assert http("PUT", f"{url}/SRV_TOKEN", {"value": BOB_VALUE}) == (204, None)  # replaced
    status, listed = http("GET", url)
    assert status == 200
    mine = [row for row in listed if row["name"] == "SRV_TOKEN"]
    assert len(mine) == 1 and set(mine[0]) == {"name", "created_at", "updated_at"}
    assert mine[0]["created_at"] < mine[0]["updated_at"]
    assert ALICE_VALUE not in json.dumps(listed) and BOB_VALUE not in json.dumps(listed)
    assert stored(server, "local", "SRV_TOKEN") == BOB_VALUE

    assert http("DELETE", f"{url}/SRV_TOKEN") == (204, None)
    status, body = http("DELETE", f"{url}/SRV_TOKEN")
    assert status == 404 and body["code"] == "secret_not_found"
    assert body["details"] == {"name": "SRV_TOKEN"} and "SRV_TOKEN" in body["message"]
    assert "SRV_TOKEN" not in [row["name"] for row in http("GET", url)[1]]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("bad%20name", {"value": "v-12345"}),
        ("1starts-with-digit", {"value": "v-12345"}),
        ("A" * 129, {"value": "v-12345"}),
        ("OK_NAME", {"value": "has\u0000nul"}),
        ("OK_NAME", {"value": "x" * (64 * 1024 + 1)}),
        ("OK_NAME", {"value": "é" * (32 * 1024 + 1)}),  # short in characters, long in bytes
        ("OK_NAME", {"value": 5}),
        ("OK_NAME", {"value": "v-12345", "extra": 1}),
        ("OK_NAME", {}),
    ],
)
def test_bad_names_and_values_answer_422_without_the_value(
    server: ServerProcess, path: str, body: dict[str, Any]
) -> None:
    status, answer = http("PUT", f"{server.url}/v1/secrets/{path}", body)
    assert status == 422 and answer["code"] == "invalid_argument", answer
    value = body.get("value")
    if isinstance(value, str):
        assert value[:20] not in json.dumps(answer)
    assert "OK_NAME" not in [row["name"] for row in http("GET", f"{server.url}/v1/secrets")[1]]


def test_values_are_nowhere_in_plain_text(keyed: tuple[ServerProcess, dict[str, str]]) -> None:
    server, keys = keyed
    url = f"{server.url}/v1/secrets"
    assert http("PUT", f"{url}/PLAIN_CHECK", {"value": ALICE_VALUE}, keys["alice"])[0] == 204
    key_file = server.home / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    raw = b"".join(
        p.read_bytes() for p in server.home.glob("server.db*") if p.name != "server.db-shm"
    )
    assert b"PLAIN_CHECK" in raw  # the row is in the bytes read
    assert ALICE_VALUE.encode() not in raw
    assert ALICE_VALUE not in server.log.read_text(errors="replace")
    assert stored(server, keys_tenant(server, keys["alice"]), "PLAIN_CHECK") == ALICE_VALUE


def keys_tenant(server: ServerProcess, token: str) -> str:
    """The tenant of a key, from ``sandlot keys ls``."""
    key_id = token.split("_")[1]
    for line in server.keys("ls").splitlines():
        fields = line.split()
        if fields[0] == key_id:
            return fields[1]
    raise AssertionError(f"no key {key_id}")


def test_tenants_see_only_their_own(keyed: tuple[ServerProcess, dict[str, str]]) -> None:
    server, keys = keyed
    url = f"{server.url}/v1/secrets"
    assert http("PUT", f"{url}/SHARED_NAME", {"value": ALICE_VALUE}, keys["alice"])[0] == 204
    assert "SHARED_NAME" not in [r["name"] for r in http("GET", url, key=keys["bob"])[1]]
    status, body = http("DELETE", f"{url}/SHARED_NAME", key=keys["bob"])
    assert status == 404 and body["code"] == "secret_not_found"
    assert http("PUT", f"{url}/SHARED_NAME", {"value": BOB_VALUE}, keys["bob"])[0] == 204
    alice, bob = keys_tenant(server, keys["alice"]), keys_tenant(server, keys["bob"])
    assert stored(server, alice, "SHARED_NAME") == ALICE_VALUE
    assert stored(server, bob, "SHARED_NAME") == BOB_VALUE
    assert http("DELETE", f"{url}/SHARED_NAME", key=keys["bob"])[0] == 204
    assert stored(server, alice, "SHARED_NAME") == ALICE_VALUE  # untouched
    for method, body in (("GET", None), ("PUT", {"value": "v-1234"}), ("DELETE", None)):
        path = url if method == "GET" else f"{url}/SHARED_NAME"
        assert http(method, path, body)[0] == 401  # no key
        assert http(method, path, body, "sl_nope")[0] == 401


def test_the_client_methods(keyed: tuple[ServerProcess, dict[str, str]]) -> None:
    server, keys = keyed

    async def go() -> None:
        client = sandlot.Client(url=server.url, api_key=keys["bob"])
        try:
            await client.set_secret("CLIENT_ONE", BOB_VALUE)
            listed = await client.list_secrets()
            assert "CLIENT_ONE" in [info.name for info in listed]
            assert all(info.created_at.tzinfo for info in listed)
            assert await client.delete_secret("CLIENT_ONE") is True
            assert await client.delete_secret("CLIENT_ONE") is False
            with pytest.raises(InvalidArgumentError):
                await client.set_secret("bad name", "v-1234")
            with pytest.raises(SecretError, match="stays on the server"):
                await RemoteSecrets(client).get("ANY")
        finally:
            await client.aclose()

    asyncio.run(go())


def test_the_cli_in_remote_mode(
    keyed: tuple[ServerProcess, dict[str, str]], tmp_path: Path
) -> None:
    server, keys = keyed
    env = {
        **os.environ,
        "SANDLOT_URL": server.url,
        "SANDLOT_API_KEY": keys["alice"],
        "SANDLOT_HOME": str(tmp_path),
    }

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sandlot.cli", "secrets", *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = cli("set", "FROM_CLI", stdin=ALICE_VALUE + "\n")
    assert done.returncode == 0, done.stderr
    assert stored(server, keys_tenant(server, keys["alice"]), "FROM_CLI") == ALICE_VALUE
    listed = json.loads(cli("ls", "--json").stdout)
    assert "FROM_CLI" in [row["name"] for row in listed]
    table = cli("ls")
    assert "FROM_CLI" in table.stdout and ALICE_VALUE not in table.stdout
    assert cli("rm", "FROM_CLI").returncode == 0
    missing = cli("rm", "FROM_CLI")
    assert missing.returncode == 1 and missing.stderr.strip() == "error: no secret 'FROM_CLI'"
    assert not list(tmp_path.iterdir())  # nothing stored on this host

    env["SANDLOT_API_KEY"] = "sl_wrong"
    refused = cli("ls")
    assert refused.returncode == 1 and "API key is not valid" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_a_server_with_the_key_in_its_environment(tmp_path: Path) -> None:
    key = os.urandom(32)
    home = Path(tempfile.mkdtemp(prefix="slsek-", dir="/tmp"))
    process = ServerProcess(home, env={KEY_ENV: encode_key(key)}).start()
    try:
        url = f"{process.url}/v1/secrets/ENV_KEYED"
        assert http("PUT", url, {"value": ALICE_VALUE})[0] == 204
        assert not (home / "secret.key").exists()
        assert stored(process, "local", "ENV_KEYED", key) == ALICE_VALUE
    finally:
        process.stop()
        shutil.rmtree(home, ignore_errors=True)
