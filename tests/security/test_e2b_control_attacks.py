"""Attacks on the E2B control plane (``/sandboxes``, ``/v2/sandboxes``) of a real ``sandlot
serve`` with two tenants' keys on loopback, sent as raw HTTP as an attacker would: bodies too
big or malformed, absurd timeouts, templates that try to leave the mapping, an access token
passed off as an API key, forged paging tokens, another tenant's sandboxes looked for through
the filters. Every refusal answers E2B's ``{"code", "message"}`` and creates nothing."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from remote.server import ServerProcess

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.parametrize("provider", ["bwrap"], indirect=True),  # the server's default
]


class Tenant:
    def __init__(self, server: ServerProcess, key: str) -> None:
        self.key = key
        self.http = httpx.Client(base_url=server.url, headers={"X-API-KEY": key}, timeout=60)

    def create(self, **body: Any) -> httpx.Response:
        return self.http.post("/v2/sandboxes", json={"templateID": "base", **body})

    def listed(self, **params: Any) -> list[str]:
        answer = self.http.get("/v2/sandboxes", params=params)
        assert answer.status_code == 200, answer.text
        return [s["sandboxID"] for s in answer.json()]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix="sle2ba-", dir="/tmp"))
    process = ServerProcess(home)
    process.api_key = process.keys("create", "--name", "alice")  # type: ignore[attr-defined]
    process.other_key = process.keys("create", "--name", "mallory")  # type: ignore[attr-defined]
    process.start()
    yield process
    process.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> Tenant:
    return Tenant(server, server.api_key)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def mallory(server: ServerProcess) -> Tenant:
    return Tenant(server, server.other_key)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def victim(alice: Tenant) -> Iterator[dict[str, Any]]:
    """Alice's sandbox, with a tag in its metadata."""
    secret_tag = uuid.uuid4().hex
    answer = alice.create(timeout=900, metadata={"owner": "alice", "tag": secret_tag})
    assert answer.status_code == 201, answer.text
    made = answer.json()
    made["tag"] = secret_tag
    yield made
    alice.http.delete(f"/sandboxes/{made['sandboxID']}")


