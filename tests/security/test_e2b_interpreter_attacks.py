"""The E2B code interpreter (``E2b-Sandbox-Port: 49999``) attacked from outside, as raw HTTP
from an E2B client: junk bodies, huge code, context ids of other sandboxes and tenants, wrong
access tokens, a thousand contexts, clients that drop mid-cell.

Blocked: junk is a 400 naming what is wrong (no traceback, nothing of the server's insides);
a body over the bound is a 413 before it is read whole; a context id means the context of the
token's own sandbox, so another sandbox's or tenant's contexts are never reached; a wrong or
missing token is a 401 that does not say whether the sandbox exists; contexts stop at the
agent's bound (64 a sandbox, each a process under the sandbox's memory and process limits);
a client that goes away interrupts its cell and the context lives on.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from remote.server import ServerProcess

from sandlot.server.e2b.access import INTERPRETER_PORT, access_token
from sandlot.server.e2b.interpreter import MAX_BODY, MAX_WAITING
from sandlot.server.signing import Signer

pytestmark = pytest.mark.timeout(180)
MiB = 1 << 20


def _create(server: ServerProcess, key: str) -> str:
    request = urllib.request.Request(
        server.url + "/v1/sandboxes",
        data=json.dumps({"timeout": 600}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return str(json.load(answer)["id"])


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    """A server with two tenants: the attacker's two sandboxes and the victim's one."""
    home = Path(tempfile.mkdtemp(prefix="sle2bia-", dir="/tmp"))
    server = ServerProcess(home).start()
    mine = server.keys("create", "--name", "attacker")
    theirs = server.keys("create", "--name", "victim")
    world = {
        "server": server,
        "a": _create(server, mine),
        "b": _create(server, mine),
        "victim": _create(server, theirs),
    }
    try:
        yield world
    finally:
        server.stop()


def _headers(world: dict[str, Any], sandbox: str, token_of: str | None = None) -> dict[str, str]:
    token = access_token(Signer(world["server"].home), token_of or sandbox)
    return {
        "E2b-Sandbox-Id": sandbox,
        "E2b-Sandbox-Port": str(INTERPRETER_PORT),
        "X-Access-Token": token,
    }


def _execute(world: dict[str, Any], body: Any, sandbox: str | None = None, **kw: Any) -> Any:
    """Run a cell; the answer and its lines (parsed) when it streamed."""
    sandbox = sandbox or world["a"]
    headers = kw.pop("headers", None) or _headers(world, sandbox)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = httpx.post(
        world["server"].url + "/execute", content=content, headers=headers, timeout=60, **kw
    )
    lines = []
    if answer.status_code == 200:
        lines = [json.loads(line) for line in answer.text.splitlines()]
    return answer, lines


def _text(lines: list[dict[str, Any]]) -> str | None:
    return next((x.get("text") for x in lines if x.get("is_main_result")), None)


def _clean(answer: httpx.Response) -> None:
    """An error answer: short plain text, nothing of the server's insides."""
    assert len(answer.content) < 2000
    for leak in ("Traceback", 'File "/', "sandlot/server", "Internal Server Error"):
        assert leak not in answer.text


