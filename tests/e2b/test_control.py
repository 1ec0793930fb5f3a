"""E2B's control plane, driven by the official SDKs (``e2b``, ``e2b-code-interpreter``),
unmodified, against a real ``sandlot serve`` (tests/e2b/conftest.py): create, connect, get,
list with metadata and state filters and paging, timeouts, pause and resume, kill, and the
errors the SDKs turn into their exceptions. What runs inside is checked through sandlot's own
SDK (the sandbox side of E2B's API is another module's)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxQuery,
    SandboxState,
)
from e2b_code_interpreter import Sandbox as CodeSandbox  # type: ignore[import-untyped]

import sandlot
from sandlot.errors import NotFoundError
from sandlot.server.e2b.spec import placement

pytestmark = pytest.mark.timeout(120)


def tag() -> dict[str, str]:
    """Metadata only this test's sandboxes have."""
    return {"test": uuid.uuid4().hex}


def inside(server: Any, sandbox_id: str, cmd: str = "true") -> tuple[str, Any]:
    """Run ``cmd`` in the sandbox through sandlot's own SDK: its stdout, and the sandbox's
    info as sandlot sees it."""

    async def run() -> tuple[str, Any]:
        client = sandlot.Client(url=server.url, api_key=server.api_key)
        try:
            sandbox = await sandlot.AsyncSandbox.connect(sandbox_id, client=client)
            return (await sandbox.commands.run(cmd)).stdout, sandbox.info
        finally:
            await client.aclose()

    return asyncio.run(run())


@pytest.fixture
def sbx() -> Iterator[Sandbox]:
    sandbox = Sandbox.create(timeout=600, metadata=tag())
    yield sandbox
    sandbox.kill()


def test_create_with_metadata_env_and_timeout(e2b_server: Any) -> None:
    meta = {**tag(), "user": "ana b&c=d"}  # characters the listing's query encodes
    sbx = Sandbox.create(timeout=600, metadata=meta, envs={"FOO": "bar baz"})
    try:
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.metadata == meta  # the templateID the server keeps is not shown
        assert info.template_id == "base"
        assert info.state == SandboxState.RUNNING
        assert info.envd_version == "0.6.4"
        assert info.cpu_count >= 1 and info.memory_mb > 0
        assert info.lifecycle == {"on_timeout": "kill", "auto_resume": False}
        assert info.end_at - info.started_at == timedelta(seconds=600)
        [listed] = Sandbox.list(query=SandboxQuery(metadata=meta)).next_items()
        assert listed.sandbox_id == sbx.sandbox_id
        # E2B sandboxes end at their timeout, not when idle; the variables are set.
        out, inner = inside(e2b_server, sbx.sandbox_id, "echo $FOO")
        assert out == "bar baz\n"
        assert inner.idle_timeout is None
    finally:
        assert sbx.kill() is True
    assert Sandbox.kill(sbx.sandbox_id) is False  # gone: the SDK says so, no error
    with pytest.raises(NotFoundException):
        sbx.get_info()


def test_e2b_layout_home_user_is_the_workspace(e2b_server: Any, sbx: Sandbox) -> None:
    out, _ = inside(e2b_server, sbx.sandbox_id, "pwd; echo $HOME; echo x > a.txt; ls /workspace")
    assert out == "/home/user\n/home/user\na.txt\n"


def test_the_code_interpreter_sdk_creates_its_template() -> None:
    sbx = CodeSandbox.create(metadata=tag())
    try:
        info = sbx.get_info()
        assert info.template_id == "code-interpreter-v1"
        # E2B's default timeout is 300 seconds
        assert info.end_at - info.started_at == timedelta(seconds=300)
    finally:
        sbx.kill()


def test_connect_extends_but_never_shortens_the_timeout(sbx: Sandbox) -> None:
    before = sbx.get_info().end_at
    same = Sandbox.connect(sbx.sandbox_id, timeout=60)
    assert same.sandbox_id == sbx.sandbox_id
    assert same.get_info().end_at == before  # shorter than what is left: unchanged
    Sandbox.connect(sbx.sandbox_id, timeout=3600)
    assert sbx.get_info().end_at > before + timedelta(seconds=2000)


def test_set_timeout_shortens_and_extends(sbx: Sandbox) -> None:
    start = sbx.get_info().started_at
    sbx.set_timeout(120)
    shorter = sbx.get_info().end_at
    assert shorter < start + timedelta(seconds=600)
    Sandbox.set_timeout(sbx.sandbox_id, 1200)
    assert sbx.get_info().end_at > shorter


