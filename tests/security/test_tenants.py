"""Tenants: one sandbox against another, and against the host's per-user kernel counters.

Issue 15's holes 1 and 2: every bwrap sandbox of a root host process shared one user
namespace owned by host root, so a key added in one sandbox's user keyring was readable in
the next, and inotify instances made inside were charged to host root.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import time
from typing import Any

import pytest
from attacker import attack, host_uids, marker_process

pytestmark = pytest.mark.timeout(120)

ADD_KEY = """
desc, value = {desc!r}, {value!r}
def add():
    # one try per keyring: the user keyring (shared by every process of a uid in a user
    # namespace) and the user session keyring
    out = []
    for ring in (-4, -5):
        out.append(sys_call("add_key", b"user", desc.encode(), value.encode(), len(value), ring))
    return out
attempt("add_key", add)
report()
"""

READ_KEY = """
desc = {desc!r}
KEYCTL_SEARCH, KEYCTL_READ = 10, 11
def steal():
    found = []
    for ring in (-4, -5, -3):  # user, user session, session
        try:
            serial = sys_call("keyctl", KEYCTL_SEARCH, ring, b"user", desc.encode(), 0)
        except OSError:
            continue
        buf = ctypes.create_string_buffer(256)
        n = sys_call("keyctl", KEYCTL_READ, serial, buf, 256)
        found.append(buf.raw[:n].decode("utf-8", "replace"))
    if not found:
        raise OSError(errno.ENOKEY, "no such key in any keyring")
    return found
attempt("read", steal)
report()
"""


@pytest.mark.attack("read another sandbox's kernel key (keyctl @u), also after it died", hole=1)
def test_keyring_between_sandboxes(make_sandbox: Any) -> None:
    """Sandbox A adds a key to its user keyring (``keyctl add user k v @u``, through the
    add_key system call since keyutils is not installed); sandbox B, running at the same
    time, and sandbox C, made after A was killed, look it up and read it.
    Blocked: neither B nor C ever reads A's value (A's add may itself be refused)."""
    desc = "sandlot-k-" + secrets.token_hex(4)
    value = "tenant-a-secret-" + secrets.token_hex(8)
    a, b = make_sandbox(), make_sandbox()
    added = attack(a, ADD_KEY.format(desc=desc, value=value))
    stolen_live = attack(b, READ_KEY.format(desc=desc))
    a.kill()
    c = make_sandbox()
    stolen_dead = attack(c, READ_KEY.format(desc=desc))
    assert value not in str(stolen_live["read"]), (
        f"B read A's key while A ran (A's add: {added['add_key']})"
    )
    assert value not in str(stolen_dead["read"]), "C read A's key after A was killed"


def host_inotify() -> int | None:
    """Create one inotify instance as this (root) host process: None if it worked, else the
    errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return None


EXHAUST = """
import time
made = []
error = None
deadline = time.monotonic() + 10
while len(made) < 100000 and time.monotonic() < deadline:
    fd = libc.inotify_init1(0o2000000)
    if fd < 0:
        error = errno.errorcode.get(ctypes.get_errno())
        break
    made.append(fd)
print("EXHAUSTED %d %s" % (len(made), error), flush=True)
time.sleep(60)  # hold them while the host and the other sandbox try
"""


def exhaust_inotify(sb: Any) -> tuple[Any, str]:
    """Start the exhausting command in ``sb``; its handle and its first line, once made."""
    handle = sb.commands.run(
        [
            "python3",
            "-c",
            "import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n" + EXHAUST,
        ],
        background=True,
        timeout=90,
    )
    deadline = time.monotonic() + 30
    while "EXHAUSTED" not in handle.stdout and time.monotonic() < deadline and not handle.done():
        time.sleep(0.05)
    line = next((x for x in handle.stdout.splitlines() if x.startswith("EXHAUSTED")), "")
    assert line, f"the exhausting command never reported: {handle.stdout!r} {handle.stderr!r}"
    return handle, line


@pytest.mark.attack("exhaust the host's inotify instances (charged to host root)", hole=2)
def test_inotify_exhaustion_spares_host_root(make_sandbox: Any) -> None:
    """The attacker creates inotify instances until the kernel refuses, and holds them.
    Meanwhile host root (this test process) creates one. Blocked: the host still can."""
    assert host_inotify() is None, "the host cannot make an inotify instance even before"
    sb = make_sandbox()
    handle, line = exhaust_inotify(sb)
    try:
        error = host_inotify()
    finally:
        handle.kill()
    assert error is None, (
        f"after the sandbox's {line!r}, host root cannot create an inotify instance: "
        f"{os.strerror(error)}"
    )


@pytest.mark.attack("exhaust another sandbox's inotify instances (a shared host uid)", hole=2)
def test_inotify_exhaustion_spares_other_sandboxes(make_sandbox: Any) -> None:
    """The attacker in sandbox A exhausts inotify instances and holds them; sandbox B, of
    another tenant, then creates one. Blocked: B still can."""
    a, b = make_sandbox(), make_sandbox()
    handle, line = exhaust_inotify(a)
    try:
        r = attack(
            b,
            """
            def one():
                fd = libc.inotify_init1(0o2000000)
                if fd < 0:
                    raise OSError(ctypes.get_errno(), "inotify_init1")
                return fd
            attempt("inotify", one)
            report()
            """,
        )
    finally:
        handle.kill()
    assert r["inotify"][0] == "ok", f"after A's {line!r}, B cannot: {r['inotify']}"


@pytest.mark.attack("sandboxes run as host root, or as one host uid for all", hole=1)
def test_host_uid_per_sandbox(make_sandbox: Any) -> None:
    """Seen from the host, whom do a sandbox's processes run as? The attacker's view: an
    escape lands as that uid, and two tenants sharing it share every per-user kernel
    resource (keyrings, inotify, RLIMIT_NPROC, ...). Blocked: never uid 0, and two sandboxes
    run as two different host uids."""
    uids = []
    for sb in (make_sandbox(), make_sandbox()):
        marker = "sandlot-uid-" + secrets.token_hex(4)
        pid = marker_process(sb, marker)
        uids.append(host_uids(pid))
    assert all(u and 0 not in u for u in uids), f"a sandbox runs as host root: {uids}"
    assert uids[0].isdisjoint(uids[1]), f"two sandboxes share host uids: {uids}"
