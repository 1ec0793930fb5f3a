"""``/v1/templates`` through a real ``sandlot serve``: a build with streamed progress, list,
show, log and delete; sandboxes from a tenant's template; tenants kept apart (names, use,
delete); quotas on count and bytes; what a tenant may not send (digest references, build-mode
settings, bases on the server's host, server paths in file steps). Templates here are tiny:
uploaded files and env steps on the host base."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration.test_templates_build import PACKAGE, make_wheel

import sandlot
from sandlot.errors import ForbiddenError, TemplateNotFoundError
from sandlot.remote.templates import RemoteTemplates
from sandlot.workspace.templates.build import BuildDone
from sandlot.workspace.templates.model import EnvStep, FileStep

from .server import ServerProcess

pytestmark = pytest.mark.timeout(120)

QUOTA_COUNT = 4
QUOTA_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def tenants() -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A server of our own (keys turn authentication on) with four tenants and small quotas.
    Keys are made through the API (a server without keys takes its first from loopback)."""
    home = Path(tempfile.mkdtemp(prefix="sltpl-", dir="/tmp"))
    args = ("--kill-on-exit", "--template-count", str(QUOTA_COUNT))
    process = ServerProcess(home, args=(*args, "--template-bytes", str(QUOTA_BYTES))).start()
    admin = httpx.post(process.url + "/v1/keys", json={"name": "admin", "admin": True}).json()
    keys = {
        name: call(process, admin["token"], "POST", "/v1/keys", {"name": name}).json()["token"]
        for name in ("alice", "bob", "carol", "dave")
    }
    yield process, keys
    process.stop()
    shutil.rmtree(home, ignore_errors=True)


def call(server: ServerProcess, key: str, method: str, path: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, server.url + path, json=body, headers=headers, timeout=60)


def build(server: ServerProcess, key: str, name: str, steps: list[Any]) -> httpx.Response:
    """A build answered as JSON (no stream asked for)."""
    return call(server, key, "POST", "/v1/templates", {"name": name, "steps": steps})


def upload(dst: str, content: bytes) -> dict[str, Any]:
    return {"kind": "file", "dst": dst, "content_b64": base64.b64encode(content).decode()}


def streamed_build(server: ServerProcess, key: str, body: Any) -> list[tuple[str, Any]]:
    """A build with ``Accept: text/event-stream``: its events, (kind, data), in order."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    out = []
    with httpx.stream(
        "POST", server.url + "/v1/templates", json=body, headers=headers, timeout=60
    ) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        text = "".join(answer.iter_text())
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def client(server: ServerProcess, key: str) -> sandlot.Client:
    return sandlot.Client(server.url, key)


@contextlib.asynccontextmanager
async def remote(server: ServerProcess, key: str) -> AsyncIterator[RemoteTemplates]:
    """The remote client's templates, its connections closed after."""
    mine = client(server, key)
    try:
        yield RemoteTemplates(mine)
    finally:
        await mine.aclose()


def read_in_sandbox(server: ServerProcess, key: str, template: str, path: str) -> str:
    """A file of a sandbox made from the tenant's template (created over HTTP, read with
    the SDK)."""
    answer = call(server, key, "POST", "/v1/sandboxes", {"template": template, "timeout": 60})
    assert answer.status_code == 201, answer.text
    sb = sandlot.Sandbox.connect(answer.json()["id"], client=client(server, key))
    try:
        return sb.files.read(path)
    finally:
        sb.kill()


