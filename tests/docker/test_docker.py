"""The docker provider on a real engine: its defaults, limits, errors, reconnects and gc.

Containers are looked at from outside with the ``docker`` CLI (what an operator would see),
never through the provider under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.helpers import sandbox_folder, wait_until

import sandlot
from sandlot.manager import Manager
from sandlot.models import SandboxSpec
from sandlot.providers import procinfo, userns
from sandlot.providers.docker import DockerProvider

from .conftest import IMAGE, NO_PYTHON_IMAGE


def home() -> Path:
    return Path(os.environ["SANDLOT_HOME"])


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def containers(label: str, *, running: bool = False) -> list[str]:
    """Ids of the engine's containers with this label (``key`` or ``key=value``)."""
    flags = [] if running else ["-a"]
    return docker("ps", "-q", *flags, "--no-trunc", "--filter", f"label={label}").split()


def removed(sandbox_id: str) -> bool:
    """Whether the sandbox's container is gone, waiting a while: a kill returns at once and
    the engine removes the container in the background."""
    return wait_until(lambda: not containers(f"sandlot.sandbox={sandbox_id}"), 30)


def inspect(container: str) -> dict:
    return json.loads(docker("inspect", container))[0]


def processes(sb: sandlot.Sandbox) -> str:
    """Command lines of the sandbox's processes, one a line, read from /proc (the minbase
    image has no ps)."""
    script = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done"
    return sb.commands.run(script).stdout


def run_python(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )


# -- creating, and the defaults --------------------------------------------------------------


def test_create_by_name_with_resources_and_safe_defaults() -> None:
    resources = {"memory_mb": 1024, "cpus": 1, "pids": 256}
    with sandlot.Sandbox.create(provider="docker", image=IMAGE, resources=resources) as sb:
        assert sb.info.provider == "docker"
        container = sb.info.handle["container"]
        seen = inspect(container)
        host, config = seen["HostConfig"], seen["Config"]
        assert host["NetworkMode"] == "none"
        assert host["Init"] is True
        assert host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["ReadonlyRootfs"] is True
        assert host["Memory"] == host["MemorySwap"] == 1024 << 20
        assert host["NanoCpus"] == 1_000_000_000
        assert host["PidsLimit"] == 256
        assert "size=256m" in host["Tmpfs"]["/tmp"]
        uid = sb.info.handle["host_uid"]  # a fresh host uid of its own (sandlot runs as root)
        assert config["User"] == f"{uid}:{uid}" and uid in userns.UID_RANGE
        env = dict(item.split("=", 1) for item in config["Env"])
        assert env["HOME"] == "/workspace" and env["LANG"] == "C.UTF-8"
        labels = config["Labels"]
        assert labels["sandlot.sandbox"] == sb.id
        assert labels["sandlot.home"] == DockerProvider(home()).home_hash
        assert labels["sandlot.owner"] == str(os.getpid())
        assert int(labels["sandlot.expires"]) > int(labels["sandlot.created"])
        # The agent is injected read-only, not part of the image.
        mounts = {m["Destination"]: m for m in seen["Mounts"]}
        assert mounts["/.sandlot"]["RW"] is False
        assert mounts["/workspace"]["RW"] is True
        assert sb.commands.run("echo hi").stdout == "hi\n"
    assert not sb.is_running()  # at once
    assert removed(sb.id)