def test_list_pages_and_filters_by_state() -> None:
    meta = tag()
    made = [Sandbox.create(timeout=600, metadata=meta) for _ in range(3)]
    try:
        pager = Sandbox.list(query=SandboxQuery(metadata=meta), limit=1)
        pages = []
        while pager.has_next:
            pages.append([s.sandbox_id for s in pager.next_items()])
        assert pages == [[s.sandbox_id] for s in made]  # oldest first, one per page
        newest = Sandbox.list(query=SandboxQuery(metadata=meta), order="desc").next_items()
        assert [s.sandbox_id for s in newest] == [s.sandbox_id for s in reversed(made)]

        assert made[1].pause() is True
        paused = Sandbox.list(query=SandboxQuery(metadata=meta, state=[SandboxState.PAUSED]))
        assert [s.sandbox_id for s in paused.next_items()] == [made[1].sandbox_id]
        running = Sandbox.list(query=SandboxQuery(metadata=meta, state=[SandboxState.RUNNING]))
        ids = [s.sandbox_id for s in running.next_items()]
        assert ids == [made[0].sandbox_id, made[2].sandbox_id]
        both = Sandbox.list(query=SandboxQuery(metadata=meta)).next_items()
        assert {s.sandbox_id: s.state for s in both}[made[1].sandbox_id] == SandboxState.PAUSED
    finally:
        for sandbox in made:
            sandbox.kill()


def test_pause_then_connect_resumes(e2b_server: Any, sbx: Sandbox) -> None:
    assert sbx.pause() is True
    assert sbx.get_info().state == SandboxState.PAUSED
    assert sbx.pause() is False  # paused already (409)
    with pytest.raises(SandboxException, match="paused"):
        sbx.set_timeout(100)  # its agent is frozen: resume first
    Sandbox.connect(sbx.sandbox_id)
    assert sbx.get_info().state == SandboxState.RUNNING
    assert inside(e2b_server, sbx.sandbox_id, "echo back")[0] == "back\n"
    # The older SDKs' resume: a paused sandbox comes back (201), a running one is 409.
    headers = {"X-API-KEY": e2b_server.api_key}
    url = f"{e2b_server.url}/sandboxes/{sbx.sandbox_id}"
    assert sbx.pause() is True
    answer = httpx.post(url + "/resume", json={"timeout": 300}, headers=headers)
    assert answer.status_code == 201 and answer.json()["sandboxID"] == sbx.sandbox_id
    again = httpx.post(url + "/resume", json={"timeout": 300}, headers=headers)
    assert again.status_code == 409 and again.json()["code"] == 409


def test_kill_a_paused_sandbox(sbx: Sandbox) -> None:
    assert sbx.pause() is True
    assert sbx.kill() is True
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id)


def test_the_older_sdks_v1_calls(e2b_server: Any) -> None:
    """e2b 2.31 (what openai-agents[e2b] pins) creates with ``POST /sandboxes`` and
    connects with ``POST /sandboxes/{id}/connect``; its bodies, as it sends them."""
    headers = {"X-API-KEY": e2b_server.api_key}
    body: dict[str, Any] = {
        "templateID": "code-interpreter-v1",
        "timeout": 300,
        "autoPause": False,
        "autoResume": {"enabled": False},
        "secure": True,
        "allow_internet_access": True,
        "metadata": tag(),
        "envVars": {},
    }
    with httpx.Client(base_url=e2b_server.url, headers=headers) as http:
        made = http.post("/sandboxes", json=body)
        assert made.status_code == 201, made.text
        sandbox_id = made.json()["sandboxID"]
        assert made.json()["envdAccessToken"]
        connected = http.post(f"/sandboxes/{sandbox_id}/connect", json={"timeout": 300})
        assert connected.status_code == 200
        assert connected.json()["envdAccessToken"] == made.json()["envdAccessToken"]
        listed = http.get("/sandboxes", params={"metadata": f"test={body['metadata']['test']}"})
        assert [s["sandboxID"] for s in listed.json()] == [sandbox_id]
        assert "envdAccessToken" not in listed.json()[0]  # a listing carries no token
        assert http.delete(f"/sandboxes/{sandbox_id}").status_code == 204


def test_async_sandbox() -> None:
    async def flow() -> None:
        meta = tag()
        sbx = await AsyncSandbox.create(timeout=600, metadata=meta)
        try:
            assert (await sbx.get_info()).metadata == meta
            same = await AsyncSandbox.connect(sbx.sandbox_id)
            assert same.sandbox_id == sbx.sandbox_id
            await sbx.set_timeout(900)
            listed = await AsyncSandbox.list(query=SandboxQuery(metadata=meta)).next_items()
            assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        finally:
            assert await sbx.kill() is True
        with pytest.raises(NotFoundException):
            await AsyncSandbox.connect(sbx.sandbox_id)

    asyncio.run(flow())


def test_unknown_sandbox_is_not_found() -> None:
    with pytest.raises(NotFoundException):
        Sandbox.connect("sb-000000000000")
    with pytest.raises(NotFoundException):
        Sandbox.get_info("sb-000000000000")
    with pytest.raises(NotFoundException):
        Sandbox.set_timeout("sb-000000000000", 60)
    assert Sandbox.kill("sb-000000000000") is False


def test_a_wrong_key_is_refused(e2b_server: Any) -> None:
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="sl_nope_nope")
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="sl_nope_nope").next_items()


