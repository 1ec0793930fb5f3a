"""Validation at the API boundary and the small pure helpers behind it."""

import pytest

from sandlot import InvalidArgumentError, Resources, SandboxSpec
from sandlot.agent.commands import _plain_words
from sandlot.models import check_seconds
from sandlot.sdk.commands import _check_command, _Tail
from sandlot.sdk.sandbox import build_spec

PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("true", ["true"]),
        ("ls -la /workspace", ["ls", "-la", "/workspace"]),
        ("  python3   -V ", ["python3", "-V"]),
    ],
)
def test_plain_command_lines_skip_the_shell(line, argv):
    assert _plain_words(line, PATH) == argv


@pytest.mark.parametrize(
    "line",
    [
        "echo hi",  # a builtin
        "cd /tmp",
        "A=1 env",  # an assignment
        "ls *.py",  # a glob
        "echo $HOME",
        "ls 'a b'",
        "true; false",
        "true && false",
        "cat < x",
        "ls ~",
        "definitely-not-a-program-xyz",  # let the shell say "not found"
    ],
)
def test_anything_shell_like_goes_through_the_shell(line):
    assert _plain_words(line, PATH) is None


@pytest.mark.parametrize("bad", ["", "   ", [], [""], ["ls", 1], 42, None, "a\0b"])
def test_bad_commands_are_refused(bad):
    with pytest.raises(InvalidArgumentError):
        _check_command(bad)


@pytest.mark.parametrize("bad", [-1, 0, "5", True])
def test_bad_timeouts_are_refused(bad):
    with pytest.raises(InvalidArgumentError):
        check_seconds(bad)


def test_none_timeout_means_lifetime():
    assert check_seconds(None) is None


def test_tail_keeps_the_last_bytes_without_growing():
    tail = _Tail(10)
    for i in range(1000):
        tail.add(str(i % 10).encode() * 7)
    assert tail.size == 10 and len(tail.value()) == 10
    assert tail.truncated
    assert tail.value() == b"8889999999"


def test_tail_under_the_limit_is_exact():
    tail = _Tail(100)
    tail.add(b"abc")
    tail.add(b"def")
    assert tail.value() == b"abcdef" and not tail.truncated


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": -1},
        {"env": {"1BAD": "x"}},
        {"env": {"A": "nul\0"}},
        {"resources": {"memory_mb": -1}},
        {"resources": {"nonsense": 1}},
        # Below the kernel's least CFS quota: the cgroup write failed with a bare OSError
        # (the server answered 500; schemathesis found it).
        {"resources": {"cpus": 6.26e-69}},
        {"resources": {"cpus": 0.009}},
        {"workdir": "relative"},
    ],
)
def test_bad_sandbox_settings_are_refused_with_a_clear_message(kwargs):
    args = {
        "provider": None,
        "timeout": 300,
        "env": None,
        "metadata": None,
        "resources": None,
        "workdir": "/workspace",
        "config": {},
    }
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError, match="invalid sandbox settings"):
        build_spec(**args)


def test_defaults_fail_closed():
    spec = SandboxSpec()
    assert spec.env == {}
    assert spec.timeout == 4 * 3600  # the hard lifetime: a long chat fits
    assert spec.idle_timeout == 600  # the idle timeout: an abandoned sandbox goes soon
    assert spec.resources == Resources(memory_mb=512, pids=256, cpus=1.0, tmp_mb=256)
