"""Attacks on sandlot's walls, written as an attacker would write them.

Each test is one attempt, marked ``@pytest.mark.attack("what it tries", hole=N)`` (``hole``:
the number of the hole in issue 15 it reproduces; omit it for attacks that always held) and
run against each provider it applies to through the ``provider`` fixture. A test passes when
the attack was blocked or contained. Every attack is bounded in time (the suite's
``timeout`` marker or the command's own ``timeout``) and sends traffic only to loopback or to
namespaces the test made.

At the end of the run the summary prints the table of attempts made and blocked; with
``SANDLOT_SECURITY_TABLE=PATH`` it also writes it as Markdown (``docs/security.md`` publishes
it).
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from typing import Any

import docker_env
import pytest

import sandlot

PROVIDERS = ("bwrap", "docker")
HOST_SIDE = "host side (a hostile agent)"
_results: list[dict[str, Any]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "attack(name, hole=None): one attack on the walls")


@pytest.fixture(scope="session")
def docker_image() -> str:
    reason = docker_env.prepare()
    if reason is not None:
        pytest.fail(f"Docker attacks cannot run: {reason}", pytrace=False)
    return docker_env.IMAGE


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    """The provider under attack (every attack runs against bwrap and docker unless it
    asks for one with ``@pytest.mark.parametrize("provider", [...], indirect=True)``)."""
    return str(request.param)


def spec_for(provider: str, request: pytest.FixtureRequest, **spec: Any) -> dict[str, Any]:
    """The keyword arguments of ``Sandbox.create`` for ``provider`` (provider settings are
    flat keyword arguments: under docker, the test image, never pulled)."""
    if provider == "docker":
        image = request.getfixturevalue("docker_image")
        return {"provider": "docker", "image": image, "pull": "never", **spec}
    return {"provider": provider, **spec}


@pytest.fixture
def make_sandbox(provider: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``make_sandbox(**spec)``: a sandbox of the provider under attack, killed after the
    test (whatever the attack did to it)."""
    made: list[sandlot.Sandbox] = []

    def make(**spec: Any) -> sandlot.Sandbox:
        sb = sandlot.Sandbox.create(**spec_for(provider, request, **spec))
        made.append(sb)
        return sb

    yield make
    for sb in made:
        try:
            sb.kill()
        except Exception:
            pass


@pytest.fixture
def sandbox(make_sandbox: Any) -> Any:
    """One sandbox of the provider under attack."""
    return make_sandbox()


@pytest.fixture(scope="module")
def _shared_sandboxes() -> Iterator[dict[str, Any]]:
    made: dict[str, Any] = {}
    yield made
    for sb in made.values():
        try:
            sb.kill()
        except Exception:
            pass


@pytest.fixture
def shared_sandbox(
    provider: str, request: pytest.FixtureRequest, _shared_sandboxes: dict[str, Any]
) -> Any:
    """One sandbox per provider for the whole test module, for attacks that leave nothing
    behind that a later attack would see. Made again if an attack broke it."""
    sb = _shared_sandboxes.get(provider)
    if sb is not None:
        try:
            healthy = sb.commands.run("true", timeout=10).exit_code == 0
        except Exception:
            healthy = False
        if not healthy:
            try:
                sb.kill()
            except Exception:
                pass
            sb = None
    if sb is None:
        sb = sandlot.Sandbox.create(**spec_for(provider, request, timeout=900))
        _shared_sandboxes[provider] = sb
    return sb


def python_in(sb: Any, code: str, timeout: float = 30, **kwargs: Any) -> Any:
    """Run an attacker's Python script inside the sandbox (as a command, not a code
    context): the result of ``commands.run``."""
    return sb.commands.run(["python3", "-c", textwrap.dedent(code)], timeout=timeout, **kwargs)


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    marker = item.get_closest_marker("attack")
    if marker is None or call.when != "call":
        return
    params = getattr(item, "callspec", None)
    # Attacks on the host's side of the channel play a compromised agent: no provider.
    provider = params.params.get("provider", HOST_SIDE) if params else HOST_SIDE
    outcome = "blocked" if call.excinfo is None else "NOT BLOCKED"
    if call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception):
        outcome = "not run"
    _results.append(
        {
            "attack": marker.args[0],
            "hole": marker.kwargs.get("hole"),
            "provider": provider,
            "outcome": outcome,
            "test": item.nodeid.split("::", 1)[-1].split("[")[0],
        }
    )


def table() -> str:
    rows: dict[tuple[str, Any], dict[str, str]] = {}
    for r in _results:
        rows.setdefault((r["attack"], r["hole"]), {})[r["provider"]] = r["outcome"]
    providers = sorted({r["provider"] for r in _results})
    lines = [
        "| attack | hole | " + " | ".join(providers) + " |",
        "|---|---|" + "---|" * len(providers),
    ]
    for (attack, hole), by_provider in rows.items():
        cells = [by_provider.get(p, "n/a") for p in providers]
        lines.append(f"| {attack} | {hole or ''} | " + " | ".join(cells) + " |")
    made = len(_results)
    blocked = sum(r["outcome"] == "blocked" for r in _results)
    lines.append("")
    lines.append(f"Attempts made: {made}; blocked or contained: {blocked}.")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _results:
        return
    text = table()
    terminalreporter.write_sep("=", "attacks on the walls")
    terminalreporter.write_line(text)
    path = os.environ.get("SANDLOT_SECURITY_TABLE")
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
        with open(path + ".json", "w") as f:
            json.dump(_results, f, indent=1)
