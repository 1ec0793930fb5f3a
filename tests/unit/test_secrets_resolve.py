"""Resolving secret references in environments, headers and provider config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from sandlot.errors import InvalidArgumentError, SecretNotFoundError
from sandlot.secrets.crypto import KEY_ENV
from sandlot.secrets.refs import SecretRef, as_ref, is_ref
from sandlot.secrets.resolve import (
    check_config_refs,
    has_refs,
    ref_names,
    resolve_config,
    resolve_env,
    resolve_values,
    secret_fields,
)
from sandlot.secrets.store import LocalSecrets


@pytest.fixture
async def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalSecrets:
    monkeypatch.delenv(KEY_ENV, raising=False)
    secrets = LocalSecrets(tmp_path)
    await secrets.set("API_TOKEN", "tok-123456")
    await secrets.set("DB_PASSWORD", "pw-abcdef")
    return secrets


async def test_an_environment_resolves_refs_and_reports_the_values(store: LocalSecrets) -> None:
    env = {
        "PLAIN": "visible",
        "TOKEN": SecretRef(secret="API_TOKEN"),
        "PASS": {"secret": "DB_PASSWORD"},  # the JSON form
        "AGAIN": SecretRef(secret="API_TOKEN"),
    }
    resolved, used = await resolve_env(env, store)
    assert resolved == {
        "PLAIN": "visible",
        "TOKEN": "tok-123456",
        "PASS": "pw-abcdef",
        "AGAIN": "tok-123456",
    }
    assert list(resolved) == list(env)
    assert used == ["tok-123456", "pw-abcdef"]
    assert await resolve_env({"A": "b"}, store) == ({"A": "b"}, [])


async def test_a_missing_secret_names_itself(store: LocalSecrets) -> None:
    with pytest.raises(SecretNotFoundError, match="'NOT_THERE'") as caught:
        await resolve_values({"Authorization": {"secret": "NOT_THERE"}}, store)
    assert caught.value.details == {"name": "NOT_THERE"}


async def test_headers_resolve_and_bad_values_are_refused(store: LocalSecrets) -> None:
    headers, used = await resolve_values({"X-Key": {"secret": "API_TOKEN"}}, store)
    assert (headers, used) == ({"X-Key": "tok-123456"}, ["tok-123456"])
    with pytest.raises(InvalidArgumentError, match="'X-Num' must be a string"):
        await resolve_values({"X-Num": 5}, store)  # type: ignore[dict-item]
    with pytest.raises(InvalidArgumentError, match="invalid secret reference"):
        await resolve_values({"X": {"secret": "bad name"}}, store)


class Settings(BaseModel):
    host: str = "localhost"
    token: str | None = Field(None, json_schema_extra={"secret": True})
    password: str | None = Field(None, alias="pass", json_schema_extra={"secret": True})
    note: str | None = Field(None, json_schema_extra={"other": 1})


async def test_config_refs_only_in_secret_fields(store: LocalSecrets) -> None:
    assert secret_fields(Settings) == {"token", "password", "pass"}
    config = {"host": "h", "token": {"secret": "API_TOKEN"}, "pass": {"secret": "DB_PASSWORD"}}
    assert check_config_refs(Settings, config) == ["API_TOKEN", "DB_PASSWORD"]
    resolved, used = await resolve_config(Settings, config, store)
    assert resolved == {"host": "h", "token": "tok-123456", "pass": "pw-abcdef"}
    assert used == ["tok-123456", "pw-abcdef"]
    assert Settings.model_validate(resolved).password == "pw-abcdef"
    assert await resolve_config(Settings, {"host": "x"}, store) == ({"host": "x"}, [])
    for field in ("host", "note", "unknown"):
        with pytest.raises(InvalidArgumentError, match=f"the field '{field}' of Settings") as e:
            await resolve_config(Settings, {field: {"secret": "API_TOKEN"}}, store)
        assert e.value.details == {"field": field}


def test_ref_helpers() -> None:
    assert has_refs({"a": "b", "c": {"secret": "X"}}) and not has_refs({"a": "b"})
    assert has_refs([SecretRef(secret="X")]) and not has_refs(None) and not has_refs({})
    assert ref_names({"a": {"secret": "X"}, "b": SecretRef(secret="Y"), "c": {"secret": "X"}}) == [
        "X",
        "Y",
    ]
    assert is_ref({"secret": "X"}) and not is_ref({"secret": "X", "more": 1})
    assert not is_ref("X") and as_ref("X") is None and as_ref({"other": 1}) is None
    assert as_ref({"secret": "X"}) == SecretRef(secret="X")