def test_build_streamed_then_list_show_log_use_delete(
    tenants: tuple[ServerProcess, dict[str, str]], tmp_path: Path
) -> None:
    """File and pip steps on the host base (the wheel is uploaded: no network), its
    progress streamed; a sandbox from it sees both."""
    server, keys = tenants
    alice = keys["alice"]
    wheel = make_wheel(tmp_path, "from-the-wheel")
    inside = f"/opt/w/{wheel.name}"
    body = {
        "name": "hello",
        "base": "host",
        "steps": [
            upload("/opt/hello.txt", b"hello from the template\n"),
            upload(inside, wheel.read_bytes()),
            {"kind": "pip", "packages": [inside]},
            {"kind": "env", "key": "GREETING", "value": "hi"},
        ],
    }
    events = streamed_build(server, alice, body)
    assert str(server.home) not in json.dumps(events)  # the server's paths never show
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "template" and "progress" in kinds and "error" not in kinds
    assert kinds.count("template") == 1
    steps = [data for kind, data in events if data.get("type") == "step_finished"]
    assert [s["index"] for s in steps] == [1, 2, 3, 4]
    built = events[-1][1]
    assert built["name"] == "hello" and built["digest"].startswith("sha256:")
    assert built["env"] == {"GREETING": "hi"} and built["base"]["kind"] == "host"
    # The server's copy of an uploaded file is not shown: only what it was.
    assert [s["src"] for s in built["steps"] if s["kind"] == "file"] == ["(uploaded)"] * 2

    listed = call(server, alice, "GET", "/v1/templates").json()
    assert [t["name"] for t in listed] == ["hello"]
    shown = call(server, alice, "GET", "/v1/templates/hello").json()
    assert shown["digest"] == built["digest"] and shown["size"] > len(wheel.read_bytes())
    assert [layer["size"] > 0 for layer in shown["layers"]] == [True, True, True]
    log = call(server, alice, "GET", "/v1/templates/hello/log")
    assert log.status_code == 200 and "Successfully installed sandlot-tpl-probe" in log.text

    answer = call(server, alice, "POST", "/v1/sandboxes", {"template": "hello", "timeout": 60})
    assert answer.status_code == 201, answer.text
    sb = sandlot.Sandbox.connect(answer.json()["id"], client=client(server, alice))
    try:
        assert sb.files.read("/opt/hello.txt") == "hello from the template\n"
        probe = f"import {PACKAGE} as p, os; print(p.VALUE, os.environ['GREETING'])"
        assert sb.commands.run(["python3", "-c", probe]).stdout == "from-the-wheel hi\n"
    finally:
        sb.kill()

    assert call(server, alice, "DELETE", "/v1/templates/hello").status_code == 204
    gone = call(server, alice, "GET", "/v1/templates/hello")
    assert gone.status_code == 404 and gone.json()["code"] == "template_not_found"
    assert call(server, alice, "GET", "/v1/templates").json() == []