def test_runs_as_an_unprivileged_user_without_capabilities(sb: sandlot.Sandbox) -> None:
    uid = sb.info.handle["host_uid"]
    assert sb.commands.run("id -u; id -g").stdout == f"{uid}\n{uid}\n"
    assert uid in userns.UID_RANGE
    status = sb.commands.run("cat /proc/self/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["CapBnd"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"


def test_root_is_read_only_workspace_and_tmp_are_writable(sb: sandlot.Sandbox) -> None:
    for path in ("/etc/x", "/usr/x", "/x"):
        r = sb.commands.run(f"touch {path}")
        assert r.exit_code != 0
        assert "Read-only file system" in r.stderr or "Permission denied" in r.stderr, r.stderr
    assert sb.commands.run("touch /.sandlot/x").exit_code != 0  # the agent's own files
    assert sb.commands.run("echo a > /workspace/a && echo b > /tmp/b").ok
    written = sandbox_folder(sb.id) / "workspace" / "a"
    assert written.read_text() == "a\n"
    uid = sb.info.handle["host_uid"]
    assert (written.stat().st_uid, written.stat().st_gid) == (uid, uid)


def test_environment_holds_only_what_was_asked_for() -> None:
    with sandlot.Sandbox.create(env={"ANSWER": "42"}) as sb:
        lines = sb.commands.run("env").stdout.splitlines()
    env = dict(line.split("=", 1) for line in lines)
    assert env["ANSWER"] == "42"
    assert env["HOME"] == "/workspace"
    assert env["LANG"] == "C.UTF-8"
    # HOSTNAME comes from Docker itself; PWD and SHLVL from the shell; the PIP_ pair from the
    # agent, so pip installs into the user site on a read-only, PEP 668 root (docs/code.md).
    assert env["PIP_BREAK_SYSTEM_PACKAGES"] == env["PIP_DISABLE_PIP_VERSION_CHECK"] == "1"
    expected = {"ANSWER", "HOME", "LANG", "PATH", "HOSTNAME", "PWD", "SHLVL", "_"}
    assert (
        set(env) - expected - {"PIP_BREAK_SYSTEM_PACKAGES", "PIP_DISABLE_PIP_VERSION_CHECK"}
        == set()
    )
    assert env["HOSTNAME"] == "sandlot"


def test_no_network(sb: sandlot.Sandbox) -> None:
    assert sb.commands.run("ls /sys/class/net").stdout.split() == ["lo"]
    probe = textwrap.dedent(
        """
        import socket
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=5)
        except OSError as exc:
            print("refused", exc.errno)
        else:
            print("connected")
        """
    )
    r = sb.commands.run(["python3", "-c", probe])
    assert r.stdout.startswith("refused"), r


def test_an_init_reaps_orphans(sb: sandlot.Sandbox) -> None:
    assert "docker-init" in sb.commands.run("tr '\\0' ' ' < /proc/1/cmdline").stdout
    # Orphans (the sleeps' shell exits at once) are re-parented to PID 1 and reaped by it.
    sb.commands.run("for i in 1 2 3; do (sleep 0.2 &) ; done")
    assert wait_until(lambda: "sleep 0.2" not in processes(sb), 10)
    states = sb.commands.run("cat /proc/[0-9]*/stat").stdout
    assert " Z " not in states


# -- limits ----------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_fork_bomb_is_stopped_by_the_pids_limit() -> None:
    with sandlot.Sandbox.create(resources={"pids": 64}) as sb:
        bomb = sb.commands.run("bomb() { bomb | bomb & }; bomb; wait", background=True)
        assert wait_until(lambda: "Resource temporarily unavailable" in bomb.stderr, 60)
        container = sb.info.handle["container"]
        counted = docker("stats", "--no-stream", "--format", "{{.PIDs}}", container)
        assert 0 < int(counted) <= 64
        bomb.kill()  # the whole process group
        assert wait_until(lambda: sb.commands.run("echo alive").stdout == "alive\n", 60)


def test_memory_limit_kills_an_allocation() -> None:
    with sandlot.Sandbox.create(resources={"memory_mb": 128}) as sb:
        r = sb.commands.run(["python3", "-c", "x = bytearray(512 << 20); print('allocated')"])
        assert r.exit_code == 137 and r.signal == signal.SIGKILL, r
        assert "allocated" not in r.stdout
        assert sb.commands.run("echo still here").stdout == "still here\n"


def test_tmp_is_size_capped() -> None:
    with sandlot.Sandbox.create(resources={"tmp_mb": 8}) as sb:
        r = sb.commands.run("head -c 16M /dev/zero > /tmp/big")
        assert r.exit_code != 0
        assert "No space left on device" in r.stderr


# -- processes (the shared tests that use ps, here through /proc) ----------------------------


def test_background_command_is_killed(sb: sandlot.Sandbox) -> None:
    handle = sb.commands.run("sleep 600", background=True)
    assert "sleep 600" in processes(sb)
    assert handle.kill() is True
    r = handle.wait()
    assert (r.signal, r.exit_code) == (signal.SIGKILL, 137)
    assert "sleep 600" not in processes(sb)


def test_background_signal_reaches_the_whole_group(sb: sandlot.Sandbox) -> None:
    handle = sb.commands.run(
        "trap 'echo got-term; exit 7' TERM; sleep 4301 & sleep 4302 & wait", background=True
    )
    assert wait_until(lambda: "sleep 4302" in processes(sb), 5)
    handle.kill(signal.SIGTERM)
    r = handle.wait()
    assert r.exit_code == 7 and "got-term" in r.stdout
    left = processes(sb)
    assert "sleep 4301" not in left and "sleep 4302" not in left


async def test_cancelling_a_foreground_command_kills_it() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        task = asyncio.ensure_future(sb.commands.run("sleep 4999"))
        script = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done"
        for _ in range(100):
            if "sleep 4999" in (await sb.commands.run(script)).stdout:
                break
            await asyncio.sleep(0.05)
        assert "sleep 4999" in (await sb.commands.run(script)).stdout
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if "sleep 4999" not in (await sb.commands.run(script)).stdout:
                break
            await asyncio.sleep(0.05)
        assert "sleep 4999" not in (await sb.commands.run(script)).stdout


# -- errors ----------------------------------------------------------------------------------


def test_an_image_without_python_says_so() -> None:
    with pytest.raises(sandlot.SandboxStartError) as caught:
        sandlot.Sandbox.create(provider="docker", image=NO_PYTHON_IMAGE)
    message = str(caught.value)
    assert NO_PYTHON_IMAGE in message and "python3" in message
    # Its container is removed (in the background, as every removal).
    ours = f"sandlot.home={DockerProvider(home()).home_hash}"
    assert wait_until(lambda: sorted(containers(ours)) == live_containers(), 30)


def live_containers() -> list[str]:
    """Containers of this state folder that belong to a running sandbox."""
    return sorted(
        info.handle["container"] for info in sandlot.Sandbox.list() if info.provider == "docker"
    )


def test_a_missing_image_is_not_pulled_when_pull_is_never() -> None:
    name = f"sandlot-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(sandlot.ImageNotFoundError) as caught:
        sandlot.Sandbox.create(provider="docker", image=name, pull="never")
    assert name in str(caught.value)
    assert caught.value.code == "image_not_found"


def test_a_failed_pull_is_image_not_found_and_says_why() -> None:
    """No registry is reachable here: the pull fails (or runs out of time) and says so."""
    name = f"sandlot-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(sandlot.ImageNotFoundError) as caught:
        sandlot.Sandbox.create(provider="docker", image=name, pull="missing", pull_timeout=30)
    assert f"cannot pull image {name!r}:" in str(caught.value)


def test_pull_always_pulls_even_a_local_image() -> None:
    """The image is on the engine, but "always" asks the registry first (unreachable here)."""
    with pytest.raises(sandlot.ImageNotFoundError, match=f"cannot pull image '{IMAGE}'"):
        sandlot.Sandbox.create(provider="docker", image=IMAGE, pull="always", pull_timeout=30)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"image": IMAGE, "pull": "sometimes"}, "pull"),
        ({"image": IMAGE, "user": "root"}, "user"),
        ({"image": IMAGE, "docker_host": "tcp://10.0.0.1:2375"}, "docker_host"),
        ({"image": IMAGE, "runtime": "run sc"}, "runtime"),
        ({"image": IMAGE, "imagee": "typo"}, "imagee"),
        ({}, "image"),
    ],
)
def test_bad_settings_name_the_field(
    settings: dict, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the suite's default settings (they would supply the image).
    monkeypatch.delenv("SANDLOT_PROVIDER_CONFIG")
    with pytest.raises(sandlot.InvalidArgumentError) as caught:
        sandlot.Sandbox.create(provider="docker", **settings)
    assert f"{field}:" in str(caught.value)


def test_an_unknown_runtime_is_refused_by_name() -> None:
    with pytest.raises(sandlot.InvalidArgumentError, match="runsc"):
        sandlot.Sandbox.create(provider="docker", image=IMAGE, runtime="runsc")


def test_an_engine_that_is_not_there() -> None:
    missing = f"/tmp/no-docker-{uuid.uuid4().hex[:8]}.sock"
    with pytest.raises(sandlot.ProviderUnavailableError, match=missing):
        sandlot.Sandbox.create(provider="docker", image=IMAGE, docker_host=f"unix://{missing}")


def test_unavailable_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DockerProvider(home()).unavailable_reason() is None
    assert DockerProvider(home()).info().available
    missing = f"/tmp/no-docker-{uuid.uuid4().hex[:8]}.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{missing}")
    reason = DockerProvider(home()).unavailable_reason()
    assert reason is not None and missing in reason


