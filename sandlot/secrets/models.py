"""What a secret is, whichever store keeps it: the rules for its name and value, and
:class:`SecretInfo`, what a listing shows (never a value).

Shared by the stores (:mod:`sandlot.secrets.store`), the server's API and the remote-mode
client (:mod:`sandlot.remote`), so none of them imports another for these.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from ..errors import InvalidArgumentError, SecretNotFoundError
from .refs import SECRET_NAME

MAX_VALUE_BYTES = 64 * 1024


class SecretInfo(BaseModel):
    """A stored secret, without its value."""

    name: str
    created_at: datetime
    updated_at: datetime


def check_name(name: object) -> str:
    """A valid secret name, else InvalidArgumentError."""
    if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"invalid secret name {str(name)[:200]!r}: letters, digits, '_', '.', '-', "
            "starting with a letter or '_', at most 128 characters",
            name=str(name)[:200],
        )
    return name


def check_value(value: object) -> str:
    """A storable value, else InvalidArgumentError (which never quotes the value)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"a secret value is text, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            "a secret value must be valid Unicode text (it has a lone surrogate)"
        ) from None
    if size > MAX_VALUE_BYTES:
        raise InvalidArgumentError(
            f"a secret value is at most {MAX_VALUE_BYTES} bytes (UTF-8), not {size}"
        )
    if "\x00" in value:
        raise InvalidArgumentError("a secret value may not contain NUL characters")
    return value


def secret_not_found(name: str) -> SecretNotFoundError:
    return SecretNotFoundError(
        f"no secret {name!r} (store it with: sandlot secrets set {name})", name=name
    )