def test_a_failed_step_is_named_in_the_stream_and_as_json(
    tenants: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, keys = tenants
    steps = [upload("/opt/a.txt", b"a\n"), {"kind": "run", "command": "echo going; exit 3"}]
    events = streamed_build(server, keys["bob"], {"name": "broken", "steps": steps})
    kind, error = events[-1]
    assert kind == "error" and error["code"] == "template_build_failed"
    assert error["details"]["step"] == 2 and "exit 3" in error["message"]
    assert "going" in error["message"]  # the tail of its log
    failed = [data for kind, data in events if data.get("type") == "failed"]
    assert len(failed) == 1 and failed[0]["index"] == 2
    assert str(server.home) not in json.dumps(events)
    answer = build(server, keys["bob"], "broken", steps)
    assert answer.status_code == 400 and answer.json()["code"] == "template_build_failed"
    assert str(server.home) not in answer.text
    assert call(server, keys["bob"], "GET", "/v1/templates/broken").status_code == 404


def test_a_build_outlives_its_callers_stream(
    tenants: tuple[ServerProcess, dict[str, str]],
) -> None:
    """The build runs on the server, not on the connection (as a command does)."""
    server, keys = tenants
    headers = {"Authorization": f"Bearer {keys['bob']}", "Accept": "text/event-stream"}
    body = {"name": "left", "steps": [{"kind": "run", "command": "sleep 1; echo slept"}]}
    with httpx.stream(
        "POST", server.url + "/v1/templates", json=body, headers=headers, timeout=60
    ) as answer:
        for line in answer.iter_lines():
            if "step_started" in line:
                break  # and go away before the step ends
    for _ in range(300):
        shown = call(server, keys["bob"], "GET", "/v1/templates/left")
        if shown.status_code == 200:
            break
        time.sleep(0.1)
    assert shown.status_code == 200, shown.text
    assert "slept" in call(server, keys["bob"], "GET", "/v1/templates/left/log").text
    assert call(server, keys["bob"], "DELETE", "/v1/templates/left").status_code == 204


def test_a_build_answers_json_without_a_stream(
    tenants: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, keys = tenants
    answer = build(server, keys["bob"], "plain", [{"kind": "env", "key": "A", "value": "1"}])
    assert answer.status_code == 201 and answer.json()["env"] == {"A": "1"}
    assert call(server, keys["bob"], "DELETE", "/v1/templates/plain").status_code == 204


def test_tenants_are_kept_apart(
    tenants: tuple[ServerProcess, dict[str, str]], tmp_path: Path
) -> None:
    """The same name in two tenants is two templates; neither tenant sees, uses, replaces
    or deletes the other's. Through the remote client, with local files uploaded."""
    server, keys = tenants

    async def build_both() -> str:
        for name in ("alice", "bob"):
            source = tmp_path / name
            source.write_text(f"{name}'s\n")
            steps = [FileStep(src=str(source), dst="/opt/whose.txt")]
            seen: list[Any] = []
            async with remote(server, keys[name]) as mine:
                out = await mine.build("shared", "host", steps, on_progress=seen.append)
            # The engine's own events, as a local build gives them (what the CLI shows).
            assert out.name == "shared" and isinstance(seen[-1], BuildDone)
            assert [e.type for e in seen if e.type != "log"][:2] == [
                "step_started",
                "step_finished",
            ]
        async with remote(server, keys["alice"]) as mine:
            only = await mine.build("alice-only", "host", [EnvStep(key="X", value="1")])
        return only.digest

    digest = asyncio.run(build_both())
    assert read_in_sandbox(server, keys["alice"], "shared", "/opt/whose.txt") == "alice's\n"
    assert read_in_sandbox(server, keys["bob"], "shared", "/opt/whose.txt") == "bob's\n"

    async def bob_tries() -> None:
        async with remote(server, keys["bob"]) as bob:
            assert [t.name for t in await bob.list()] == ["shared"]
            for attempt in (bob.get, bob.log, bob.remove):
                with pytest.raises(TemplateNotFoundError):
                    await attempt("alice-only")

    asyncio.run(bob_tries())
    answer = call(server, keys["bob"], "POST", "/v1/sandboxes", {"template": "alice-only"})
    assert answer.status_code == 404 and answer.json()["code"] == "template_not_found"
    # A digest of alice's template is no way in either: digests are the server's own.
    answer = call(server, keys["bob"], "POST", "/v1/sandboxes", {"template": digest})
    assert answer.status_code == 422 and answer.json()["code"] == "invalid_argument"
    assert "sha256" in answer.json()["message"]

    async def clean_up() -> None:
        async with remote(server, keys["alice"]) as alice:
            assert (await alice.get("alice-only")).digest == digest
            await alice.remove("alice-only")
            await alice.remove("shared")
        async with remote(server, keys["bob"]) as bob:
            await bob.remove("shared")

    asyncio.run(clean_up())


def test_quotas(tenants: tuple[ServerProcess, dict[str, str]]) -> None:
    """Past its bytes or its count a tenant's build is refused (403 forbidden, saying which
    quota) and leaves no name; replacing a template of its own is not a new one."""
    server, keys = tenants
    carol = keys["carol"]
    big = os.urandom(QUOTA_BYTES * 3 // 4)
    first = build(server, carol, "big1", [upload("/opt/b", big)])
    assert first.status_code == 201, first.text
    second = build(server, carol, "big2", [upload("/opt/b", big)])
    assert second.status_code == 403 and second.json()["code"] == "forbidden"
    assert second.json()["details"]["quota"] == "bytes"
    assert [t["name"] for t in call(server, carol, "GET", "/v1/templates").json()] == ["big1"]

    small = [{"kind": "env", "key": "N", "value": "1"}]
    for n in range(1, QUOTA_COUNT):
        answer = build(server, carol, f"c{n}", small)
        assert answer.status_code == 201, answer.text
    over = build(server, carol, "one-more", small)
    assert over.status_code == 403 and "quota" in over.json()["message"]
    assert over.json()["details"] == {"quota": "count", "limit": QUOTA_COUNT}
    again = build(server, carol, "c1", small)
    assert again.status_code == 201  # a rebuild replaces its own
    # Through the remote client, the same refusal as the same class.

    async def refused() -> None:
        async with remote(server, carol) as mine:
            with pytest.raises(ForbiddenError, match="quota"):
                await mine.build("one-more", "host", [])

    asyncio.run(refused())
    # Another tenant's room is its own.
    assert build(server, keys["bob"], "c9", small).status_code == 201
    assert call(server, keys["bob"], "DELETE", "/v1/templates/c9").status_code == 204


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"template": "sha256:" + "a" * 64}, 422, "invalid_argument"),
        # Build mode (a writable template root, uid 0) is the build engine's, never a caller's.
        ({"template": "any", "config": {"root_upper": "/tmp"}}, 422, "provider_unavailable"),
        ({"template": "nobody-has-this"}, 404, "template_not_found"),
    ],
)
def test_sandbox_template_refusals(
    tenants: tuple[ServerProcess, dict[str, str]], body: Any, status: int, code: str
) -> None:
    server, keys = tenants
    answer = call(server, keys["alice"], "POST", "/v1/sandboxes", body)
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text


