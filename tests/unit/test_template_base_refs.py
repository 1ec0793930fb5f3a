"""oci: references as skopeo is given them, and where TLS verification may be skipped."""

from __future__ import annotations

import pytest

from sandlot.errors import InvalidArgumentError
from sandlot.workspace.templates.base_oci import OciRef, _tls_args
from sandlot.workspace.templates.limits import BaseLimits

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "registry", "name"),
    [
        ("python:3.12-slim", None, "python"),
        ("library/python:3.12", None, "library/python"),
        ("team/app", None, "team/app"),
        ("127.0.0.1:5000/sandlot/tiny:1", "127.0.0.1:5000", "127.0.0.1:5000/sandlot/tiny"),
        ("localhost/app", "localhost", "localhost/app"),
        ("[::1]:5000/app:v1", "[::1]:5000", "[::1]:5000/app"),
        ("registry.example/a/b@" + DIGEST, "registry.example", "registry.example/a/b"),
    ],
)
def test_references(ref: str, registry: str | None, name: str) -> None:
    parsed = OciRef(ref)
    assert (parsed.registry, parsed.name) == (registry, name)
    assert parsed.by_digest(DIGEST) == f"{name}@{DIGEST}"
    assert parsed.pinned == (DIGEST if "@" in ref else None)


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "-x",
        "--src-creds=a:b",
        "UPPER",
        "a b",
        "a/../b",
        "x:y:z",
        "a@sha256:12",
        "/abs",
        "a" * 600,
    ],
)
def test_bad_references(ref: str) -> None:
    with pytest.raises(InvalidArgumentError, match="not an image reference"):
        OciRef(ref)


def test_tls_is_verified_except_on_loopback_and_listed_registries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SANDLOT_INSECURE_REGISTRIES", "mirror.internal:5000, other.internal")
    limits = BaseLimits.from_env()
    insecure = ["--tls-verify=false"]
    for ref in ("127.0.0.1:5000/a", "localhost:5000/a", "[::1]:5000/a", "mirror.internal:5000/a"):
        assert _tls_args(OciRef(ref), limits, "--tls-verify") == insecure, ref
    for ref in ("python", "mirror.internal/a", "registry.example/a", "10.0.0.1:5000/a"):
        assert _tls_args(OciRef(ref), limits, "--tls-verify") == [], ref
    monkeypatch.delenv("SANDLOT_INSECURE_REGISTRIES")
    assert _tls_args(OciRef("mirror.internal:5000/a"), BaseLimits.from_env(), "--tls-verify") == []


def test_docker_references_and_ids() -> None:
    from sandlot.workspace.templates.base_docker import check_ref

    for ref in ("myimage:latest", "sandlot-test-bookworm:v2", "ab" * 6, "sha256:" + "ab" * 32):
        check_ref(ref)
    for ref in ("../containers/json", "img?x=1", "a/../../b", "-x"):
        with pytest.raises(InvalidArgumentError):
            check_ref(ref)
