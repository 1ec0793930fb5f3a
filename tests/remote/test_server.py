"""The server's own behaviour, through real HTTP and the real SDK: the event log and resume,
API keys and tenancy, errors on the wire, idempotent retries."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sandlot

from .proxy import CuttableProxy
from .server import ServerProcess, free_port


def http(
    method: str,
    url: str,
    body: Any = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def sse(url: str, key: str | None = None) -> list[tuple[int, str, dict[str, Any]]]:
    """A finished SSE stream (follow=false), as (id, event, data)."""
    request = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read().decode()
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "id" in fields:
            out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return out


def frames(url: str, headers: dict[str, str] | None = None) -> list[tuple[int, str, Any, bytes]]:
    """A finished binary stream, as (seq, kind, execution, data): read as docs/server.md
    specifies it, not with the SDK's reader."""
    accept = {"Accept": "application/x-sandlot-frames", **(headers or {})}
    with urllib.request.urlopen(urllib.request.Request(url, headers=accept), timeout=30) as answer:
        assert answer.headers["Content-Type"] == "application/x-sandlot-frames"
        body = answer.read()
    out, at = [], 0
    while at < len(body):
        (length,) = struct.unpack_from(">I", body, at)
        frame, at = body[at + 4 : at + 4 + length], at + 4 + length
        if length:
            seq, k, e = struct.unpack_from(">QBB", frame)
            names = frame[10 : 10 + k + e].decode()
            out.append((seq, names[:k], names[k:] or None, frame[10 + k + e :]))
    return out


def sse_output(data: dict[str, Any]) -> bytes:
    return base64.b64decode(data["b64"]) if "b64" in data else data["text"].encode()


# -- the event log --------------------------------------------------------------------------


