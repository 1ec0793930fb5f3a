"""The workspace at a second path (``workspace_alias``), in real bwrap and Docker sandboxes:
the same files through both paths, commands started at the alias, and a session's checkpoint
that carries what was written through it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import docker_env
import pytest

import sandlot
from sandlot.manager.sessions import Sessions

pytestmark = pytest.mark.timeout(180)
HOME = "/home/user"


def _settings(provider: str) -> dict[str, Any]:
    if provider == "docker":
        reason = docker_env.prepare()
        if reason is not None:
            pytest.fail(f"Docker tests cannot run: {reason}", pytrace=False)
        return {"provider": "docker", "image": docker_env.IMAGE, "pull": "never"}
    return {"provider": provider}


@pytest.fixture(scope="module", params=["bwrap", "docker"])
def sb(request: pytest.FixtureRequest) -> Iterator[sandlot.Sandbox]:
    """A sandbox as the E2B gateway makes them: the workspace at /home/user too, HOME and
    the working folder there."""
    with sandlot.Sandbox.create(
        workspace_alias=HOME, workdir=HOME, env={"HOME": HOME}, **_settings(request.param)
    ) as box:
        yield box


def test_the_same_files_through_both_paths(sb: sandlot.Sandbox) -> None:
    sb.files.write(f"{HOME}/via-alias.txt", "one")
    assert sb.files.read("/workspace/via-alias.txt") == "one"
    sb.files.write("/workspace/via-workspace.txt", "two")
    assert sb.files.read(f"{HOME}/via-workspace.txt") == "two"
    r = sb.commands.run(f"echo three > {HOME}/sub.txt && cat /workspace/sub.txt")
    assert (r.exit_code, r.stdout) == (0, "three\n")
    names = {e.name for e in sb.files.list(HOME)}
    assert {"via-alias.txt", "via-workspace.txt", "sub.txt"} <= names
    r = sb.commands.run(f"stat -c %i /workspace/sub.txt {HOME}/sub.txt")
    first, second = r.stdout.split()
    assert first == second


def test_commands_start_at_the_alias(sb: sandlot.Sandbox) -> None:
    assert sb.commands.run("pwd").stdout == f"{HOME}\n"
    assert sb.commands.run("sh -c pwd").stdout == f"{HOME}\n"
    assert sb.commands.run("echo $HOME").stdout == f"{HOME}\n"
    sb.files.make_dir(f"{HOME}/proj")
    r = sb.commands.run("pwd && touch made-here", cwd=f"{HOME}/proj")
    assert r.stdout == f"{HOME}/proj\n"
    assert sb.files.exists("/workspace/proj/made-here")
    assert sb.commands.run("pwd", cwd="/workspace").stdout == "/workspace\n"
    r = sb.commands.run("printf ok > rel.txt && cat /workspace/rel.txt")
    assert r.stdout == "ok"


def test_the_root_stays_read_only_around_the_alias(sb: sandlot.Sandbox) -> None:
    r = sb.commands.run("touch /home/other; mkdir /home/user2; echo done")
    assert r.stdout == "done\n"
    assert "Read-only file system" in r.stderr
    assert sb.commands.run("ls /home").stdout == "user\n"


def test_a_working_folder_beneath_the_alias() -> None:
    with sandlot.Sandbox.create(
        provider="bwrap", workspace_alias="/mnt/w", workdir="/mnt/w/deep/er"
    ) as box:
        assert box.commands.run("pwd").stdout == "/mnt/w/deep/er\n"
        assert box.files.exists("/workspace/deep/er")


def test_the_process_provider_refuses_an_alias() -> None:
    with pytest.raises(sandlot.InvalidArgumentError, match="workspace_alias"):
        sandlot.Sandbox.create(provider="process", workspace_alias=HOME)


@pytest.fixture
async def sessions(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sessions]:
    monkeypatch.setenv("SANDLOT_REAP_INTERVAL", "3600")
    found = await Sessions.local()
    yield found
    await found.close()


async def test_a_checkpoint_carries_files_written_through_the_alias(sessions: Sessions) -> None:
    s = await sandlot.AsyncSession.create()
    async with s.sandbox(provider="bwrap", workspace_alias=HOME) as box:
        await box.files.write(f"{HOME}/kept.txt", "kept")
        r = await box.commands.run(f"mkdir -p {HOME}/d && echo inner > {HOME}/d/f")
        assert r.exit_code == 0
    async with s.sandbox(provider="bwrap") as box:  # no alias: the files are in /workspace
        assert await box.files.read("/workspace/kept.txt") == "kept"
        assert await box.files.read("/workspace/d/f") == "inner\n"
    async with s.sandbox(provider="bwrap", workspace_alias=HOME) as box:
        assert await box.files.read(f"{HOME}/d/f") == "inner\n"
    await s.delete()
