"""SANDLOT_PROVIDER and SANDLOT_PROVIDER_CONFIG: the default provider and its settings."""

from __future__ import annotations

import pytest

from sandlot.errors import InvalidArgumentError
from sandlot.manager.manager import default_provider
from sandlot.models import SandboxSpec


def test_without_settings_bwrap_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDLOT_PROVIDER", raising=False)
    monkeypatch.delenv("SANDLOT_PROVIDER_CONFIG", raising=False)
    assert default_provider(SandboxSpec()).provider == "bwrap"


def test_the_default_gets_the_operators_settings_under_the_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SANDLOT_PROVIDER", "docker")
    monkeypatch.setenv("SANDLOT_PROVIDER_CONFIG", '{"image": "a", "pull": "never"}')
    spec = default_provider(SandboxSpec())
    assert (spec.provider, spec.config) == ("docker", {"image": "a", "pull": "never"})
    # Named, the same provider gets them too; the caller's own settings win.
    spec = default_provider(SandboxSpec(provider="docker", config={"image": "b"}))
    assert spec.config == {"image": "b", "pull": "never"}
    # Another provider gets none of them.
    spec = default_provider(SandboxSpec(provider="bwrap"))
    assert (spec.provider, spec.config) == ("bwrap", {})


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"image"'])
def test_bad_settings_are_a_clear_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("SANDLOT_PROVIDER_CONFIG", raw)
    with pytest.raises(InvalidArgumentError, match="SANDLOT_PROVIDER_CONFIG"):
        default_provider(SandboxSpec())