@pytest.mark.attack("E2B /execute and /contexts: junk bodies (not JSON, wrong types, NUL, bad ids)")
def test_junk_bodies_are_refused_clearly(world: dict[str, Any]) -> None:
    junk: list[bytes] = [
        b"",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b"null",
        b'"code"',
        b'{"code": 1}',
        b'{"code": ["x"]}',
        b'{"context_id": "default"}',
        json.dumps({"code": "1", "context_id": "../../etc/passwd"}).encode(),
        json.dumps({"code": "1", "context_id": "x" * 5000}).encode(),
        json.dumps({"code": "1", "context_id": 7}).encode(),
        json.dumps({"code": "1", "language": 5}).encode(),
        json.dumps({"code": "1", "language": "python", "context_id": "default"}).encode(),
        json.dumps({"code": "a = '\0'"}).encode(),
        json.dumps({"code": "1", "env_vars": ["A"]}).encode(),
        json.dumps({"code": "1", "env_vars": {"A=B": "x"}}).encode(),
        json.dumps({"code": "1", "env_vars": {"A": "x\0y"}}).encode(),
        json.dumps({"code": "1", "env_vars": {"A": 5}}).encode(),
        json.dumps({"code": "1", "env_vars": {f"V{i}": "x" for i in range(5000)}}).encode(),
        json.dumps({"code": "1", "env_vars": {"A": {"secret": "../x"}}}).encode(),
        json.dumps({"code": "1", "env_vars": {"B" * 100_000 + "=": "x"}}).encode(),
        json.dumps({"code": "1", "context_id": "default\n"}).encode(),
        b"[" * 100_000 + b"]" * 100_000,  # deeper than any parser's stack
    ]
    for body in junk:
        answer, _ = _execute(world, body)
        assert answer.status_code == 400, (body[:80], answer.status_code, answer.text)
        _clean(answer)
    contexts = world["server"].url + "/contexts"
    for body in [b"[]", b"junk", b'{"cwd": "relative"}', b'{"cwd": "/a\\u0000b"}',
                 b'{"language": "' + b"p" * 5000 + b'"}', b'{"cwd": 5}']:  # fmt: skip
        answer = httpx.post(contexts, content=body, headers=_headers(world, world["a"]))
        assert answer.status_code == 400, (body[:80], answer.status_code, answer.text)
        _clean(answer)
    missing = httpx.post(
        contexts, json={"cwd": "/no/such/folder"}, headers=_headers(world, world["a"])
    )
    assert missing.status_code == 404
    _clean(missing)
    answer, lines = _execute(world, {"code": "'still fine'"})  # the server took none of it badly
    assert answer.status_code == 200 and _text(lines) == "still fine"


@pytest.mark.attack("E2B /execute: a code body far over the bound (declared, and chunked)")
def test_a_huge_code_body_is_refused_before_it_is_read(world: dict[str, Any]) -> None:
    huge = json.dumps({"code": "#" * (MAX_BODY + MiB)}).encode()
    answer, _ = _execute(world, huge)
    assert answer.status_code == 413
    _clean(answer)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        yield b'{"code": "'
        for _ in range(64):
            yield b"#" * MiB
        yield b'"}'

    try:
        streamed = httpx.post(
            world["server"].url + "/execute",
            content=chunks(),
            headers=_headers(world, world["a"]),
            timeout=60,
        )
        assert streamed.status_code == 413  # the answer came before the body was all sent
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # or the server closed the connection on the rest of it
    answer, lines = _execute(world, {"code": "'alive'"})
    assert answer.status_code == 200 and _text(lines) == "alive"


@pytest.mark.attack("E2B /contexts: reach a context of another sandbox, and of another tenant")
def test_contexts_of_other_sandboxes_are_out_of_reach(world: dict[str, Any]) -> None:
    url = world["server"].url
    victim = world["victim"]
    made = httpx.post(url + "/contexts", json={}, headers=_headers(world, victim))
    assert made.status_code == 200, made.text
    context = made.json()["id"]
    _, lines = _execute(world, {"code": "secret = 'victim data'", "context_id": context}, victim)
    for target in (world["a"], world["b"]):  # the attacker's own sandboxes, the victim's id
        answer, lines = _execute(world, {"code": "secret", "context_id": context}, target)
        assert answer.status_code == 404, answer.text
        _clean(answer)
    # The victim's sandbox named, with the attacker's token (in either header).
    theirs_with_mine = _headers(world, victim, token_of=world["a"])
    traffic = {**theirs_with_mine, "E2B-Traffic-Access-Token": theirs_with_mine["X-Access-Token"]}
    del traffic["X-Access-Token"]
    for headers in (theirs_with_mine, traffic):
        answer, _ = _execute(world, {"code": "secret", "context_id": context}, headers=headers)
        assert answer.status_code == 401
        _clean(answer)
        assert httpx.get(url + "/contexts", headers=headers).status_code == 401
        assert httpx.delete(f"{url}/contexts/{context}", headers=headers).status_code == 401
        restart = httpx.post(f"{url}/contexts/{context}/restart", headers=headers)
        assert restart.status_code == 401
    answer, lines = _execute(world, {"code": "secret", "context_id": context}, victim)
    assert _text(lines) == "victim data"  # untouched
    listed = httpx.get(url + "/contexts", headers=_headers(world, world["a"])).json()
    assert context not in [c["id"] for c in listed]


