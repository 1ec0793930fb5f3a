"""A reference to a stored secret, ``{"secret": "NAME"}``, usable wherever a value may be
secret (environment variables, bridge headers, provider config fields marked secret)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, field_validator

SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


def check_secret_name(name: str) -> str:
    if not SECRET_NAME.fullmatch(name):
        raise ValueError(
            f"invalid secret name {name!r}: letters, digits, '_', '.', '-', "
            "starting with a letter or '_', at most 128 characters"
        )
    return name


class SecretRef(BaseModel):
    """``{"secret": "NAME"}``: the value of the stored secret NAME, resolved when used."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    secret: str

    @field_validator("secret")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_secret_name(value)


MaybeSecret = str | SecretRef


def as_ref(value: object) -> SecretRef | None:
    """``value`` as a reference: a SecretRef, or its JSON form ``{"secret": "NAME"}`` (a
    dict with that one key; a bad name raises InvalidArgumentError); None for anything else."""
    if isinstance(value, SecretRef):
        return value
    if isinstance(value, dict) and set(value) == {"secret"}:
        name = value["secret"]
        if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError(
                f"invalid secret reference {str(value)[:200]}: the name has letters, digits, "
                "'_', '.', '-', starts with a letter or '_', at most 128 characters"
            )
        return SecretRef(secret=name)
    return None


def is_ref(value: object) -> bool:
    """Whether ``value`` is a secret reference (SecretRef or ``{"secret": "NAME"}``)."""
    return isinstance(value, SecretRef) or (isinstance(value, dict) and set(value) == {"secret"})
