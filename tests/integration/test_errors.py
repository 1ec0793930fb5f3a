"""Bad input gets a clear error at the API boundary, and leaves the sandbox working."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import sandlot

from .helpers import home


@pytest.fixture(scope="module")
def shared() -> Iterator[sandlot.Sandbox]:
    """One sandbox for every bad call in this module: it must survive all of them."""
    with sandlot.Sandbox.create() as box:
        box.files.write("/workspace/hundred.bin", b"x" * 100)
        yield box


def still_works(box: sandlot.Sandbox) -> None:
    assert box.commands.run("echo ok").stdout == "ok\n"
    assert box.files.read("/workspace/hundred.bin", format="bytes") == b"x" * 100


BadCall = Callable[[sandlot.Sandbox], Any]

BAD_CALLS: list[tuple[str, BadCall, type[Exception]]] = [
    ("empty command", lambda s: s.commands.run(""), sandlot.InvalidArgumentError),
    ("blank command", lambda s: s.commands.run("   \n"), sandlot.InvalidArgumentError),
    ("empty list", lambda s: s.commands.run([]), sandlot.InvalidArgumentError),
    ("list with int", lambda s: s.commands.run(["echo", 1]), sandlot.InvalidArgumentError),
    ("list with None", lambda s: s.commands.run(["echo", None]), sandlot.InvalidArgumentError),
    ("empty argv[0]", lambda s: s.commands.run(["", "x"]), sandlot.InvalidArgumentError),
    ("NUL in command", lambda s: s.commands.run("echo a\0b"), sandlot.InvalidArgumentError),
    ("command is int", lambda s: s.commands.run(42), sandlot.InvalidArgumentError),
    ("bytes command", lambda s: s.commands.run(b"echo"), sandlot.InvalidArgumentError),
    (
        "negative timeout",
        lambda s: s.commands.run("echo", timeout=-1),
        sandlot.InvalidArgumentError,
    ),
    ("zero timeout", lambda s: s.commands.run("echo", timeout=0), sandlot.InvalidArgumentError),
    ("str timeout", lambda s: s.commands.run("echo", timeout="5"), sandlot.InvalidArgumentError),
    (
        "background negative timeout",
        lambda s: s.commands.run("sleep 1", background=True, timeout=-3),
        sandlot.InvalidArgumentError,
    ),
    ("relative cwd", lambda s: s.commands.run("pwd", cwd="tmp"), sandlot.InvalidArgumentError),
    ("empty cwd", lambda s: s.commands.run("pwd", cwd=""), sandlot.InvalidArgumentError),
    (
        "bad env name",
        lambda s: s.commands.run("env", env={"1BAD": "x"}),
        sandlot.InvalidArgumentError,
    ),
    ("env value int", lambda s: s.commands.run("env", env={"A": 1}), sandlot.InvalidArgumentError),
    ("stdin int", lambda s: s.commands.run("cat", stdin=123), sandlot.InvalidArgumentError),
    (
        "negative max_output_bytes",
        lambda s: s.commands.run("echo", max_output_bytes=-1),
        sandlot.InvalidArgumentError,
    ),
    ("read relative", lambda s: s.files.read("a.txt"), sandlot.InvalidArgumentError),
    ("read empty path", lambda s: s.files.read(""), sandlot.InvalidArgumentError),
    ("write relative", lambda s: s.files.write("rel/x", "d"), sandlot.InvalidArgumentError),
    ("list relative", lambda s: s.files.list("workspace"), sandlot.InvalidArgumentError),
    ("stat relative", lambda s: s.files.stat("x"), sandlot.InvalidArgumentError),
    ("exists relative", lambda s: s.files.exists("x"), sandlot.InvalidArgumentError),
    ("make_dir relative", lambda s: s.files.make_dir("x"), sandlot.InvalidArgumentError),
    ("remove relative", lambda s: s.files.remove("x"), sandlot.InvalidArgumentError),
    (
        "rename relative src",
        lambda s: s.files.rename("a", "/workspace/b"),
        sandlot.InvalidArgumentError,
    ),
    (
        "rename relative dst",
        lambda s: s.files.rename("/workspace/hundred.bin", "b"),
        sandlot.InvalidArgumentError,
    ),
    ("path not a str", lambda s: s.files.read(None), sandlot.InvalidArgumentError),
    ("NUL in path", lambda s: s.files.read("/workspace/a\0b"), sandlot.InvalidArgumentError),
    (
        "bad read format",
        lambda s: s.files.read("/workspace/hundred.bin", format="json"),
        sandlot.InvalidArgumentError,
    ),
    ("list depth 0", lambda s: s.files.list("/workspace", depth=0), sandlot.InvalidArgumentError),
    ("write data int", lambda s: s.files.write("/workspace/i", 5), sandlot.InvalidArgumentError),
    (
        "write too large",
        lambda s: s.files.write("/workspace/big", b"x" * 11, max_bytes=10),
        sandlot.FileTooLargeError,
    ),
    (
        "read too large",
        lambda s: s.files.read("/workspace/hundred.bin", max_bytes=99),
        sandlot.FileTooLargeError,
    ),
    (
        "negative max_bytes",
        lambda s: s.files.read("/workspace/hundred.bin", max_bytes=-1),
        sandlot.InvalidArgumentError,
    ),
    ("remove workspace", lambda s: s.files.remove("/workspace"), sandlot.InvalidArgumentError),
    ("negative set_timeout", lambda s: s.set_timeout(-1), sandlot.InvalidArgumentError),
    ("zero set_timeout", lambda s: s.set_timeout(0), sandlot.InvalidArgumentError),
]


@pytest.mark.parametrize(
    ("call", "expected"), [(c, e) for _, c, e in BAD_CALLS], ids=[n for n, _, _ in BAD_CALLS]
)
def test_bad_call_on_a_sandbox(
    shared: sandlot.Sandbox, call: BadCall, expected: type[Exception]
) -> None:
    with pytest.raises(expected) as caught:
        call(shared)
    assert isinstance(caught.value, sandlot.SandlotError)
    assert caught.value.code
    assert str(caught.value), "the error has no message"
    still_works(shared)


def test_too_large_write_leaves_nothing_behind(shared: sandlot.Sandbox) -> None:
    with pytest.raises(sandlot.FileTooLargeError):
        shared.files.write("/workspace/never", b"x" * 11, max_bytes=10)
    assert shared.files.exists("/workspace/never") is False


def test_invalid_argument_is_a_value_error(shared: sandlot.Sandbox) -> None:
    with pytest.raises(ValueError):
        shared.commands.run("")
    still_works(shared)


def sandbox_folders() -> set[str]:
    folder = home() / "sandboxes"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


BAD_CREATES: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("unknown provider", {"provider": "no-such-provider"}, sandlot.ProviderNotFoundError),
    ("negative memory", {"resources": {"memory_mb": -1}}, sandlot.InvalidArgumentError),
    ("zero pids", {"resources": {"pids": 0}}, sandlot.InvalidArgumentError),
    ("zero cpus", {"resources": {"cpus": 0}}, sandlot.InvalidArgumentError),
    ("unknown resource", {"resources": {"gpus": 1}}, sandlot.InvalidArgumentError),
    ("memory as text", {"resources": {"memory_mb": "lots"}}, sandlot.InvalidArgumentError),
    ("negative lifetime", {"timeout": -5}, sandlot.InvalidArgumentError),
    ("bad env name", {"env": {"bad name": "x"}}, sandlot.InvalidArgumentError),
    ("relative workdir", {"workdir": "relative"}, sandlot.InvalidArgumentError),
    ("unknown config key", {"no_such_option": 1}, sandlot.InvalidArgumentError),
    ("relative python", {"python": "python3"}, sandlot.InvalidArgumentError),
]


@pytest.mark.parametrize(
    ("kwargs", "expected"), [(k, e) for _, k, e in BAD_CREATES], ids=[n for n, _, _ in BAD_CREATES]
)
def test_bad_create(
    shared: sandlot.Sandbox, kwargs: dict[str, Any], expected: type[Exception]
) -> None:
    before_listed = {i.id for i in sandlot.Sandbox.list()}
    before_folders = sandbox_folders()
    with pytest.raises(expected) as caught:
        sandlot.Sandbox.create(**kwargs)
    assert isinstance(caught.value, sandlot.SandlotError)
    assert str(caught.value)
    # A refused create leaves no record and no folder behind.
    assert {i.id for i in sandlot.Sandbox.list()} == before_listed
    assert sandbox_folders() <= before_folders
    still_works(shared)


def test_unknown_provider_is_a_lookup_error() -> None:
    with pytest.raises(LookupError) as caught:
        sandlot.Sandbox.create(provider="no-such-provider")
    assert "no-such-provider" in str(caught.value)
    assert caught.value.code == "provider_not_found"  # type: ignore[attr-defined]


def test_connect_to_an_unknown_id(shared: sandlot.Sandbox) -> None:
    with pytest.raises(sandlot.SandboxNotFoundError) as caught:
        sandlot.Sandbox.connect("sb-000000000000")
    assert isinstance(caught.value, LookupError)
    assert caught.value.code == "sandbox_not_found"
    with pytest.raises(sandlot.InvalidArgumentError):
        sandlot.Sandbox.connect("")
    still_works(shared)


def test_list_with_bad_metadata(shared: sandlot.Sandbox) -> None:
    with pytest.raises(sandlot.InvalidArgumentError):
        sandlot.Sandbox.list(metadata="role=a")  # type: ignore[arg-type]
    still_works(shared)