@pytest.mark.attack("E2B interpreter: no, empty, forged or another sandbox's access token")
def test_wrong_access_tokens_are_refused(world: dict[str, Any]) -> None:
    url = world["server"].url
    good = _headers(world, world["a"])
    forged = [
        {k: v for k, v in good.items() if k != "X-Access-Token"},
        {**good, "X-Access-Token": ""},
        {**good, "X-Access-Token": "x" * 43},
        {**good, "X-Access-Token": good["X-Access-Token"][:-1]},
        {**good, "X-Access-Token": access_token(Signer(world["server"].home), world["b"])},
        {**good, "E2b-Sandbox-Id": "sb-does-not-exist"},  # no id's existence is confirmed
    ]
    for headers in forged:
        answer, _ = _execute(world, {"code": "1"}, headers=headers)
        assert answer.status_code == 401, (headers, answer.status_code)
        _clean(answer)
        for method, path in (("GET", "/contexts"), ("POST", "/contexts"), ("GET", "/health"),
                             ("DELETE", "/contexts/default"),
                             ("POST", "/contexts/default/restart")):  # fmt: skip
            assert httpx.request(method, url + path, headers=headers).status_code == 401
    too_long = {**good, "E2b-Sandbox-Id": "s" * 10_000}
    assert httpx.get(url + "/health", headers=too_long).status_code in (401, 404, 431)
    assert httpx.get(url + "/health", headers=good).json() == "OK"


@pytest.mark.attack("E2B /contexts: create 1,000 code contexts in one sandbox")
def test_a_thousand_contexts_stop_at_the_bound(world: dict[str, Any]) -> None:
    url = world["server"].url
    headers = _headers(world, world["b"])
    made: list[str] = []
    refused = None
    for _ in range(1000):
        answer = httpx.post(url + "/contexts", json={}, headers=headers, timeout=60)
        if answer.status_code != 200:
            refused = answer
            break
        made.append(answer.json()["id"])
    assert refused is not None, "a thousand contexts were made"
    assert len(made) <= 64  # the agent's bound, the default context (made on first use) in it
    _clean(refused)
    assert (refused.status_code, refused.text) == (400, "too many code contexts (64)")
    for context in made:
        assert httpx.delete(f"{url}/contexts/{context}", headers=headers).status_code == 204
    answer, lines = _execute(world, {"code": "'b lives'"}, world["b"])
    assert answer.status_code == 200 and _text(lines) == "b lives"


@pytest.mark.attack(
    "E2B /execute: clients that drop mid-cell, ten times over, an endless cell each"
)
def test_clients_that_drop_interrupt_their_cells(world: dict[str, Any]) -> None:
    url = world["server"].url
    headers = _headers(world, world["a"])
    _execute(world, {"code": "dropped = 0"})
    body = {
        "code": "import time\ndropped += 1\nprint('go', flush=True)\nwhile True: time.sleep(0.05)"
    }
    for _ in range(10):
        with httpx.stream("POST", url + "/execute", json=body, headers=headers, timeout=60) as r:
            assert r.status_code == 200
            first = json.loads(next(r.iter_lines()))
            assert first["type"] == "stdout" and first["text"] == "go\n"
        # closed here, mid-cell: the cell is interrupted and the next one takes its turn
    _, lines = _execute(world, {"code": "dropped"})
    assert _text(lines) == "10"


@pytest.mark.attack("E2B /execute: 150 executions queued behind an endless cell in one context")
def test_a_crowd_of_waiting_executions_is_bounded(world: dict[str, Any]) -> None:
    url = world["server"].url + "/execute"
    headers = _headers(world, world["b"])
    endless = {"code": "import time\nprint('go', flush=True)\nwhile True: time.sleep(0.05)"}

    async def crowd() -> list[int]:
        limits = httpx.Limits(max_connections=300)
        async with (
            httpx.AsyncClient(limits=limits, timeout=60) as client,
            client.stream("POST", url, json=endless, headers=headers) as first,
        ):
            assert first.status_code == 200
            async for line in first.aiter_lines():
                assert json.loads(line)["text"] == "go\n"
                break
            calls = [client.post(url, json={"code": "1"}, headers=headers) for _ in range(150)]
            tasks = [asyncio.ensure_future(c) for c in calls]
            refused: list[int] = []
            for done in asyncio.as_completed(tasks):
                refused.append((await done).status_code)
                if len(refused) == 150 - MAX_WAITING:
                    break
            for task in tasks:
                task.cancel()  # the waiting ones hang up: they leave the queue
            await asyncio.gather(*tasks, return_exceptions=True)
            return refused

    refused = asyncio.run(crowd())
    assert set(refused) == {429}
    answer, lines = _execute(world, {"code": "'b serves again'"}, world["b"])
    assert answer.status_code == 200 and _text(lines) == "b serves again"
