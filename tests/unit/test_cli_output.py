"""The CLI prints what it is given: names, paths and messages that look like rich's emoji
codes (``:x:``) or markup reach the terminal as they are."""

from __future__ import annotations

import pytest

from sandlot.cli._common import console, error, note


def test_error_and_note_print_emoji_codes_and_markup_as_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    error("base nothing:x: unknown, [bold]not markup[/bold] :smile:")
    note("volume a:x:b")
    err = capsys.readouterr().err
    assert "base nothing:x: unknown, [bold]not markup[/bold] :smile:" in err
    assert "volume a:x:b" in err
    assert "\u274c" not in err


def test_tables_print_emoji_codes_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    console().print("tag:x:1", markup=False)
    assert "tag:x:1" in capsys.readouterr().out