def test_another_tenant_cannot_see_or_touch_it(e2b_server: Any, sbx: Sandbox) -> None:
    other: dict[str, Any] = {"api_key": e2b_server.other_key}
    meta = sbx.get_info().metadata
    assert Sandbox.list(query=SandboxQuery(metadata=meta), **other).next_items() == []
    assert all(s.sandbox_id != sbx.sandbox_id for s in Sandbox.list(**other).next_items())
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id, **other)
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id, **other)
    with pytest.raises(NotFoundException):
        Sandbox.set_timeout(sbx.sandbox_id, 5, **other)
    with pytest.raises(NotFoundException):
        Sandbox.pause(sbx.sandbox_id, **other)
    assert Sandbox.kill(sbx.sandbox_id, **other) is False
    assert sbx.get_info().state == SandboxState.RUNNING  # untouched


def test_templates(e2b_server: Any) -> None:
    with pytest.raises(SandboxException, match="template 'no-such-template' not found") as err:
        Sandbox.create("no-such-template")
    assert getattr(err.value, "status_code", None) == 404
    sbx = Sandbox.create("bwrap", metadata=tag())  # a provider's name picks it
    try:
        assert sbx.get_info().template_id == "bwrap"
        assert inside(e2b_server, sbx.sandbox_id)[1].provider == "bwrap"
    finally:
        sbx.kill()


def test_the_template_mapping() -> None:
    """The table docs/e2b.md gives (the one function that holds it)."""
    for default in ("base", "code-interpreter-v1", "code-interpreter", "", None):
        assert placement(default) == {}
    assert placement("bwrap") == {"provider": "bwrap"}
    assert placement("docker") == {"provider": "docker"}
    image = "registry.example:5000/team/py:3.12-slim@sha256:" + "a" * 64
    assert placement(f"docker:{image}") == {"provider": "docker", "config": {"image": image}}
    for unknown in ("desktop", "docker:", "docker:../x", "docker:-v", "bwrap:x", "../base"):
        with pytest.raises(NotFoundError, match="not found"):
            placement(unknown)
    # One of the caller's templates (the names above keep their meaning).
    assert placement("mytpl", own=True) == {"template": "mytpl"}
    assert placement("base", own=True) == {} and placement("bwrap", own=True)["provider"]


def test_network_allow_out_goes_through_the_egress_proxy(e2b_server: Any) -> None:
    closed = Sandbox.create(metadata=tag())  # E2B's default internet: sandlot's "none"
    opened = Sandbox.create(metadata=tag(), network={"allow_out": ["example.com"]})
    try:
        proxy = "echo ${HTTPS_PROXY:-none}"
        assert inside(e2b_server, closed.sandbox_id, proxy)[0] == "none\n"
        assert inside(e2b_server, opened.sandbox_id, proxy)[0] != "none\n"
        closed.update_network({"allow_out": ["packages.example.com"]})  # it gets its proxy now
        assert inside(e2b_server, closed.sandbox_id, proxy)[0] != "none\n"
        with pytest.raises(SandboxException, match="whole network"):
            Sandbox.create(metadata=tag(), network={"allow_out": ["0.0.0.0/0"]})
        with pytest.raises(SandboxException, match="transforms"):
            opened.update_network(
                {"allow_out": ["a.example"], "rules": {"a.example": [{"transform": {}}]}}
            )
    finally:
        closed.kill()
        opened.kill()


def test_what_sandlot_does_not_do(sbx: Sandbox) -> None:
    with pytest.raises(SandboxException, match="not supported"):
        sbx.create_snapshot()
    with pytest.raises(SandboxException, match="not supported"):
        Sandbox.fork(sbx.sandbox_id)
    # Pausing at the timeout is asked for (the OpenAI Agents SDK does by default) and not
    # done: the sandbox ends at its timeout, as its lifecycle says.
    later = Sandbox.create(metadata=tag(), lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        assert later.get_info().lifecycle == {"on_timeout": "kill", "auto_resume": False}
    finally:
        later.kill()
    assert sbx.get_metrics() == []  # nothing measured
    assert Sandbox.list_snapshots().next_items() == []


def test_a_repeated_idempotency_key_gets_the_first_sandbox(e2b_server: Any) -> None:
    key, meta = uuid.uuid4().hex, tag()
    first = Sandbox.create(metadata=meta, idempotency_key=key)
    try:
        again = Sandbox.create(metadata=meta, idempotency_key=key)  # a retry, say
        assert again.sandbox_id == first.sandbox_id
        assert len(Sandbox.list(query=SandboxQuery(metadata=meta)).next_items()) == 1
        # The replay carries the access token too (the store keeps none).
        headers = {"X-API-KEY": e2b_server.api_key, "Idempotency-Key": key}
        body = {"templateID": "base", "metadata": meta, "envVars": {}}
        replay = httpx.post(f"{e2b_server.url}/v2/sandboxes", json=body, headers=headers)
        assert replay.headers.get("idempotent-replayed") is None  # answered as E2B would
        assert replay.status_code == 201
        assert replay.json()["sandboxID"] == first.sandbox_id
        assert replay.json()["envdAccessToken"]
        with pytest.raises(SandboxException, match="409"):
            Sandbox.create(metadata=tag(), idempotency_key=key)  # another call, same key
    finally:
        first.kill()