def test_runtimes_the_engine_reports_are_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    """This engine has runc only, so its answer about runtimes is faked here (a stand-in
    for an engine with gVisor installed); the real answer is checked first."""
    import sandlot.providers.docker as module
    from sandlot.providers.docker_engine import Probe

    real = DockerProvider(home()).info()
    assert real.available and "gvisor" not in real.capabilities
    probe = Probe(None, frozenset({"runc", "runsc"}), float("inf"))
    monkeypatch.setattr(module, "probe", lambda host, runtimes=False: probe)
    faked = DockerProvider(home()).info()
    assert {"gvisor", "runtime"} <= set(faked.capabilities)


# -- lifetime: reconnect, exit, close ---------------------------------------------------------


async def test_another_manager_reconnects_by_id() -> None:
    first = Manager(home())
    live = await first.create(SandboxSpec(provider="docker", config={"image": IMAGE}))
    try:
        await live.channel.call("ping")
        second = Manager(home())  # as a restarted control plane would: no state but the store
        again = await second.connect(live.info.id)
        assert again.provider is not live.provider
        assert again.provider.is_alive(live.info.handle)
        assert (await again.channel.call("info"))["pid"] == live.channel.hello["pid"]
        await second.kill(live.info.id)
        assert not again.provider.is_alive(live.info.handle)  # at once
        await second.close()  # which waits for the removal
        assert containers(f"sandlot.sandbox={live.info.id}") == []
        assert not live.provider.is_alive(live.info.handle)  # the first manager sees it too
    finally:
        await first.close()


