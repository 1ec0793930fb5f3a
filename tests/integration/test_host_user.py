"""When sandlot runs as root, each sandbox runs as an unprivileged host uid of its own, in a
user namespace of its own: whatever escapes the namespaces lands without privileges, and
sandboxes share no per-user kernel counters or keyrings."""

import os
from pathlib import Path

import pytest

import sandlot
from sandlot.providers import procinfo, userns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root switches host users")

NOBODY = 65534


def _host_uids(sb) -> set[int]:
    """Host uids of everything inside the sandbox. bwrap's own monitor, outside its PID
    namespace and without capabilities, is not the sandbox's code and is left out."""
    pids = procinfo.descendants(sb.info.handle["pid"])
    assert pids
    uids = set()
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                uids.update(int(x) for x in line.split()[1:])
    return uids


def test_each_sandbox_has_a_host_uid_and_user_namespace_of_its_own():
    with sandlot.Sandbox.create() as sb, sandlot.Sandbox.create() as other:
        handle = sb.commands.run("sleep 30", background=True)
        uids = _host_uids(sb)
        assert len(uids) == 1 and uids <= set(userns.UID_RANGE)
        assert _host_uids(other).isdisjoint(uids)
        sb.commands.run("echo x > /workspace/made-inside")
        made = Path(sandlot_home()) / "sandboxes" / sb.id / "workspace" / "made-inside"
        assert made.stat().st_uid in uids
        namespaces = {_user_namespace(s) for s in (sb, other)}
        assert len(namespaces) == 2 and os.readlink("/proc/self/ns/user") not in namespaces
        handle.kill()


def test_a_named_host_user_is_used_as_is():
    with sandlot.Sandbox.create(host_user="nobody") as sb:
        assert _host_uids(sb) == {NOBODY}


def _user_namespace(sb) -> str:
    agent = procinfo.descendants(sb.info.handle["pid"])[-1]
    return os.readlink(f"/proc/{agent}/ns/user")


def test_the_sandbox_cannot_reach_another_sandboxs_agent_socket():
    with sandlot.Sandbox.create() as a:
        socket_path = a.info.handle["socket"]
        # Expose a's folder to b on purpose: the socket's permissions must still hold.
        with sandlot.Sandbox.create(ro_binds=[str(Path(socket_path).parent)]) as b:
            probe = (
                "import socket,sys\n"
                "s=socket.socket(socket.AF_UNIX)\n"
                "try:\n    s.connect(sys.argv[1]); print('connected')\n"
                "except OSError as e:\n    print(type(e).__name__)\n"
            )
            result = b.commands.run(["python3", "-c", probe, socket_path])
            assert result.stdout.strip() == "PermissionError"


def test_host_user_can_be_chosen_and_is_validated():
    with sandlot.Sandbox.create(host_user="root") as sb:
        assert _host_uids(sb) == {0}
    with pytest.raises(sandlot.InvalidArgumentError):
        sandlot.Sandbox.create(host_user="no-such-user-xyz")


def sandlot_home() -> str:
    from sandlot.store import default_home

    return str(default_home())