def refused(answer: httpx.Response, status: int) -> str:
    """An E2B error answer with ``status`` that leaks nothing; its message."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["code"] == status and isinstance(body["message"], str)
    for leak in ("Traceback", "/sandlot/", "site-packages", "sqlalchemy"):
        assert leak not in body["message"]
    return str(body["message"])


def none_created(tenant: Tenant, tag: str) -> None:
    assert tenant.listed(metadata=f"tag={tag}") == []


@pytest.mark.attack("E2B create: metadata and environments too big or too many")
def test_huge_metadata_and_env(provider: str, alice: Tenant) -> None:
    tag = uuid.uuid4().hex
    many = {f"k{i}": "v" for i in range(10_000)}
    refused(alice.create(metadata={"tag": tag, **many}), 400)
    refused(alice.create(metadata={"tag": tag, "big": "x" * 1_000_000}), 400)
    refused(alice.create(metadata={"tag": tag, "k" * 10_000: "v"}), 400)
    refused(alice.create(metadata={"tag": tag}, envVars={f"V{i}": "x" for i in range(5000)}), 400)
    refused(alice.create(metadata={"tag": tag}, envVars={"BIG": "x" * 1_000_000}), 400)
    for name in ("A=B", "1X", "", "X Y"):
        refused(alice.create(metadata={"tag": tag}, envVars={name: "v"}), 400)
    refused(alice.create(metadata={"tag": tag}, envVars={"NUL": "a\0b"}), 400)
    refused(alice.create(metadata={"tag": tag, "e2b.templateID": "docker:evil"}), 400)
    # Past the server's JSON body limit: refused before it is parsed.
    huge = b'{"metadata": {"a": "' + b"x" * (33 * 1024 * 1024) + b'"}}'
    answer = alice.http.post(
        "/v2/sandboxes", content=huge, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413
    none_created(alice, tag)


@pytest.mark.attack("E2B create, connect and set_timeout: negative, zero, huge, NaN timeouts")
def test_absurd_timeouts(provider: str, alice: Tenant, victim: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex
    path = f"/sandboxes/{victim['sandboxID']}"
    for raw in ("-1", "0", "1e18", "NaN", "Infinity", "-Infinity", "true", '"300"', "[300]",
                "99999999999999999999999999999", "2.5"):  # fmt: skip
        body = f'{{"templateID": "base", "metadata": {{"tag": "{tag}"}}, "timeout": {raw}}}'
        headers = {"Content-Type": "application/json"}
        refused(alice.http.post("/v2/sandboxes", content=body, headers=headers), 400)
        timeout = f'{{"timeout": {raw}}}'
        refused(alice.http.post(path + "/timeout", content=timeout, headers=headers), 400)
        refused(alice.http.post(f"/v2{path}/connect", content=timeout, headers=headers), 400)
    none_created(alice, tag)
    detail = alice.http.get(path).json()
    assert detail["state"] == "running"  # untouched


@pytest.mark.attack("E2B create: a templateID that tries to leave the template mapping")
def test_template_traversal(provider: str, alice: Tenant) -> None:
    tag = uuid.uuid4().hex
    for template in (
        "../../../etc/passwd",
        "/etc/passwd",
        "base/../docker",
        "docker:../../../../etc",
        "docker:-v /:/host alpine",
        "docker:--privileged",
        "docker:",
        "process",  # the unisolated provider, which this server refuses
        "b\0ase",
        "x" * 5000,
        "%2e%2e%2fetc",
    ):
        answer = alice.create(templateID=template, metadata={"tag": tag})
        assert answer.status_code in (400, 404), (template, answer.text)
        refused(answer, answer.status_code)
    none_created(alice, tag)


@pytest.mark.attack("E2B control plane: junk instead of JSON, wrong JSON types")
def test_junk_json(provider: str, alice: Tenant, victim: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex
    path = f"/sandboxes/{victim['sandboxID']}"
    for junk in (b"{", b"[]", b"null", b'"x"', b"\xff\xfe\x00", b'{"templateID": 5}',
                 b'{"metadata": ["a"]}', b'{"metadata": {"a": 1}}', b'{"envVars": "A=B"}',
                 b'{"network": {"allowOut": "example.com"}}', b"{" * 100_000):  # fmt: skip
        headers = {"Content-Type": "application/json"}
        refused(alice.http.post("/v2/sandboxes", content=junk, headers=headers), 400)
        refused(alice.http.post("/sandboxes", content=junk, headers=headers), 400)
        if not junk.startswith(b'{"'):  # an object's unknown fields are ignored
            refused(alice.http.put(path + "/network", content=junk, headers=headers), 400)
    none_created(alice, tag)


@pytest.mark.attack("E2B control plane: a sandbox's access token (or a made-up key) as API key")
def test_access_token_is_not_an_api_key(
    provider: str, server: ServerProcess, victim: dict[str, Any]
) -> None:
    for key in (victim["envdAccessToken"], "sl_" + "A" * 40, "k" * 5000, ""):
        thief = Tenant(server, key) if key else None
        http = thief.http if thief else httpx.Client(base_url=server.url)
        refused(http.get("/v2/sandboxes"), 401)
        refused(http.get(f"/sandboxes/{victim['sandboxID']}"), 401)
        refused(http.delete(f"/sandboxes/{victim['sandboxID']}"), 401)
        refused(http.post("/v2/sandboxes", json={"templateID": "base"}), 401)
    owner = Tenant(server, server.api_key)  # type: ignore[attr-defined]
    assert owner.http.get(f"/sandboxes/{victim['sandboxID']}").json()["state"] == "running"


@pytest.mark.attack("E2B list: forged, altered or another tenant's paging tokens")
def test_paging_token_forgery(provider: str, alice: Tenant, mallory: Tenant) -> None:
    tag = uuid.uuid4().hex
    made = [alice.create(timeout=600, metadata={"tag": tag}).json()["sandboxID"] for _ in range(2)]
    try:
        first = alice.http.get("/v2/sandboxes", params={"metadata": f"tag={tag}", "limit": 1})
        token = first.headers["x-next-token"]
        assert [s["sandboxID"] for s in first.json()] == made[:1]
        payload, mac = token.split(".")
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        # Rewind the cursor to before everything (to list past a filter), keeping the MAC.
        rewound = decoded.decode().split("|")
        rewound[1] = "0.0"
        forged_payload = base64.urlsafe_b64encode("|".join(rewound).encode()).decode()
        flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
        for bad in (f"{forged_payload.rstrip('=')}.{mac}", flipped, "x", "a.b", "..", "=" * 500,
                    base64.urlsafe_b64encode(b"asc|0|sb-x").decode() + ".AAAA"):  # fmt: skip
            answer = alice.http.get("/v2/sandboxes", params={"limit": 1, "nextToken": bad})
            refused(answer, 400)
        # A good token, for another order or in another tenant's hands, is no token.
        params: dict[str, Any] = {"limit": 1, "nextToken": token}
        refused(alice.http.get("/v2/sandboxes", params={**params, "order": "desc"}), 400)
        refused(mallory.http.get("/v2/sandboxes", params=params), 400)
        refused(alice.http.get("/v2/sandboxes", params={**params, "nextToken": "x" * 5000}), 400)
        second = alice.http.get("/v2/sandboxes", params={**params, "metadata": f"tag={tag}"})
        assert [s["sandboxID"] for s in second.json()] == made[1:]
        assert "x-next-token" not in second.headers
    finally:
        for sandbox_id in made:
            alice.http.delete(f"/sandboxes/{sandbox_id}")


@pytest.mark.attack("E2B: find, read, extend, pause, resume or kill another tenant's sandbox")
def test_another_tenant(provider: str, mallory: Tenant, victim: dict[str, Any]) -> None:
    sandbox_id, tag = victim["sandboxID"], victim["tag"]
    # Through every filter the listing has: metadata (also the server's own key), template,
    # state, both orders, the older listing.
    assert sandbox_id not in mallory.listed(metadata=f"tag={tag}")
    assert sandbox_id not in mallory.listed(metadata="owner=alice")
    assert sandbox_id not in mallory.listed(metadata="e2b.templateID=base")
    assert sandbox_id not in mallory.listed(template="base", state="running,paused")
    assert sandbox_id not in mallory.listed(order="desc")
    old = mallory.http.get("/sandboxes", params={"metadata": f"tag={tag}"})
    assert old.status_code == 200 and old.json() == []
    path = f"/sandboxes/{sandbox_id}"
    refused(mallory.http.get(path), 404)
    refused(mallory.http.post(path + "/timeout", json={"timeout": 1}), 404)
    refused(mallory.http.post(f"/v2{path}/connect", json={"timeout": 1}), 404)
    refused(mallory.http.post(path + "/connect", json={"timeout": 1}), 404)
    refused(mallory.http.post(path + "/pause", json={}), 404)
    refused(mallory.http.post(path + "/resume", json={}), 404)
    refused(mallory.http.put(path + "/network", json={"allowOut": ["example.com"]}), 404)
    refused(mallory.http.get(path + "/metrics"), 404)
    refused(mallory.http.get(path + "/logs"), 404)
    refused(mallory.http.post(path + "/fork", json={}), 404)
    refused(mallory.http.delete(path), 404)
    # Ids that are not ids.
    for other in ("x" * 10_000, "sb-000000000000", "sb-0%00", "sb-%E2%80%AE"):
        refused(mallory.http.get(f"/sandboxes/{other}"), 404)
    for other in ("..", "%2e%2e"):  # not an E2B route at all: the server's own 404
        assert mallory.http.get(f"/sandboxes/{other}").status_code == 404


@pytest.mark.attack("E2B network: rules that open everything or reach the host's networks")
def test_network_rules(provider: str, alice: Tenant) -> None:
    tag = uuid.uuid4().hex
    for allow in (["0.0.0.0/0"], ["::/0"], ["*"], ["*.com"], ["https://example.com/x"],
                  ["x" * 400], [f"h{i}.example.com" for i in range(1000)]):  # fmt: skip
        answer = alice.create(metadata={"tag": tag}, network={"allowOut": allow})
        refused(answer, 400)
    # The host's own networks need the operator's --egress-private.
    for private in ("169.254.169.254", "127.0.0.1", "10.0.0.0/8"):
        answer = alice.create(metadata={"tag": tag}, network={"allowOut": [private]})
        refused(answer, 403)
    answer = alice.create(metadata={"tag": tag}, network={"egressProxy": {"address": "a:1"}})
    refused(answer, 400)
    none_created(alice, tag)


@pytest.mark.attack("E2B list: a metadata filter or state list built to break the parser")
def test_list_filters(provider: str, alice: Tenant) -> None:
    for params in (
        {"metadata": "a"},
        {"metadata": "=" * 100},
        {"metadata": "&".join(f"k{i}=v" for i in range(1000))},
        {"metadata": "x" * 20_000},
        {"state": "running,dead"},
        {"limit": 0},
        {"limit": 10_000},
        {"order": "sideways"},
        {"startedAfter": "yesterday"},
    ):
        refused(alice.http.get("/v2/sandboxes", params=params), 400)
    assert json.loads(alice.http.get("/v2/sandboxes", params={"metadata": "a%3Db=c"}).text) == []
