"""The bounds of the MCP tools, in one place: what a model may ask for and what it gets back.

A model's context is small and its arguments are untrusted: every size and time a tool takes
is checked against these (an :class:`~sandlot.errors.InvalidArgumentError` otherwise), and
every output is cut to fit them, saying how much was left out. docs/mcp.md lists them.
"""

from __future__ import annotations

import math

from ..errors import InvalidArgumentError

KIB = 1024
MIB = 1024 * KIB

OUTPUT_BYTES = 64 * KIB  # per stream of a command or cell, as returned; the tail is kept
COMMAND_TIMEOUT = 60.0  # a foreground command's default, seconds
MAX_COMMAND_TIMEOUT = 3600.0
CODE_TIMEOUT = 300.0  # a cell's default
MAX_CODE_TIMEOUT = 3600.0
MAX_COMMAND_CHARS = 256 * KIB  # a command line or a cell's source
READ_WAIT = 1.0  # how long read_output waits for new output by default
MAX_READ_WAIT = 30.0
FILE_BYTES = 1 * MIB  # read_file and write_file, after base64 decoding
MAX_LIST_ENTRIES = 1000
MAX_LIST_DEPTH = 5
MAX_IMAGES = 8  # images returned by one cell
MAX_PATH_CHARS = 4096
MAX_METADATA_ITEMS = 16
MAX_METADATA_CHARS = 256  # each key and value
MAX_BACKGROUND = 64  # background commands a connection holds at once

# Sandboxes the tools create: a bounded life by default, within these bounds.
LIFETIME = 3600.0  # seconds (1 h)
IDLE_TIMEOUT = 600.0  # seconds without use (10 min)
MAX_LIFETIME = 86400.0  # 24 h
MAX_SANDBOXES = 32  # held by one connection (stdio) or one API key (HTTP)


def seconds(value: float | None, name: str, default: float, maximum: float) -> float:
    """``value`` seconds (``default`` when None), a finite number in (0, maximum]."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a number of seconds")
    if not 0 < value <= maximum:
        raise InvalidArgumentError(f"{name} must be more than 0 and at most {maximum:g} seconds")
    return float(value)


def absolute_path(path: str, name: str = "path") -> str:
    """An absolute path inside the sandbox (the SDK checks the rest; NUL and length here)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgumentError(f"{name} must be an absolute path (starting with /)")
    if "\0" in path:
        raise InvalidArgumentError(f"{name} contains a NUL byte")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidArgumentError(f"{name} is longer than {MAX_PATH_CHARS} characters")
    return path


def text_argument(value: str, name: str, limit: int = MAX_COMMAND_CHARS) -> str:
    if len(value) > limit:
        raise InvalidArgumentError(f"{name} is longer than {limit} characters ({len(value)})")
    return value


def metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > MAX_METADATA_ITEMS:
        raise InvalidArgumentError(f"metadata may have at most {MAX_METADATA_ITEMS} entries")
    for key, item in value.items():
        if len(key) > MAX_METADATA_CHARS or len(item) > MAX_METADATA_CHARS:
            raise InvalidArgumentError(
                f"metadata keys and values may be at most {MAX_METADATA_CHARS} characters"
            )
    return value
