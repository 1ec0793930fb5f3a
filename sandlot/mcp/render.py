"""How results look to a model: MCP content blocks, cut to the limits, saying what was cut.

A command's result is one text block (exit code, then each stream's tail). A cell's output
is its streams as text, each rich result as text (markdown, plain text, HTML, LaTeX, JSON or
SVG source, the first format it has in that order) or, for PNG and JPEG, as image content;
a cell that raised is an error result with the exception's name, value and traceback.
"""

from __future__ import annotations

import json
from typing import Any

from mcp_types import CallToolResult, ContentBlock, ImageContent, TextContent

from ..errors import SandlotError
from ..models import CommandResult, Execution, Result
from . import limits

TEXT_FORMATS = ("text/markdown", "text/plain", "text/html", "text/latex", "application/json")


def text(value: str) -> TextContent:
    return TextContent(type="text", text=value)


def ok(*blocks: ContentBlock | str) -> CallToolResult:
    return CallToolResult(content=[text(b) if isinstance(b, str) else b for b in blocks])


def error(exc: BaseException) -> CallToolResult:
    """A tool error: ``code: message`` for sandlot's errors (the stable code first)."""
    if isinstance(exc, SandlotError):
        message = f"{exc.code}: {exc.message}"
    else:
        message = f"internal_error: {type(exc).__name__}"
    return CallToolResult(content=[text(message)], is_error=True)


def tail(value: str, limit: int = limits.OUTPUT_BYTES) -> tuple[str, int]:
    """The last ``limit`` bytes of ``value`` (UTF-8) and how many bytes were left out."""
    data = value.encode("utf-8", "replace")
    if len(data) <= limit:
        return value, 0
    return data[-limit:].decode("utf-8", "ignore"), len(data) - limit


def stream(name: str, value: str, dropped: int = 0) -> str:
    kept, cut = tail(value)
    cut += dropped
    head = f"--- {name} ---" if not cut else f"--- {name} (first {cut} bytes left out) ---"
    return f"{head}\n{kept}"


def command(result: CommandResult, seen: dict[str, int]) -> CallToolResult:
    """``seen``: the bytes each stream printed in all (the result keeps only the tail)."""
    ended = f"exit_code: {result.exit_code}"
    lines = [ended + (f" (signal {result.signal})" if result.signal else "")]
    for name in ("stdout", "stderr"):
        value: str = getattr(result, name)
        kept = len(getattr(result, name + "_bytes"))
        if value or seen.get(name):
            lines.append(stream(name, value, max(0, seen.get(name, 0) - kept)))
    return ok("\n".join(lines))


def execution(ex: Execution) -> CallToolResult:
    blocks: list[ContentBlock] = []
    out = "".join(ex.logs.stdout)
    err = "".join(ex.logs.stderr)
    if out:
        blocks.append(text(stream("stdout", out, ex.cut.get("stdout", 0))))
    if err:
        blocks.append(text(stream("stderr", err, ex.cut.get("stderr", 0))))
    images = 0
    for result in ex.results:
        image = _image(result)
        if image is not None and images < limits.MAX_IMAGES:
            images += 1
            blocks.append(image)
            continue
        shown = _text_of(result, image is not None)
        if shown:
            blocks.append(text(shown))
    if images < sum(_image(r) is not None for r in ex.results):
        blocks.append(text(f"(only the first {limits.MAX_IMAGES} images are returned)"))
    notes = []
    if ex.state_lost:
        notes.append("note: the code context restarted: its variables were lost")
    if ex.timed_out:
        notes.append("note: the cell timed out and was interrupted (its state is kept)")
    if ex.error is not None:
        trace, cut = tail(ex.error.traceback or "")
        lines = [f"{ex.error.name}: {ex.error.value}"]
        if trace:
            lines.append(trace if not cut else f"(traceback: first {cut} bytes left out)\n{trace}")
        blocks.append(text("\n".join([*notes, *lines])))
        return CallToolResult(content=blocks, is_error=True)
    if notes:
        blocks.append(text("\n".join(notes)))
    if not blocks:
        blocks.append(text("(no output)"))
    return CallToolResult(content=blocks)


def _image(result: Result) -> ImageContent | None:
    for mime in ("image/png", "image/jpeg"):
        data = result.data.get(mime)
        if isinstance(data, str) and data:
            return ImageContent(type="image", data=data, mime_type=mime)
    return None


def _text_of(result: Result, has_image: bool) -> str | None:
    for key in TEXT_FORMATS:
        value: Any = result.data.get(key)
        if value is None:
            continue
        if key == "text/plain" and has_image:
            return None  # "<Figure size 640x480 with 1 Axes>" says nothing the image does not
        shown = value if isinstance(value, str) else json.dumps(value)
        kept, cut = tail(shown)
        label = "" if key == "text/plain" else f"[{key}]\n"
        return label + kept + (f"\n(first {cut} bytes left out)" if cut else "")
    if "image/svg+xml" in result.data:
        kept, _ = tail(str(result.data["image/svg+xml"]))
        return "[image/svg+xml]\n" + kept
    return None
