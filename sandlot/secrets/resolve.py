"""Resolving ``{"secret": "NAME"}`` references into values, where (and only where) they are
used: command environments, bridge headers, provider config fields marked secret.

Each resolver also hands back the values it used, for a :class:`~sandlot.secrets.mask.Masker`
to keep them out of the output and the event log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from ..errors import InvalidArgumentError
from .refs import MaybeSecret, SecretRef, as_ref, is_ref
from .store import SecretStore


def has_refs(values: Mapping[str, Any] | Iterable[Any] | None) -> bool:
    """Whether a mapping's values (or an iterable's items) hold any secret reference."""
    if not values:
        return False
    items = values.values() if isinstance(values, Mapping) else values
    return any(is_ref(v) for v in items)


def ref_names(values: Mapping[str, Any] | Iterable[Any] | None) -> list[str]:
    """The secret names referenced, each once, in order of first use."""
    if not values:
        return []
    items = values.values() if isinstance(values, Mapping) else values
    names: dict[str, None] = {}
    for value in items:
        ref = as_ref(value)
        if ref is not None:
            names[ref.secret] = None
    return list(names)


async def _fetch(names: Iterable[str], store: SecretStore) -> dict[str, str]:
    """Each named value, read once (SecretNotFoundError names a missing one)."""
    found: dict[str, str] = {}
    for name in names:
        if name not in found:
            found[name] = await store.get(name)
    return found


async def resolve_values(
    mapping: Mapping[str, MaybeSecret | dict[str, Any]], store: SecretStore
) -> tuple[dict[str, str], list[str]]:
    """``mapping`` with every reference replaced by its value (plain strings as they are),
    and the secret values used (each once). For environments, headers, any str mapping."""
    resolved: dict[str, str] = {}
    refs: dict[str, SecretRef] = {}
    for key, value in mapping.items():
        ref = as_ref(value)
        if ref is not None:
            refs[key] = ref
        elif isinstance(value, str):
            resolved[key] = value
        else:
            raise InvalidArgumentError(
                f'{key!r} must be a string or a secret reference {{"secret": NAME}}, '
                f"not {type(value).__name__}",
                key=str(key),
            )
    if not refs:
        return resolved, []
    values = await _fetch((r.secret for r in refs.values()), store)
    for key, ref in refs.items():
        resolved[key] = values[ref.secret]
    ordered = {key: resolved[key] for key in mapping}  # the caller's order
    return ordered, list(dict.fromkeys(values.values()))


async def resolve_env(
    env: Mapping[str, MaybeSecret | dict[str, Any]], store: SecretStore
) -> tuple[dict[str, str], list[str]]:
    """A command's environment with its references resolved, and the secret values used."""
    return await resolve_values(env, store)


def secret_fields(schema: type[BaseModel]) -> set[str]:
    """The fields of a config model that may take a secret: ``Field(json_schema_extra=
    {"secret": True})``. Their names and aliases."""
    names: set[str] = set()
    for name, field in schema.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("secret") is True:
            names.add(name)
            if field.alias:
                names.add(field.alias)
    return names


def check_config_refs(schema: type[BaseModel], config: Mapping[str, Any]) -> list[str]:
    """The secret names a config refers to; InvalidArgumentError naming the field when a
    reference is in a field not marked secret."""
    allowed = secret_fields(schema)
    names: dict[str, None] = {}
    for key, value in config.items():
        ref = as_ref(value)
        if ref is None:
            continue
        if key not in allowed:
            raise InvalidArgumentError(
                f"the field {key!r} of {schema.__name__} does not take a secret reference: "
                + (
                    f"only {', '.join(sorted(allowed))} may"
                    if allowed
                    else "none of its fields does"
                ),
                field=str(key),
            )
        names[ref.secret] = None
    return list(names)


async def resolve_config(
    schema: type[BaseModel], config: Mapping[str, Any], store: SecretStore
) -> tuple[dict[str, Any], list[str]]:
    """``config`` (a provider's settings, validated later against ``schema``) with the
    references in its secret fields replaced by values, and the secret values used. A
    reference in any other field is an InvalidArgumentError naming the field."""
    names = check_config_refs(schema, config)
    if not names:
        return dict(config), []
    values = await _fetch(names, store)
    resolved: dict[str, Any] = {}
    for key, value in config.items():
        ref = as_ref(value)
        resolved[key] = values[ref.secret] if ref is not None else value
    return resolved, list(dict.fromkeys(values.values()))


__all__ = [
    "check_config_refs",
    "has_refs",
    "ref_names",
    "resolve_config",
    "resolve_env",
    "resolve_values",
    "secret_fields",
]
