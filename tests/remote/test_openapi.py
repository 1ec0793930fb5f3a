"""The HTTP API against its own OpenAPI document: schemathesis fuzzes a live ``sandlot serve``.

Every operation gets generated requests (valid and invalid, from the schema) in four runs:

- against one live sandbox, whose id is pinned for ``sandbox_id`` (so calls get past 404);
- with made-up ids everywhere (all 404 or 422);
- ``DELETE /v1/sandboxes/{id}`` and ``POST .../timeout`` against a spare sandbox of their own,
  which they may kill without starving the first run;
- the ``keys`` routes with an admin key, on a second server (creating a key turns
  authentication on for good), and every route without a key there (all 401).

No answer may be a 5xx; answers must match the schema where it declares one, and every error
answer must be the documented ``{code, message, details}`` body. The number of examples per
operation is bounded so the file runs in a few minutes; Hypothesis keeps no database (nothing
is written into the repository).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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

MAX_EXAMPLES = int(os.environ.get("SANDLOT_FUZZ_EXAMPLES", "8"))
SANDBOX = "/v1/sandboxes/{sandbox_id}"
# Routes that answer with Server-Sent Events may follow a quiet log for ever: schemathesis
# reads a few events or stops at the request timeout, so theirs is short.
STREAMING = r"/(events|commands|code/run|code/install)$"
FAMILIES = ("sandboxes", "commands", "executions", "files", "code", "keys")


def _config(parameters: dict[str, str] | None = None) -> Config:
    return Config.from_dict(
        {
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "request-timeout": 10,
            "max-stream-events": 2,
            "parameters": parameters or {},
            "operations": [{"include-path-regex": STREAMING, "request-timeout": 1.5}],
        }
    )


def _call(url: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        raw = answer.read()
    return json.loads(raw) if raw else None


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
    """Without a valid key, every ``/v1`` route answers 401 (or 405 to a method it lacks, or
    422 to a malformed call: neither tells anything)."""
    if case.operation.path.startswith("/v1/"):
        assert response.status_code in (401, 405, 422), (
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
    """The schema with ``sandbox_id`` pinned to a live sandbox."""
    sandbox_id = _new_sandbox(open_server.url)
    config = _config({"path.sandbox_id": sandbox_id})
    return schemathesis.openapi.from_url(open_server.url + "/openapi.json", config=config)


@pytest.fixture(scope="module")
def any_api(open_server: ServerProcess) -> Any:
    """The schema with every parameter generated (ids that do not exist)."""
    return schemathesis.openapi.from_url(open_server.url + "/openapi.json", config=_config())


@pytest.fixture(scope="module")
def spare_api(open_server: ServerProcess) -> Any:
    """The schema with ``sandbox_id`` pinned to a sandbox that may be killed."""
    config = _config({"path.sandbox_id": _new_sandbox(open_server.url)})
    return schemathesis.openapi.from_url(open_server.url + "/openapi.json", config=config)


# Creating a key would switch authentication on for the rest of the run: keys have a server
# of their own below. Killing the sandbox or shortening its life would starve the other calls.
live = (
    schemathesis.pytest.from_fixture("live_api")
    .include(path_regex=r"^/v1/sandboxes/\{sandbox_id\}")
    .exclude(method="DELETE", path=SANDBOX)
    .exclude(method="POST", path=SANDBOX + "/timeout")
)
anything = schemathesis.pytest.from_fixture("any_api").exclude(method="POST", path="/v1/keys")
spare = (
    schemathesis.pytest.from_fixture("spare_api")
    .include(method="DELETE", path=SANDBOX)
    .include(method="POST", path=SANDBOX + "/timeout")
)


@live.parametrize()
def test_live_sandbox(case: schemathesis.Case) -> None:
    _validate(case)


@anything.parametrize()
def test_unknown_ids(case: schemathesis.Case) -> None:
    _validate(case)


@spare.parametrize()
def test_kill_and_timeout(case: schemathesis.Case) -> None:
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
    config = _config({"header.Authorization": f"Bearer {token}", "path.key_id": spare_id})
    return schemathesis.openapi.from_url(process.url + "/openapi.json", config=config)


@pytest.fixture(scope="module")
def keyless_api(keyed_server: tuple[ServerProcess, str, str]) -> Any:
    process, _, _ = keyed_server
    return schemathesis.openapi.from_url(process.url + "/openapi.json", config=_config())


keys = schemathesis.pytest.from_fixture("keys_api").include(path_regex=r"^/v1/keys")
keyless = schemathesis.pytest.from_fixture("keyless_api")


@keys.parametrize()
def test_keys(case: schemathesis.Case) -> None:
    _validate(case)


@keyless.parametrize()
def test_without_a_key(case: schemathesis.Case) -> None:
    _validate(case, unauthenticated)


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
        "healthz": ("get", "/healthz"),
        "readyz": ("get", "/readyz"),
        "metrics": ("get", "/metrics"),
    }
    missing = {name for name, (method, path) in expected.items() if method not in paths.get(path, {})}
    assert not missing, f"missing from /openapi.json: {sorted(missing)}"
