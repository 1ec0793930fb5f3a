"""The E2B interpreter's translation of a cell's log events into E2B's NDJSON lines, and of
an execute request into the agent's ``code.run`` (no server: the functions themselves)."""

from __future__ import annotations

import json
from typing import Any

from sandlot.server.e2b.interpreter import _Converter, execute_args, result_line
from sandlot.transcript.eventlog import Event


def event(kind: str, data: Any) -> Event:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return Event("ses", 1, "ex-1", kind, raw, 1_765_000_000.5)


def lines(events: list[Event]) -> list[dict[str, Any]]:
    convert = _Converter()
    out = b"".join(line for e in events for line in convert(e))
    assert out.endswith(b"\n")
    return [json.loads(line) for line in out.decode().split("\n") if line]


def test_a_cell_as_lines() -> None:
    got = lines(
        [
            event("started", {"event": "started"}),
            event("stdout", b"caf\xc3"),  # a character split across two chunks
            event("stdout", b"\xa9\n"),
            event("stderr", b"warn\n"),
            event("result", {"event": "result", "data": {"text/plain": "42"}, "main": True}),
            event("progress", {"event": "progress", "message": "x"}),
            event("exit", {"execution_count": 7, "error": {"name": "E", "value": "v",
                                                          "traceback": "tb"}}),
        ]
    )  # fmt: skip
    assert [x["type"] for x in got] == [
        "stdout", "stdout", "stderr", "result", "error", "number_of_executions",
        "end_of_execution",
    ]  # fmt: skip
    assert (got[0]["text"], got[1]["text"]) == ("caf", "é\n")  # never half a character
    assert got[0]["timestamp"].startswith("2025-12-06T")
    got = got[1:]
    assert got[2] == {"type": "result", "text": "42", "extra": {}, "is_main_result": True}
    assert got[3] == {"type": "error", "name": "E", "value": "v", "traceback": "tb"}
    assert got[4] == {"type": "number_of_executions", "execution_count": 7}


def test_a_run_that_ends_without_its_cell() -> None:
    got = lines([event("stdout", b"\xc3"), event("error", {"code": "cancelled",
                                                          "message": "gone"})])  # fmt: skip
    assert got[0]["text"] == "\ufffd"  # the half character, flushed
    assert got[1] == {"type": "error", "name": "UnexpectedEndOfExecution",
                      "value": "gone (cancelled)", "traceback": ""}  # fmt: skip
    assert got[2] == {"type": "unexpected_end_of_execution"}


def test_unicode_line_breaks_are_escaped() -> None:
    raw = b"".join(_Converter()(event("stdout", "a\u2028b\u2029c\x85d".encode())))
    assert raw.count(b"\n") == 1 and len(raw.decode().splitlines()) == 1
    assert json.loads(raw)["text"] == "a\u2028b\u2029c\x85d"


def test_result_fields_and_extra() -> None:
    bundle = {
        "text/plain": "'quoted'", "text/html": "<b>", "text/markdown": "*m*",
        "image/svg+xml": "<svg/>", "image/png": "iVBO", "image/jpeg": "/9j/",
        "application/pdf": "JVBE", "text/latex": "$x$", "application/json": {"a": 1},
        "application/javascript": "1", "e2b/data": {"c": [1]}, "text/x-other": "o",
    }  # fmt: skip
    line = result_line(bundle, main=False)
    assert line == {
        "type": "result", "text": "quoted", "html": "<b>", "markdown": "*m*", "svg": "<svg/>",
        "png": "iVBO", "jpeg": "/9j/", "pdf": "JVBE", "latex": "$x$", "json": {"a": 1},
        "javascript": "1", "data": {"c": [1]}, "extra": {"text/x-other": "o"},
        "is_main_result": False,
    }  # fmt: skip
    assert result_line({"text/plain": "'"}, main=True)["text"] == "'"


def test_execute_requests() -> None:
    ok = execute_args(b'{"code": "1", "context_id": "ctx-1", "env_vars": {"A": "b"}}')
    assert ok == {"context": "ctx-1", "code": "1", "started": True, "env": {"A": "b"}}
    assert execute_args(b'{"code": "1", "language": "Python"}') == {
        "context": "default", "code": "1", "started": True,
    }  # fmt: skip
    for body, why in [
        (b"{", "JSON object"),
        (b'{"code": "1", "language": "r"}', "Python only"),
        (b'{"code": "1", "context_id": "default\\n"}', "context_id"),
        (b'{"code": "1", "env_vars": {"1A": "x"}}', "env_vars"),
    ]:
        refused = execute_args(body)
        assert isinstance(refused, str) and why in refused
