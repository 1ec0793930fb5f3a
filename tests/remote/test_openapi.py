"""The HTTP API against its own OpenAPI document: schemathesis fuzzes a live ``sandlot serve``.

Every operation gets generated requests (valid and invalid, from the schema) in four runs:

- each ``/v1/sandboxes/{sandbox_id}/...`` operation against a live sandbox of its own, its id
  pinned for ``sandbox_id`` (so calls get past 404, and an operation that kills or breaks its
  sandbox, such as ``DELETE`` or ``POST .../timeout``, cannot starve the others);
- every operation with made-up ids (404 or 422), on the same server without API keys;
- the ``keys`` routes with an admin key, on a second server (creating a key turns
  authentication on for good), and every route there without a key (401).

No answer may be a 5xx; answers must match the schema where it declares one, and every error
answer must be the documented ``{code, message, details}`` body. The number of examples per
operation is bounded (``SANDLOT_FUZZ_EXAMPLES``) so the file runs in a few minutes; Hypothesis
keeps no example database. Edge values that the fuzzer reaches only sometimes are asked every
time by plain tests at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis import Config
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from .server import ServerProcess

MAX_EXAMPLES = int(os.environ.get("SANDLOT_FUZZ_EXAMPLES", "25"))
FEW = min(MAX_EXAMPLES, 5)  # where the generated part of a call never reaches new code
# The coverage phase sends every boundary value the schema defines (about 2,400 calls): worth
# it once per route where those values reach the handler, nowhere else.
NO_COVERAGE = {"coverage": {"enabled": False}}
SANDBOX = "/v1/sandboxes/{sandbox_id}"
# Routes that answer with Server-Sent Events may follow a quiet log for ever: schemathesis
# reads one event or stops at the request timeout, so theirs is short.
STREAMING = r"/(events|commands|code/run|code/install)$"


def _config(
    parameters: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    operations: list[dict[str, Any]] | None = None,
    examples: int = MAX_EXAMPLES,
    phases: dict[str, Any] | None = None,
) -> Config:
    return Config.from_dict(
        {
            "generation": {"max-examples": examples, "database": "none"},
            "phases": phases or {},
            "request-timeout": 10,
            "max-stream-events": 1,
            "parameters": parameters or {},
            "headers": headers or {},
            "operations": [
                {"include-path-regex": STREAMING, "request-timeout": 1.0},
                *(operations or []),
            ],
        }
    )


def _answer(
    url: str, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """One plain call: its status and its JSON body (None when empty or not JSON)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def _call(url: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    status, answer = _answer(url, method, path, body, token)
    assert 200 <= status < 300, f"{method} {path}: {status} {answer}"
    return answer


def _new_sandbox(url: str, token: str | None = None) -> str:
    sandbox_id: str = _call(url, "POST", "/v1/sandboxes", {}, token)["id"]
    return sandbox_id


@contextmanager
def _server(prefix: str) -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    process = ServerProcess(home)
    try:
        yield process
    finally:
        process.stop()
        if os.environ.get("SANDLOT_TEST_KEEP_HOME"):
            print(f"server log: {process.log}")
        else:
            shutil.rmtree(home, ignore_errors=True)


# -- the checks ------------------------------------------------------------------------------


def error_body(ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every error answer is an ``ErrorBody``: ``{code, message, details}``."""
    if response.status_code < 400 or not response.content:
        return
    body = response.json()
    assert isinstance(body, dict), f"error body is not an object: {response.text[:300]}"
    assert isinstance(body.get("code"), str) and body["code"], f"no code: {response.text[:300]}"
    assert isinstance(body.get("message"), str), f"no message: {response.text[:300]}"
    assert isinstance(body.get("details"), dict), f"no details: {response.text[:300]}"


def unauthenticated(
    ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """Without a valid key, every ``/v1`` route answers 401, or 400/422 to a malformed call
    and 405 to a method it lacks: nothing about what exists."""
    if case.operation.path.startswith("/v1/"):
        assert response.status_code in (400, 401, 405, 422), (
            f"{response.status_code} without a key: {response.text[:300]}"
        )


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
    error_body,
]


def _validate(case: schemathesis.Case, *extra: Any) -> None:
    case.call_and_validate(checks=[*CHECKS, *extra])


# -- server 1: no keys (loopback, every caller is the local tenant's admin) ------------------


@pytest.fixture(scope="module")
def open_server() -> Iterator[ServerProcess]:
    with _server("slfz-") as process:
        yield process.start()


@pytest.fixture(scope="module")
def live_api(open_server: ServerProcess) -> Any:
    """The schema with ``sandbox_id`` pinned to a live sandbox, one per operation: one that
    kills its sandbox (``DELETE``, a short ``timeout``) or breaks it cannot starve the rest."""
    url = open_server.url
    pinned = []
    for path, operations in _call(url, "GET", "/openapi.json")["paths"].items():
        if "{sandbox_id}" in path:
            for method in operations:
                sandbox_id = _new_sandbox(url)
                pinned.append(
                    {
                        "include-name": f"{method.upper()} {path}",
                        "parameters": {"path.sandbox_id": sandbox_id},
                    }
                )
    return schemathesis.openapi.from_url(url + "/openapi.json", config=_config(operations=pinned))


@pytest.fixture(scope="module")
def any_api(open_server: ServerProcess) -> Any:
    """The schema with every parameter generated (ids that do not exist). A made-up
    ``sandbox_id`` ends every such call at the same lookup (404), after the same validation
    that ``test_live_sandbox`` fuzzes with a live sandbox: a few cases each show it."""
    few = {"include-path-regex": r"\{sandbox_id\}", "generation": {"max-examples": FEW}}
    config = _config(operations=[{**few, "phases": NO_COVERAGE}])
    return schemathesis.openapi.from_url(open_server.url + "/openapi.json", config=config)


live = schemathesis.pytest.from_fixture("live_api").include(path_regex=r"\{sandbox_id\}")
# Creating a key would switch authentication on for the rest of the run: keys have a server
# of their own below. A valid template build runs its steps (sandboxes, package installs
# through the network): tests/remote/test_templates_remote.py and tests/security cover it.
anything = (
    schemathesis.pytest.from_fixture("any_api")
    .exclude(method="POST", path="/v1/keys")
    .exclude(method="POST", path="/v1/templates")
)


@live.parametrize()
def test_live_sandbox(case: schemathesis.Case) -> None:
    _validate(case)


@anything.parametrize()
def test_unknown_ids(case: schemathesis.Case) -> None:
    _validate(case)


# -- server 2: with keys ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[tuple[ServerProcess, str, str]]:
    """A server with an admin key (its token) and a spare key (its id, for DELETE)."""
    with _server("slfk-") as process:
        token = process.keys("create", "--name", "fuzz", "--admin")
        spare_token = process.keys("create", "--name", "spare")
        spare_id = spare_token.split("_")[1]
        yield process.start(), token, spare_id


@pytest.fixture(scope="module")
def keys_api(keyed_server: tuple[ServerProcess, str, str]) -> Any:
    process, token, spare_id = keyed_server
    config = _config({"path.key_id": spare_id}, headers={"Authorization": f"Bearer {token}"})
    return schemathesis.openapi.from_url(process.url + "/openapi.json", config=config)


@pytest.fixture(scope="module")
def keyless_api(keyed_server: tuple[ServerProcess, str, str]) -> Any:
    process, _, _ = keyed_server
    # The key is checked before anything reads the body: a few cases an operation show it.
    config = _config(examples=FEW, phases=NO_COVERAGE)
    return schemathesis.openapi.from_url(process.url + "/openapi.json", config=config)


keys = schemathesis.pytest.from_fixture("keys_api").include(path_regex=r"^/v1/keys")
keyless = schemathesis.pytest.from_fixture("keyless_api")


@keys.parametrize()
def test_keys(case: schemathesis.Case) -> None:
    _validate(case)


@keyless.parametrize()
def test_without_a_key(case: schemathesis.Case) -> None:
    _validate(case, unauthenticated)


# -- edge values the fuzzer finds only sometimes, asked every time -----------------------------

# Each is valid JSON for its route's schema, or close to it; none may answer 5xx.
EDGES = [
    ("/v1/sandboxes", {"timeout": 1e300}),
    ("/v1/sandboxes", {"timeout": 1e9}),
    ("/v1/sandboxes", {"resources": {"pids": 10**20}}),
    ("/v1/sandboxes", {"resources": {"cpus": 1e308}}),
    ("/v1/sandboxes", {"resources": {"memory_mb": 10**20}}),
    ("/v1/sandboxes", {"resources": {"tmp_mb": 10**20}}),
    ("/v1/sandboxes", {"workdir": "/\0"}),
    ("/v1/sandboxes", {"metadata": {"\0": "\0"}}),
    ("{sandbox}/commands", {"cmd": "true", "timeout": 1e308}),
    ("{sandbox}/commands", {"argv": ["true"], "timeout": 5e-324}),
    ("{sandbox}/code/run", {"code": "1", "timeout": 1e308, "grace": 1e308}),
    ("{sandbox}/code/run", {"code": "1", "context": "edge", "inactivity_timeout": 1e308}),
    ("{sandbox}/code/contexts", {"cwd": "/no/such/folder"}),
    ("{sandbox}/processes/2147483647/signal", {"signal": 64}),
]


@pytest.fixture(scope="module")
def edge_sandbox(open_server: ServerProcess) -> str:
    return _new_sandbox(open_server.url)


@pytest.mark.parametrize(("path", "body"), EDGES, ids=[f"{p} {b}" for p, b in EDGES])
def test_edge_values_never_answer_5xx(
    open_server: ServerProcess, edge_sandbox: str, path: str, body: Any
) -> None:
    path = path.replace("{sandbox}", f"/v1/sandboxes/{edge_sandbox}")
    status, answer = _answer(open_server.url, "POST", path, body)
    if path == "/v1/sandboxes" and status == 201:
        _call(open_server.url, "DELETE", f"/v1/sandboxes/{answer['id']}")
    assert status < 500, f"POST {path} {json.dumps(body)} -> {status} {answer}"
    if status >= 400:
        assert isinstance(answer, dict) and {"code", "message", "details"} <= set(answer)


def test_the_longest_timeout_the_schema_allows_keeps_the_sandbox(
    open_server: ServerProcess,
) -> None:
    """``POST .../timeout`` with the schema's maximum: accepted, and the sandbox lives on."""
    url = open_server.url
    spec = _call(url, "GET", "/openapi.json")
    longest = spec["components"]["schemas"]["TimeoutRequest"]["properties"]["seconds"]["maximum"]
    sandbox_id = _new_sandbox(url)
    try:
        _call(url, "POST", f"/v1/sandboxes/{sandbox_id}/timeout", {"seconds": longest})
        time.sleep(1.0)
        assert _call(url, "GET", f"/v1/sandboxes/{sandbox_id}")["state"] == "running"
        status, answer = _answer(url, "GET", f"/v1/sandboxes/{sandbox_id}/files/exists?path=/")
        assert (status, answer) == (200, {"exists": True}), f"the sandbox died: {answer}"
    finally:
        _answer(url, "DELETE", f"/v1/sandboxes/{sandbox_id}")


def test_a_deep_listing_leaves_the_sandbox_usable(open_server: ServerProcess) -> None:
    """``files/list`` of ``/`` at the deepest depth the schema allows: an answer or an error,
    and the sandbox still works afterwards."""
    url = open_server.url
    sandbox_id = _new_sandbox(url)
    try:
        status, answer = _answer(
            url, "GET", f"/v1/sandboxes/{sandbox_id}/files/list?path=/&depth=64"
        )
        assert status < 500, f"{status} {answer}"
        status, answer = _answer(url, "GET", f"/v1/sandboxes/{sandbox_id}/files/exists?path=/")
        assert (status, answer) == (200, {"exists": True}), f"the sandbox broke: {answer}"
    finally:
        _answer(url, "DELETE", f"/v1/sandboxes/{sandbox_id}")


# -- the document itself ---------------------------------------------------------------------


def test_openapi_lists_every_route_family(server: ServerProcess) -> None:
    spec = _call(server.url, "GET", "/openapi.json")
    paths: dict[str, dict[str, Any]] = spec["paths"]
    tags = {tag for ops in paths.values() for op in ops.values() for tag in op.get("tags", [])}
    assert {"sandboxes", "executions", "files", "code", "keys", "health"} <= tags
    expected = {
        "sandboxes": ("post", "/v1/sandboxes"),
        "commands": ("post", SANDBOX + "/commands"),
        "executions": ("get", SANDBOX + "/executions/{execution_id}"),
        "execution events": ("get", SANDBOX + "/executions/{execution_id}/events"),
        "files": ("get", SANDBOX + "/files"),
        "code": ("post", SANDBOX + "/code/run"),
        "code contexts": ("post", SANDBOX + "/code/contexts"),
        "keys": ("post", "/v1/keys"),
        "templates": ("post", "/v1/templates"),
        "healthz": ("get", "/healthz"),
        "readyz": ("get", "/readyz"),
        "metrics": ("get", "/metrics"),
    }
    missing = {name for name, (verb, path) in expected.items() if verb not in paths.get(path, {})}
    assert not missing, f"missing from /openapi.json: {sorted(missing)}"


def test_the_server_logged_no_unhandled_exception(open_server: ServerProcess) -> None:
    """Last: an exception after a response has started (a stream) never shows as a 5xx, only
    in the log. Everything above ran on this server."""
    log = open_server.log.read_text(errors="replace")
    markers = ("Traceback (most recent call last)", "Task exception was never retrieved")
    found = [log.find(marker) for marker in markers if marker in log]
    assert not found, f"the server logged an exception:\n{log[min(found) :][:4000]}"
