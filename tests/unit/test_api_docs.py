"""docs/api.md is generated from the server's OpenAPI document (scripts/api_docs.py): it must
be what the generator writes today."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "api_docs.py"
DOC = REPO / "docs" / "api.md"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("api_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_up_to_date() -> None:
    expected = _generator().render()
    current = DOC.read_text() if DOC.exists() else ""
    if current != expected:
        diff = difflib.unified_diff(
            current.splitlines(), expected.splitlines(), "docs/api.md", "generated", lineterm=""
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(
            "docs/api.md is out of date with the server's routes: run "
            f"python scripts/api_docs.py\n{shown}",
            pytrace=False,
        )


def test_generation_is_deterministic() -> None:
    generator = _generator()
    assert generator.render() == generator.render()
