"""The callback bridge's settings and route patterns: validation only, no I/O."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sandlot.egress.bridge import Bridge, BridgeConfig, BridgeRecord, _compile
from sandlot.errors import EgressError
from sandlot.secrets.refs import SecretRef

ROUTES = [["GET", "/runs/*"]]


def config(**kwargs: object) -> BridgeConfig:
    return BridgeConfig.model_validate(
        {"target": "https://api.example.com", "routes": ROUTES, **kwargs}
    )


def test_defaults_and_normalisation():
    c = config(
        target="https://api.example.com:8443/v1/",
        headers={"Authorization": {"secret": "TOKEN"}, "X-Plain": "yes"},
        routes=[["post", "/runs/*/events"], ["*", "/files/**"]],
        request_headers=["Accept", "accept", "X-Trace"],
    )
    assert c.target == "https://api.example.com:8443/v1"
    assert c.headers["Authorization"] == SecretRef(secret="TOKEN")
    assert c.routes == [("POST", "/runs/*/events"), ("*", "/files/**")]
    assert c.request_headers == ["accept", "x-trace"]
    assert c.response_headers == ["content-type", "etag", "last-modified"]
    assert (c.body_limit, c.queue, c.timeout) == (256 * 1024, 64, 30.0)
    assert BridgeConfig.model_validate(c.model_dump(mode="json")) == c


@pytest.mark.parametrize(
    "target",
    [
        "ftp://example.com",
        "example.com",
        "http://",
        "http://user:pw@example.com",
        "http://token@example.com",
        "http://example.com/?a=1",
        "http://example.com/#x",
        "http://example.com:99999",
        "http://example.com:0",
        "http://example.com/a/../b",
        "http://example.com/a%2fb",
        "http://example.com/a/..;/b",
        "http://example.com/a/%252e%252e/b",
    ],
)
def test_bad_targets_are_refused(target):
    with pytest.raises(ValidationError):
        config(target=target)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"routes": []},
        {"routes": [["GE T", "/x"]]},
        {"routes": [["GET", "x"]]},
        {"routes": [["GET", "/a/**/b"]]},
        {"routes": [["GET", "/a*"]]},
        {"routes": [["GET", "/a/../b"]]},
        {"routes": [["GET", "/a//b"]]},
        {"routes": [["GET", "/a%2fb"]]},
        {"routes": [["GET", "/a/..;/b"]]},
        {"routes": [["GET", "/a/%252e%252e"]]},
        {"routes": [["GET", "/a/.%2e"]]},
        {"routes": [["GET", "/a/;x"]]},
        {"routes": [["GET", "/a?b"]]},
        {"routes": [["GET"]]},
        {"headers": {"Bad Name": "x"}},
        {"headers": {"Host": "x"}},
        {"headers": {"X-A": "line\r\nbreak"}},
        {"headers": {"X-A": "a", "x-a": "b"}},
        {"headers": {"X-A": {"secret": "1bad"}}},
        {"request_headers": ["authorization"]},
        {"request_headers": ["x-sandlot-bridge-token"]},
        {"request_headers": ["content-length"]},
        {"response_headers": ["transfer-encoding"]},
        {"body_limit": -1},
        {"body_limit": 10**9},
        {"queue": 0},
        {"queue": 10**6},
        {"timeout": 0},
        {"timeout": 10**5},
        {"nonsense": 1},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValidationError):
        config(**kwargs)


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/runs/*", "/runs/1", True),
        ("/runs/*", "/runs/", False),
        ("/runs/*", "/runs/1/x", False),
        ("/runs/*/events", "/runs/a-b/events", True),
        ("/files/**", "/files/a/b/c.txt", True),
        ("/files/**", "/files/a", True),
        ("/files/**", "/files/", False),
        ("/files/**", "/files", False),
        ("/", "/", True),
        ("/", "/x", False),
        ("/a.b", "/aXb", False),
        ("/a%20b", "/a%20b", True),
        # literal segments are made canonical like the paths they are matched against
        ("/a%7eb", "/a~b", True),
        ("/a%2ejson", "/a.json", True),
        ("/a%c3%a9", "/a%C3%A9", True),
        ("/runs", "/runs;x", False),  # a literal never matches a segment with parameters
        ("/runs/*", "/runs/1;x", True),
    ],
)
def test_route_patterns(pattern, path, matches):
    assert bool(_compile(pattern).fullmatch(path.encode())) is matches


def test_the_target_path_is_made_canonical():
    assert config(target="https://api.example.com/v%7e1/").target == "https://api.example.com/v~1"


def test_bridge_refuses_bad_token_or_header_values():
    c = config()
    with pytest.raises(EgressError):
        Bridge(c, token="", headers={}, identity={})
    with pytest.raises(EgressError):
        Bridge(c, token="t", headers={"Authorization": "a\nb"}, identity={})
    with pytest.raises(EgressError):
        Bridge(c, token="t", headers={}, identity={"Bad Name": "x"})


def test_record_event_has_only_its_fields():
    record = BridgeRecord("GET", "/runs/1", 200, 0.0012345678, "GET /runs/*")
    assert record.to_event() == {
        "method": "GET",
        "path": "/runs/1",
        "status": 200,
        "duration": 0.001235,
        "rule": "GET /runs/*",
    }
    assert BridgeRecord.kind == "bridge"