async def test_the_agents_socket_is_out_of_the_sandboxs_sight() -> None:
    """Once the host has connected, the agent's socket leaves the folder the container sees:
    no command can dial the agent, and a link planted in its place (here to the Docker
    engine's socket) changes nothing the host connects to."""
    async with sandlot.AsyncSandbox.create() as sb:
        # (Where the kernel has Landlock, the folder is not even writable by commands.)
        plant = "ls -A /.sandlot-run; ln -s /var/run/docker.sock /.sandlot-run/agent.sock"
        result = await sb.commands.run(plant)
        assert "agent.sock" not in result.stdout, result
        handle = sb.info.handle
        assert not os.path.islink(handle["socket"])
        other = Manager(home())  # a restarted control plane, say
        try:
            again = await other.connect(sb.id)
            assert "walls" in await again.channel.call("info")  # an agent, not the engine
        finally:
            await other.close()


async def test_a_sandbox_whose_agent_dies_is_released() -> None:
    """The engine reports the container's end: the manager releases the sandbox at once,
    not at its deadline. (No command can kill the agent: the host does.)"""
    sb = await sandlot.AsyncSandbox.create()
    init = inspect(sb.info.handle["container"])["State"]["Pid"]
    for pid in procinfo.children(init):
        os.kill(pid, signal.SIGKILL)
    manager = Manager.current()
    for _ in range(600):
        if manager.store.get(sb.id) is None:
            break
        await asyncio.sleep(0.05)
    assert manager.store.get(sb.id) is None
    await manager.settle()
    assert containers(f"sandlot.sandbox={sb.id}") == []


def test_the_deadline_removes_the_container() -> None:
    sb = sandlot.Sandbox.create(timeout=1)
    container = sb.info.handle["container"]
    assert wait_until(lambda: not containers(f"sandlot.sandbox={sb.id}"), 60)
    assert not sb.is_running()
    assert container not in docker("ps", "-aq", "--no-trunc").split()


async def test_closing_a_manager_kills_what_it_owns_unless_detached() -> None:
    owned = Manager(home())
    live = await owned.create(SandboxSpec(provider="docker", config={"image": IMAGE}))
    await owned.close()
    assert containers(f"sandlot.sandbox={live.info.id}") == []
    assert not live.provider._clients  # type: ignore[attr-defined]  # no connection left open

    detached = Manager(home(), detached=True)
    kept = await detached.create(SandboxSpec(provider="docker", config={"image": IMAGE}))
    assert inspect(kept.info.handle["container"])["Config"]["Labels"]["sandlot.owner"] == "0"
    await detached.close()
    assert containers(f"sandlot.sandbox={kept.info.id}", running=True)
    adopter = Manager(home(), detached=True)
    try:
        adopted = await adopter.adopt(kept.info.id)
        assert (await adopted.channel.call("ping")) == {}
        await adopter.kill(kept.info.id)
        await adopter.settle()
        assert containers(f"sandlot.sandbox={kept.info.id}") == []
    finally:
        await adopter.close()


