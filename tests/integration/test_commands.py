"""Commands: exit codes, signals, stdin, streaming, binary output, shells, handles."""

from __future__ import annotations

import hashlib
import signal
import time

import pytest

import sandlot

from .helpers import wait_until


@pytest.mark.parametrize("code", [0, 1, 3, 42, 127, 255])
def test_exit_codes(sb: sandlot.Sandbox, code: int) -> None:
    r = sb.commands.run(f"exit {code}")
    assert (r.exit_code, r.signal, r.ok) == (code, None, code == 0)


def test_quickstart_result(sb: sandlot.Sandbox) -> None:
    r = sb.commands.run("echo hi; echo oops >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "oops\n", 3)
    assert (r.stdout_bytes, r.stderr_bytes) == (b"hi\n", b"oops\n")
    assert r.truncated is False
    assert isinstance(r.pid, int)


def test_plain_command_lines_and_false(sb: sandlot.Sandbox) -> None:
    assert sb.commands.run("false").exit_code == 1
    assert sb.commands.run("true").exit_code == 0
    r = sb.commands.run("ls /nonexistent-folder")
    assert r.exit_code == 2
    assert "nonexistent-folder" in r.stderr
    assert sb.commands.run("ls -d /workspace").stdout == "/workspace\n"


@pytest.mark.parametrize(
    ("cmd", "signum"),
    [("kill -9 $$", signal.SIGKILL), ("kill -TERM $$", signal.SIGTERM), ("kill -SEGV $$", 11)],
)
def test_death_by_signal(sb: sandlot.Sandbox, cmd: str, signum: int) -> None:
    r = sb.commands.run(cmd)
    assert r.signal == signum
    assert r.exit_code == 128 + signum
    assert not r.ok


def test_stdin_str(sb: sandlot.Sandbox) -> None:
    r = sb.commands.run(["python3", "-c", "import sys; print(sys.stdin.read()[::-1])"], stdin="abc")
    assert r.stdout == "cba\n"
    r = sb.commands.run("cat", stdin="héllo wörld ✓\n")
    assert r.stdout == "héllo wörld ✓\n"


def test_stdin_bytes(sb: sandlot.Sandbox) -> None:
    data = bytes(range(256)) * 4
    r = sb.commands.run("cat", stdin=data)
    assert r.stdout_bytes == data


def test_large_stdin(sb: sandlot.Sandbox) -> None:
    data = b"0123456789abcdef" * (8 << 16)  # 8 MB, above any pipe or window size
    r = sb.commands.run("sha256sum", stdin=data)
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()


def test_no_stdin_means_empty_stdin(sb: sandlot.Sandbox) -> None:
    started = time.monotonic()
    r = sb.commands.run("cat; echo end", timeout=10)
    assert r.stdout == "end\n"
    assert time.monotonic() - started < 5


def test_streaming_order_of_stdout_and_stderr(sb: sandlot.Sandbox) -> None:
    events: list[tuple[str, str]] = []
    cmd = "echo o1; sleep 0.2; echo e1 >&2; sleep 0.2; echo o2; sleep 0.2; echo e2 >&2"
    r = sb.commands.run(
        cmd,
        on_stdout=lambda text: events.append(("out", text)),
        on_stderr=lambda text: events.append(("err", text)),
    )
    assert events == [("out", "o1\n"), ("err", "e1\n"), ("out", "o2\n"), ("err", "e2\n")]
    assert (r.stdout, r.stderr) == ("o1\no2\n", "e1\ne2\n")


def test_output_callbacks_arrive_while_the_command_runs(sb: sandlot.Sandbox) -> None:
    stamps: list[tuple[float, str]] = []
    started = time.monotonic()
    r = sb.commands.run(
        "for i in 1 2 3; do echo $i; sleep 0.4; done",
        on_stdout=lambda text: stamps.append((time.monotonic(), text)),
    )
    ended = time.monotonic()
    assert "".join(text for _, text in stamps) == "1\n2\n3\n" == r.stdout
    assert len(stamps) == 3
    first, second, third = (t for t, _ in stamps)
    assert first - started < 0.4  # the first line came at once, not at the end
    assert ended - first >= 0.9
    assert 0.25 < second - first < 0.8
    assert 0.25 < third - second < 0.8


def test_binary_and_non_utf8_output(sb: sandlot.Sandbox) -> None:
    every_byte = bytes(range(256))
    code = (
        "import sys; sys.stdout.buffer.write(bytes(range(256)));"
        " sys.stderr.buffer.write(b'caf\\xe9')"
    )
    r = sb.commands.run(["python3", "-c", code])
    assert r.stdout_bytes == every_byte
    assert r.stderr_bytes == b"caf\xe9"
    assert r.stderr == "caf\ufffd"  # decoded with replacement
    assert "\ufffd" in r.stdout
    assert r.stdout.startswith("".join(chr(i) for i in range(128)))


def test_multibyte_character_split_across_chunks(sb: sandlot.Sandbox) -> None:
    chunks: list[str] = []
    r = sb.commands.run("printf '\\xc3'; sleep 0.3; printf '\\xa9\\n'", on_stdout=chunks.append)
    assert r.stdout == "é\n"
    assert "".join(chunks) == "é\n"
    assert "\ufffd" not in "".join(chunks)


def test_string_command_uses_bash(sb: sandlot.Sandbox) -> None:
    r = sb.commands.run('echo "$BASH_VERSION"; [[ 1 == 1 ]] && echo double-brackets; echo {a,b}')
    lines = r.stdout.splitlines()
    assert lines[0], "BASH_VERSION is empty: not bash"
    assert lines[1:] == ["double-brackets", "a b"]
    r = sb.commands.run("echo $HOME | tr a-z A-Z && ls /workspace >/dev/null && echo ok")
    assert r.stdout == "/WORKSPACE\nok\n"


def test_list_command_runs_as_argv(sb: sandlot.Sandbox) -> None:
    r = sb.commands.run(["echo", "$HOME", "*", "a  b", ";", "|", "`id`"])
    assert r.stdout == "$HOME * a  b ; | `id`\n"
    r = sb.commands.run(["printf", "%s|", "one arg with spaces", "$(id)"])
    assert r.stdout == "one arg with spaces|$(id)|"
    r = sb.commands.run(["sh", "-c", 'echo "$0-$1"', "zero", "one"])
    assert r.stdout == "zero-one\n"


@pytest.mark.parametrize(
    "cmd", ["definitely-not-a-command-xyz", "definitely-not-a-command-xyz --x"]
)
def test_command_not_found_string(sb: sandlot.Sandbox, cmd: str) -> None:
    r = sb.commands.run(cmd)
    assert r.exit_code == 127
    assert "not found" in r.stderr
    assert "definitely-not-a-command-xyz" in r.stderr


def test_command_not_found_argv(sb: sandlot.Sandbox) -> None:
    r = sb.commands.run(["definitely-not-a-command-xyz", "arg"])
    assert r.exit_code == 127
    assert "definitely-not-a-command-xyz" in r.stderr
    r = sb.commands.run(["/workspace/missing-binary"])
    assert r.exit_code == 127
    assert "missing-binary" in r.stderr


def test_cwd(sb: sandlot.Sandbox) -> None:
    assert sb.commands.run("pwd").stdout == "/workspace\n"
    assert sb.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    sb.files.make_dir("/workspace/sub/dir")
    assert sb.commands.run(["pwd"], cwd="/workspace/sub/dir").stdout == "/workspace/sub/dir\n"
    assert sb.commands.run("pwd").stdout == "/workspace\n"  # not sticky


def test_missing_cwd_is_a_clear_error(sb: sandlot.Sandbox) -> None:
    with pytest.raises(sandlot.FileNotFoundInSandboxError):
        sb.commands.run("pwd", cwd="/workspace/does-not-exist")
    assert sb.commands.run("echo ok").stdout == "ok\n"


def test_env(sb: sandlot.Sandbox) -> None:
    r = sb.commands.run('echo "$FOO|$BAR|$PATH"', env={"FOO": "a b", "BAR": "x=y"})
    foo, bar, path = r.stdout.rstrip("\n").split("|")
    assert (foo, bar) == ("a b", "x=y")
    assert "/usr/bin" in path  # passing env keeps the sandbox's own PATH
    assert sb.commands.run('echo "[$FOO]"').stdout == "[]\n"  # not sticky


def test_sandbox_env_and_workdir() -> None:
    with sandlot.Sandbox.create(env={"LEVEL": "sandbox", "KEEP": "k"}, workdir="/tmp") as box:
        assert box.commands.run("pwd").stdout == "/tmp\n"
        assert box.commands.run('echo "$LEVEL $KEEP"').stdout == "sandbox k\n"
        r = box.commands.run('echo "$LEVEL $KEEP"', env={"LEVEL": "command"})
        assert r.stdout == "command k\n"


def test_background_handle_returns_at_once_and_kill(sb: sandlot.Sandbox) -> None:
    started = time.monotonic()
    handle = sb.commands.run("sleep 600", background=True)
    assert time.monotonic() - started < 2
    assert isinstance(handle.pid, int) and handle.pid > 0
    assert not handle.done()
    assert str(handle.pid) in sb.commands.run("ps -eo pid").stdout.split()
    assert handle.kill() is True
    r = handle.wait()
    assert (r.signal, r.exit_code) == (signal.SIGKILL, 137)
    assert handle.done()
    assert handle.kill() is False  # already ended
    assert str(handle.pid) not in sb.commands.run("ps -eo pid").stdout.split()


def test_background_kill_with_another_signal(sb: sandlot.Sandbox) -> None:
    handle = sb.commands.run("sleep 600", background=True)
    handle.kill(signal.SIGTERM)
    r = handle.wait()
    assert (r.signal, r.exit_code) == (signal.SIGTERM, 143)


def test_background_signal_reaches_the_whole_group(sb: sandlot.Sandbox) -> None:
    handle = sb.commands.run(
        "trap 'echo got-term; exit 7' TERM; sleep 4301 & sleep 4302 & wait", background=True
    )
    assert wait_until(lambda: "4302" in sb.commands.run("ps -eo args").stdout, 5)
    handle.kill(signal.SIGTERM)
    r = handle.wait()
    assert r.exit_code == 7
    assert "got-term" in r.stdout
    ps = sb.commands.run("ps -eo args").stdout
    assert "sleep 4301" not in ps
    assert "sleep 4302" not in ps


def test_background_stdin(sb: sandlot.Sandbox) -> None:
    handle = sb.commands.run("cat", background=True)
    handle.send_stdin("hello ")
    handle.send_stdin(b"world\n")
    # cat echoes while stdin is still open: the output streams back before the end.
    assert wait_until(lambda: handle.stdout == "hello world\n", 5), handle.stdout
    assert not handle.done()
    handle.send_stdin(b"\xff\x00more\n")
    handle.close_stdin()
    r = handle.wait()
    assert r.exit_code == 0
    assert r.stdout_bytes == b"hello world\n\xff\x00more\n"


def test_background_output_so_far_and_timeout(sb: sandlot.Sandbox) -> None:
    handle = sb.commands.run("echo early; sleep 600", background=True, timeout=1)
    assert wait_until(lambda: handle.stdout == "early\n", 5)
    with pytest.raises(sandlot.CommandTimeoutError) as caught:
        handle.wait()
    assert caught.value.stdout == "early\n"


def test_many_background_handles_and_foreground_commands_interleave(sb: sandlot.Sandbox) -> None:
    handles = [sb.commands.run(f"sleep 0.5; echo bg{i}", background=True) for i in range(5)]
    assert sb.commands.run("echo fg").stdout == "fg\n"  # not stuck behind the sleepers
    assert [h.wait().stdout for h in handles] == [f"bg{i}\n" for i in range(5)]


def test_backgrounded_grandchild_does_not_hold_the_command_open(sb: sandlot.Sandbox) -> None:
    started = time.monotonic()
    r = sb.commands.run("sleep 4401 & echo done", timeout=30)
    assert r.stdout == "done\n"
    assert time.monotonic() - started < 5


def test_large_stdout_and_stderr_at_the_same_time(sb: sandlot.Sandbox) -> None:
    """Both pipes full at once must not deadlock (credit shared by two streams)."""
    r = sb.commands.run(
        "head -c 40M /dev/zero >&2 & head -c 40M /dev/zero | tr '\\0' 'o'; wait",
        max_output_bytes=1 << 20,
        timeout=60,
    )
    assert r.exit_code == 0
    assert r.truncated is True
    assert r.stdout_bytes == b"o" * (1 << 20)
    assert r.stderr_bytes == b"\0" * (1 << 20)


def test_stdin_to_a_command_that_does_not_read_it(sb: sandlot.Sandbox) -> None:
    started = time.monotonic()
    r = sb.commands.run("echo ignored-stdin", stdin=b"x" * (32 << 20), timeout=30)
    assert r.stdout == "ignored-stdin\n"
    assert time.monotonic() - started < 10
    assert sb.commands.run("echo ok").stdout == "ok\n"


def test_send_stdin_after_the_command_ended(sb: sandlot.Sandbox) -> None:
    handle = sb.commands.run("true", background=True)
    assert handle.wait().exit_code == 0
    with pytest.raises(sandlot.SandboxClosedError):
        handle.send_stdin("too late")
    assert sb.commands.run("echo ok").stdout == "ok\n"


class Interrupted(Exception):
    pass


def test_interrupting_a_foreground_call_kills_the_command(sb: sandlot.Sandbox) -> None:
    """Like Ctrl-C: an exception raised in the waiting thread ends the command inside."""

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(Interrupted):
            sb.commands.run("sleep 4998", timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert wait_until(lambda: "sleep 4998" not in sb.commands.run("ps -eo args").stdout, 5)
    assert sb.commands.run("echo ok").stdout == "ok\n"