def test_the_transcript_has_every_event_in_order_with_gapless_ids(server: ServerProcess) -> None:
    with sandlot.Sandbox.create() as sb:
        sb.commands.run("echo one; echo two >&2; exit 4")
        sb.run_code("print('cell'); 6 * 7")
        events = sse(f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false")
        ids = [e[0] for e in events]
        # Resuming after any id gives exactly the rest.
        later = sse(f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false&after={ids[3]}")
        assert later == events[4:]
    ended = sse(f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false&after={ids[-1]}")
    assert [(e[1], e[2]["data"]["event"]) for e in ended] == [("sandbox", "ended")]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    kinds = [e[1] for e in events]
    assert kinds[0] == "sandbox"
    assert kinds[1:] == [
        "started", "stdout", "stderr", "exit", "started", "stdout", "result", "exit",
    ]  # fmt: skip
    assert events[1][2]["data"]["cmd"] == "echo one; echo two >&2; exit 4"
    assert events[2][2]["text"] == "one\n" and events[3][2]["text"] == "two\n"
    assert events[4][2]["data"]["exit_code"] == 4
    assert events[7][2]["data"]["data"]["text/plain"] == "42"


def test_binary_output_arrives_exactly(sb: sandlot.Sandbox) -> None:
    script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4000)"
    received = bytearray()
    result = sb.commands.run(["python3", "-c", script], on_stdout=lambda s: None)
    received += result.stdout_bytes
    assert bytes(received) == bytes(range(256)) * 4000


def test_env_values_stay_out_of_the_log(server: ServerProcess) -> None:
    with sandlot.Sandbox.create() as sb:
        sb.commands.run("true", env={"TOKEN": "s3cret-value"})
        events = sse(f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false")
    started = next(e for e in events if e[1] == "started")
    assert started[2]["data"]["env"] == ["TOKEN"]
    assert "s3cret-value" not in json.dumps(events)


def test_a_stream_cut_mid_output_resumes_without_loss_or_duplicates(
    server: ServerProcess,
) -> None:
    """The SDK reconnects with Last-Event-ID by itself; the output is exact."""
    port = int(server.url.rsplit(":", 1)[1])
    script = (
        "import sys, time\n"
        "for i in range(4000):\n"
        "    sys.stdout.write(f'{i:06d}' + 'x' * 200 + '\\n'); sys.stdout.flush()\n"
        "    if i % 100 == 0: time.sleep(0.02)\n"
    )
    with CuttableProxy(port) as proxy:
        client = sandlot.Client(url=proxy.url)
        with sandlot.Sandbox.create(client=client) as sb:
            seen: list[str] = []
            cuts = 0

            def cutter() -> None:
                nonlocal cuts
                for _ in range(3):
                    time.sleep(0.25)
                    cuts += proxy.cut()

            thread = threading.Thread(target=cutter)
            thread.start()
            result = sb.commands.run(["python3", "-c", script], on_stdout=seen.append)
            thread.join()
    expected = "".join(f"{i:06d}" + "x" * 200 + "\n" for i in range(4000))
    assert cuts >= 2, "the test did not manage to cut the stream"
    assert "".join(seen) == expected
    assert result.stdout == expected
    assert proxy.connections > 2  # it did reconnect


def test_a_detached_client_reads_what_it_missed(server: ServerProcess) -> None:
    """The command runs on the server, not on the connection: a background POST returns at
    once, and the events endpoint replays everything later."""
    with sandlot.Sandbox.create() as sb:
        status, started = http(
            "POST", f"{server.url}/v1/sandboxes/{sb.id}/commands", {"cmd": "echo a; echo b"}
        )
        assert status == 202 and started["state"] in ("running", "ended")
        execution = started["id"]
        status, done = http(
            "POST", f"{server.url}/v1/sandboxes/{sb.id}/executions/{execution}/wait?timeout=30"
        )
        assert done["state"] == "ended" and done["outcome"]["exit_code"] == 0
        events = sse(f"{server.url}/v1/sandboxes/{sb.id}/executions/{execution}/events")
        assert "".join(e[2].get("text", "") for e in events) == "a\nb\n"
        assert events[-1][1] == "exit"


def test_the_binary_stream_carries_the_sse_streams_events_and_resumes_alike(
    server: ServerProcess,
) -> None:
    """Binary frames and Server-Sent Events: the same events, seqs and bytes, from the start,
    after ``?after=`` and after ``Last-Event-ID``; the SDK still reads a server's SSE."""
    script = "printf 'line\\n\\000\\377\\033['; echo oops >&2; head -c 300000 /dev/zero"
    with sandlot.Sandbox.create() as sb:
        base = f"{server.url}/v1/sandboxes/{sb.id}"
        _, started = http("POST", base + "/commands", {"cmd": script})
        http("POST", f"{base}/executions/{started['id']}/wait?timeout=30")
        url = f"{base}/executions/{started['id']}/events"
        binary, text = frames(url), sse(url)
        assert [(f[0], f[1]) for f in binary] == [(e[0], e[1]) for e in text]
        assert binary[-1][1] == "exit" and json.loads(binary[-1][3])["exit_code"] == 0
        out = b"".join(f[3] for f in binary if f[1] == "stdout")
        assert out == b"line\n\0\xff\x1b[" + bytes(300000)
        assert out == b"".join(sse_output(e[2]) for e in text if e[1] == "stdout")
        assert {f[2] for f in binary} == {started["id"]}
        middle = binary[1][0]
        assert frames(f"{url}?after={middle}") == binary[2:]
        assert frames(url, {"Last-Event-ID": str(middle)}) == binary[2:]
        assert sse(f"{url}?after={middle}") == text[2:]
        whole = frames(f"{base}/events?follow=false")  # the session's, in frames too
        assert [f[0] for f in whole] == list(range(1, len(whole) + 1))

        # The SDK asks for frames first; from a server that sends SSE it reads those.
        from sandlot.remote import channel

        saved, channel.STREAM = channel.STREAM, {"Accept": "text/event-stream"}
        try:
            result = sb.commands.run(script)
        finally:
            channel.STREAM = saved
        assert result.stdout_bytes == out and result.stderr == "oops\n"


# -- errors on the wire ---------------------------------------------------------------------


def test_errors_carry_a_stable_code_and_come_back_as_the_same_class(
    server: ServerProcess,
) -> None:
    status, body = http("GET", f"{server.url}/v1/sandboxes/sb-nope")
    assert status == 404 and body["code"] == "sandbox_not_found"
    with pytest.raises(sandlot.SandboxNotFoundError):
        sandlot.Sandbox.connect("sb-nope")
    with sandlot.Sandbox.create() as sb:
        with pytest.raises(sandlot.FileNotFoundInSandboxError):
            sb.files.read("/workspace/missing")
        status, body = http(
            "POST", f"{server.url}/v1/sandboxes/{sb.id}/commands", {"cmd": "x", "argv": ["y"]}
        )
        assert status == 422 and body["code"] == "invalid_argument"
        status, body = http(
            "POST", f"{server.url}/v1/sandboxes/{sb.id}/commands", {"cmd": "x", "timeout": -1}
        )
        assert status == 422 and body["details"]["errors"][0]["loc"][-1] == "timeout"


def test_the_server_refuses_the_unisolated_provider_unless_allowed(server: ServerProcess) -> None:
    with pytest.raises(sandlot.ProviderUnavailableError, match="allow-unisolated"):
        sandlot.Sandbox.create("process")


def test_a_repeated_idempotency_key_gets_the_first_answer(server: ServerProcess) -> None:
    url = f"{server.url}/v1/sandboxes"
    headers = {"Idempotency-Key": "test-key-1"}
    status, first = http("POST", url, {"metadata": {"k": "1"}}, headers=headers)
    assert status == 201
    try:
        status, again = http("POST", url, {"metadata": {"k": "1"}}, headers=headers)
        assert status == 201 and again["id"] == first["id"]
        status, other = http("POST", url, {"metadata": {"k": "2"}}, headers=headers)
        assert status == 409 and other["code"] == "idempotency_conflict"
        running = [s["id"] for s in http("GET", url + "?metadata=k=1")[1]]
        assert running == [first["id"]]
    finally:
        http("DELETE", f"{url}/{first['id']}")


def test_a_create_whose_answer_is_lost_is_retried_into_the_same_sandbox(
    server: ServerProcess,
) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with CuttableProxy(port) as proxy:
        client = sandlot.Client(url=proxy.url)
        proxy.swallow = 1  # the server creates the sandbox, but its answer never arrives
        with sandlot.Sandbox.create(client=client, metadata={"lost": "answer"}) as sb:
            assert proxy.connections >= 2  # it was retried
            running = http("GET", f"{server.url}/v1/sandboxes?metadata=lost=answer")[1]
            assert [s["id"] for s in running] == [sb.id]  # one sandbox, not two


def test_health_and_metrics(server: ServerProcess) -> None:
    status, health = http("GET", f"{server.url}/healthz")
    assert status == 200 and health["status"] == "ok" and health["database"] == "sqlite"
    with sandlot.Sandbox.create() as sb:
        sb.commands.run("echo counted")
    with urllib.request.urlopen(f"{server.url}/metrics") as answer:
        text = answer.read().decode()
    assert 'sandlot_executions_started_total{kind="command"}' in text
    assert 'sandlot_stream_bytes_total{stream="stdout"}' in text
    assert "sandlot_request_seconds_bucket" in text


# -- keys and tenancy (a server of their own: keys switch authentication on) ---------------


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    home = Path(tempfile.mkdtemp(prefix="slkey-", dir="/tmp"))
    process = ServerProcess(home)
    admin = process.keys("create", "--name", "admin", "--admin")
    alice = process.keys("create", "--name", "alice")
    bob = process.keys("create", "--name", "bob")
    process.start()
    yield process, {"admin": admin, "alice": alice, "bob": bob}
    process.stop()


def test_calls_without_a_valid_key_answer_401(
    keyed: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, keys = keyed
    for key in (None, "sl_nope", keys["alice"] + "x", "Bearer"):
        status, body = http("GET", f"{server.url}/v1/sandboxes", key=key)
        assert status == 401 and body["code"] == "unauthenticated", key
    with pytest.raises(sandlot.AuthenticationError):
        sandlot.Sandbox.list(client=sandlot.Client(url=server.url, api_key="sl_wrong"))
    assert http("GET", f"{server.url}/v1/sandboxes", key=keys["alice"])[0] == 200
    assert http("GET", f"{server.url}/healthz")[0] == 200  # health needs no key


def test_a_tenant_cannot_see_or_touch_another_tenants_sandbox(
    keyed: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, keys = keyed
    alice = sandlot.Client(url=server.url, api_key=keys["alice"])
    bob = sandlot.Client(url=server.url, api_key=keys["bob"])
    with sandlot.Sandbox.create(client=alice, metadata={"owner": "alice"}) as sb:
        assert [s.id for s in sandlot.Sandbox.list(client=alice)] == [sb.id]
        assert sandlot.Sandbox.list(client=bob) == []
        with pytest.raises(sandlot.SandboxNotFoundError):
            sandlot.Sandbox.connect(sb.id, client=bob)
        for method, path, body in [
            ("DELETE", "", None),
            ("GET", "/events?follow=false", None),
            ("POST", "/commands", {"cmd": "id"}),
            ("GET", "/files?path=/workspace", None),
            ("POST", "/timeout", {"seconds": 1}),
        ]:
            status, answer = http(
                method, f"{server.url}/v1/sandboxes/{sb.id}{path}", body, keys["bob"]
            )
            assert (status, answer["code"]) == (404, "sandbox_not_found"), (path, answer)
        assert sb.commands.run("echo still mine").stdout == "still mine\n"


def test_only_an_admin_key_manages_keys_and_revocation_takes_effect(
    keyed: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, keys = keyed
    status, body = http("GET", f"{server.url}/v1/keys", key=keys["alice"])
    assert status == 403 and body["code"] == "forbidden"
    status, created = http("POST", f"{server.url}/v1/keys", {"name": "temp"}, keys["admin"])
    assert status == 201 and created["token"].startswith("sl_")
    token, key_id = created["token"], created["key"]["id"]
    assert http("GET", f"{server.url}/v1/sandboxes", key=token)[0] == 200
    listed = http("GET", f"{server.url}/v1/keys", key=keys["admin"])[1]
    assert key_id in [k["id"] for k in listed]
    assert all("hash" not in json.dumps(k) and token not in json.dumps(k) for k in listed)
    assert http("DELETE", f"{server.url}/v1/keys/{key_id}", key=keys["admin"])[0] == 204
    assert http("GET", f"{server.url}/v1/sandboxes", key=token)[0] == 401
    # Revoked from the CLI (another process): refused within the 2 s cache.
    server.keys("revoke", keys["bob"].split("_")[1])
    time.sleep(2.2)
    assert http("GET", f"{server.url}/v1/sandboxes", key=keys["bob"])[0] == 401


def test_binding_beyond_loopback_without_keys_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sandlot.cli", "serve", "--host", "0.0.0.0", "--port",
         str(free_port())],
        env={"SANDLOT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "without API keys" in done.stderr


# -- async remote ---------------------------------------------------------------------------


async def test_async_remote_streams_and_background_handles(server: ServerProcess) -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        chunks: list[str] = []
        result = await sb.commands.run(
            "for i in 1 2 3; do echo $i; sleep 0.05; done", on_stdout=chunks.append
        )
        assert "".join(chunks) == "1\n2\n3\n" == result.stdout
        handle = await sb.commands.run("cat", background=True)
        await handle.send_stdin("piped\n")
        await handle.close_stdin()
        assert (await handle.wait()).stdout == "piped\n"
        cells = await asyncio.gather(*(sb.run_code(f"{i} * 2", context=None) for i in [1]))
        assert cells[0].text == "2"


@pytest.mark.timeout(60)
def test_the_log_of_an_ended_session_is_pruned_after_the_retention() -> None:
    home = Path(tempfile.mkdtemp(prefix="slret-", dir="/tmp"))  # reachable by the sandbox user
    server = ServerProcess(home, args=("--kill-on-exit", "--retention-days", "2e-5"))
    server.start()  # 1.7 s of retention; pruned every second
    try:
        client = sandlot.Client(url=server.url)
        keep = sandlot.Sandbox.create(client=client)
        with sandlot.Sandbox.create(client=client) as gone:
            gone.commands.run("echo old")
        keep.commands.run("echo live")
        url = f"{server.url}/v1/sandboxes/{{}}/events?follow=false"
        before = sse(url.format(gone.id))
        assert len(before) > 3
        deadline = time.monotonic() + 20
        while len(sse(url.format(gone.id))) > 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        # the ended session's log is gone: one event answers for it, numbered as its last
        [(seq, kind, data)] = sse(url.format(gone.id))
        assert kind == "pruned" and seq >= before[-1][0]
        assert data["data"] == {
            "event": "pruned",
            "through": seq,
            "why": "retention",
            "at": data["data"]["at"],
        }
        assert any(e[1] == "stdout" for e in sse(url.format(keep.id)))  # a live one stays
        assert http("GET", f"{server.url}/v1/sandboxes/{gone.id}")[1]["state"] == "stopped"
        keep.kill()
    finally:
        server.stop()


# -- hostile or extreme input -----------------------------------------------------------


def test_a_call_cannot_set_provider_settings(server: ServerProcess) -> None:
    """bwrap's host_user and ro_binds decide what of the host a sandbox sees: the
    operator's choice. A caller trying them gets a refusal, and nothing is created."""
    url = f"{server.url}/v1/sandboxes"
    before = http("GET", url)[1]
    for config in ({"host_user": "root"}, {"ro_binds": ["/root"]}, {"python": "/bin/sh"}):
        status, body = http("POST", url, {"config": config})
        assert (status, body["code"]) == (422, "provider_unavailable"), config
    assert http("GET", url)[1] == before


def test_extreme_values_are_refused_or_survived(server: ServerProcess) -> None:
    url = f"{server.url}/v1/sandboxes"
    for spec in (
        {"timeout": 1e300},
        {"resources": {"pids": 10**20}},
        {"resources": {"cpus": 1e308}},
        {"workdir": "/\u0000"},
    ):
        status, body = http("POST", url, spec)
        assert (status, body["code"]) == (422, "invalid_argument"), spec
    with sandlot.Sandbox.create() as sb:
        sb.set_timeout(300 * 86400)  # beyond what epoll takes in one wait: the agent copes
        status, body = http("GET", f"{url}/{sb.id}/files/list?path=/&depth=64")
        assert (status, body["code"]) == (422, "invalid_argument")  # too many entries
        assert sb.commands.run("echo alive").stdout == "alive\n"
        status, body = http("POST", f"{url}/{sb.id}/timeout", {"seconds": 1e12})
        assert status == 422 and body["details"]["errors"][0]["loc"][-1] == "seconds"


def test_a_json_body_over_the_limit_is_refused_even_when_chunked(server: ServerProcess) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    chunk = b'{"cmd": "' + b"x" * (1 << 20)

    def body() -> Iterator[bytes]:
        yield chunk
        for _ in range(40):
            yield b"y" * (1 << 20)
        yield b'"}'

    connection.request(
        "POST",
        "/v1/sandboxes/sb-x/commands",
        body=body(),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        encode_chunked=True,
    )
    answer = connection.getresponse()
    assert answer.status == 413
    assert json.loads(answer.read())["code"] == "file_too_large"


def test_beyond_loopback_revoking_the_last_key_does_not_open_the_server() -> None:
    home = Path(tempfile.mkdtemp(prefix="slopen-", dir="/tmp"))
    server = ServerProcess(home, args=("--kill-on-exit", "--host", "0.0.0.0"))
    key = server.keys("create", "--name", "only")
    server.start()
    try:
        assert http("GET", f"{server.url}/v1/sandboxes", key=key)[0] == 200
        server.keys("revoke", key.split("_")[1])
        time.sleep(2.2)
        status, body = http("GET", f"{server.url}/v1/sandboxes")
        assert (status, body["code"]) == (401, "unauthenticated")
        assert http("POST", f"{server.url}/v1/keys", {"name": "mine", "admin": True})[0] == 401
    finally:
        server.stop()


def test_a_wrong_key_is_refused_even_by_a_server_without_keys(server: ServerProcess) -> None:
    status, body = http("GET", f"{server.url}/v1/sandboxes", key="sl_typo")
    assert (status, body["code"]) == (401, "unauthenticated")
    assert http("GET", f"{server.url}/v1/sandboxes")[0] == 200  # no key: the local tenant


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("mysql://x", "unsupported database URL"),
        ("sqlite:///:memory:", "needs an SQLite file"),
        ("postgresql://nobody@127.0.0.1:1/x", "cannot open the database"),
    ],
)
def test_serve_with_a_bad_database_url_fails_in_one_line(url: str, needle: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sandlot.cli", "serve", "--port", str(free_port()),
         "--database-url", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