def test_a_program_that_never_closes_its_manager_leaks_nothing() -> None:
    """asyncio.run ends the loop without a kill or a manager close: the provider notices
    the loop shutting down and removes the container before the process exits."""
    script = textwrap.dedent(
        """
        import asyncio, sandlot

        async def main():
            sb = await sandlot.AsyncSandbox.create()
            assert (await sb.commands.run("echo ok")).stdout == "ok\\n"
            print(sb.id, flush=True)

        asyncio.run(main())
        """
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    sandbox_id = done.stdout.strip()
    assert sandbox_id.startswith("sb-")
    assert containers(f"sandlot.sandbox={sandbox_id}") == []
    assert "Unclosed" not in done.stderr and "Task was destroyed" not in done.stderr, done.stderr


# -- gc ----------------------------------------------------------------------------------------

OWNER_SCRIPT = """
import sys, time, sandlot
sb = sandlot.Sandbox.create()
sb.commands.run("echo left-behind > /workspace/left.txt")
print(sb.id, flush=True)
time.sleep(600)
"""


@pytest.fixture
def strangers() -> Iterator[dict[str, str]]:
    """Containers gc must never touch: an unlabelled one named like ours, and a labelled one
    of another state folder. Removed after the test."""
    names = {
        "decoy": "sandlot-sb-decoy",
        "other_home": f"sandlot-test-other-home-{uuid.uuid4().hex[:8]}",
    }
    for name in names.values():
        docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", names["decoy"], "--network", "none", IMAGE, "sleep", "300")
    docker(
        "run", "-d", "--name", names["other_home"], "--network", "none",
        "--label", "sandlot.sandbox=sb-000000000000",
        "--label", "sandlot.home=0123456789abcdef",
        "--label", "sandlot.created=0", "--label", "sandlot.expires=1",
        IMAGE, "sleep", "300",
    )  # fmt: skip
    try:
        yield names
    finally:
        for name in names.values():
            docker("rm", "-f", name, check=False)


def running(name: str) -> bool:
    return docker("inspect", "-f", "{{.State.Running}}", name, check=False) == "true"


@pytest.mark.timeout(180)
def test_gc_after_the_control_plane_is_killed(
    strangers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        sandbox_id = owner.stdout.readline().strip()
        assert sandbox_id.startswith("sb-"), sandbox_id
        assert containers(f"sandlot.sandbox={sandbox_id}", running=True)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
    # SIGKILL runs no clean-up: the container lives on, with the owner's record.
    assert containers(f"sandlot.sandbox={sandbox_id}", running=True)
    # And a container of this state folder with no record at all, old enough to be an orphan.
    our_home = DockerProvider(home()).home_hash
    orphan = docker(
        "run", "-d", "--network", "none",
        "--label", "sandlot.sandbox=sb-0rphan000000", "--label", f"sandlot.home={our_home}",
        IMAGE, "sleep", "300",
    )  # fmt: skip
    monkeypatch.setattr(DockerProvider, "ORPHAN_GRACE", 0.0)

    report = sandlot.Sandbox.gc()

    assert sandbox_id in report.removed
    assert "sb-0rphan000000" in report.orphans
    assert containers(f"sandlot.sandbox={sandbox_id}") == []
    assert orphan not in docker("ps", "-aq", "--no-trunc").split()
    assert not sandbox_folder(sandbox_id).exists()
    # Other programs' containers, and other state folders', are left alone.
    assert running(strangers["decoy"])
    assert running(strangers["other_home"])


def test_young_containers_are_not_orphans(strangers: dict[str, str]) -> None:
    """Within the grace period a container without a record may be a create in progress."""
    our_home = DockerProvider(home()).home_hash
    young = docker(
        "run", "-d", "--network", "none",
        "--label", "sandlot.sandbox=sb-y0ung0000000", "--label", f"sandlot.home={our_home}",
        "--label", f"sandlot.expires={2**40}",
        IMAGE, "sleep", "300",
    )  # fmt: skip
    try:
        report = sandlot.Sandbox.gc()
        assert "sb-y0ung0000000" not in report.orphans
        assert running(young)
    finally:
        docker("rm", "-f", young, check=False)


def test_a_sweep_leaves_no_connection_to_the_engine(tmp_path: Path) -> None:
    """A process whose state folder once used Docker asks the engine at every gc sweep (a
    minute apart) but runs no container: it keeps no connection open in between. Before,
    the engine client and its kept-alive connections lived as long as the event loop."""
    from fds import leaked, snapshot

    (tmp_path / "providers-used").mkdir()
    (tmp_path / "providers-used" / "docker").touch()

    async def sweep() -> list[str]:
        manager = Manager(tmp_path)
        try:
            before = snapshot()
            await manager.gc()
            await manager.gc()
            return await asyncio.to_thread(leaked, before, 2.0)
        finally:
            await manager.close()

    assert asyncio.run(sweep()) == []