def test_a_durable_sessions_sandbox_from_a_template(
    tenants: tuple[ServerProcess, dict[str, str]],
) -> None:
    """Attaching a session's sandbox resolves the name in the caller's tenant too."""
    server, keys = tenants
    alice, bob = keys["alice"], keys["bob"]
    env = [{"kind": "env", "key": "FROM_TEMPLATE", "value": "yes"}]
    assert build(server, alice, "sess", env).status_code == 201
    session = call(server, alice, "POST", "/v1/sessions", {}).json()["id"]
    path = f"/v1/sessions/{session}/sandboxes"
    attached = call(server, alice, "POST", path, {"template": "sess"})
    assert attached.status_code == 201, attached.text
    sandbox_id, lease = attached.json()["sandbox"]["id"], attached.json()["lease_id"]
    sb = sandlot.Sandbox.connect(sandbox_id, client=client(server, alice))
    assert sb.commands.run("echo $FROM_TEMPLATE").stdout == "yes\n"
    call(server, alice, "DELETE", f"/v1/sessions/{session}/leases/{lease}")
    theirs = call(server, bob, "POST", "/v1/sessions", {}).json()["id"]
    refused = call(server, bob, "POST", f"/v1/sessions/{theirs}/sandboxes", {"template": "sess"})
    assert refused.status_code == 404 and refused.json()["code"] == "template_not_found"
    assert call(server, alice, "DELETE", "/v1/templates/sess").status_code == 204


def test_the_server_logged_no_unhandled_exception(
    tenants: tuple[ServerProcess, dict[str, str]],
) -> None:
    """Last: builds that failed, were refused or lost their caller left no traceback."""
    log = tenants[0].log.read_text(errors="replace")
    markers = ("Traceback (most recent call last)", "Task exception was never retrieved")
    assert not [m for m in markers if m in log], log[-4000:]


def test_the_cli_builds_lists_shows_and_removes_on_the_server(
    tenants: tuple[ServerProcess, dict[str, str]], tmp_path: Path
) -> None:
    """`sandlot template build/ls/show/rm` with SANDLOT_URL set work on the key's tenant's
    templates (a local file step is uploaded); export, import and gc stay local."""
    import subprocess
    import sys

    server, keys = tenants
    (tmp_path / "hello.txt").write_text("from the cli\n")
    env = {**os.environ, "SANDLOT_URL": server.url, "SANDLOT_API_KEY": keys["dave"]}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "sandlot.cli", "template", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    built = cli("build", "viacli", "--from", "host", "--json",
                "--file", f"{tmp_path / 'hello.txt'}:/opt/hello.txt", "--env", "A=1")  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert [json.loads(line)["type"] for line in built.stdout.splitlines()][-1] == "done"
    listed = cli("ls", "--json")
    assert [t["name"] for t in json.loads(listed.stdout)] == ["viacli"], listed.stderr
    shown = cli("show", "viacli")
    assert "A=1" in shown.stdout and "file" in shown.stdout, shown.stderr
    assert call(server, keys["alice"], "GET", "/v1/templates/viacli").status_code == 404
    assert "this host's templates only" in cli("gc").stderr
    assert cli("rm", "viacli").returncode == 0
    assert json.loads(cli("ls", "--json").stdout) == []
