"""The attacker's toolkit: a prelude of Python run inside a sandbox, and host-side probes.

``attack(sb, body)`` runs ``PRELUDE + body`` as a command in the sandbox. The prelude gives the
attacker raw system calls through ctypes (no tool needs to be installed in the image) and
``attempt(name, fn)``, which runs one try in a forked child so that a filter that kills the
caller (SIGSYS) ends that try only; ``report()`` prints what happened as one JSON line, which
the host reads back. Numbers are x86_64's.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Callable
from typing import Any

from conftest import python_in

PRELUDE = r'''
import ctypes, errno, json, os, signal, socket, struct, sys, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = dict(
    ptrace=101, personality=135, pivot_root=155, mount=165, umount2=166, init_module=175,
    delete_module=176, kexec_load=246, add_key=248, request_key=249, keyctl=250,
    unshare=272, perf_event_open=298, setns=308, process_vm_writev=311, finit_module=313,
    kexec_file_load=320, bpf=321, userfaultfd=323, open_tree=428, move_mount=429,
    fsopen=430, pidfd_open=434, clone3=435, pidfd_getfd=438, inotify_init1=294, clone=56,
    io_uring_setup=425, process_vm_readv=310,
)
RESULTS = {}


def arg(value):
    if isinstance(value, (bytes, str)):
        return ctypes.c_char_p(value.encode() if isinstance(value, str) else value)
    if value is None:
        return ctypes.c_void_p(0)
    if isinstance(value, int):
        return ctypes.c_long(value)
    return value


def sys_call(name, *args):
    """The raw system call: its result, or raise OSError with the errno."""
    ret = libc.syscall(ctypes.c_long(NR[name]), *[arg(a) for a in args])
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, errno.errorcode.get(e, str(e)))
    return ret


def attempt(name, fn):
    """Run fn() in a forked child: ('ok', value), ('error', 'EPERM ...') or ('killed', sig).
    The value must be JSON-able."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = ["ok", fn()]
        except OSError as exc:
            out = ["error", "%s %s" % (errno.errorcode.get(exc.errno, exc.errno), exc)]
        except BaseException as exc:
            out = ["error", "%s: %s" % (type(exc).__name__, exc)]
        try:
            data = json.dumps(out)
        except Exception:
            data = json.dumps(["ok", repr(out[1])])
        os.write(w, data.encode()[:60000])
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        RESULTS[name] = ["killed", os.WTERMSIG(status)]
    else:
        RESULTS[name] = json.loads(b"".join(chunks) or b'["error", "no answer"]')
    return RESULTS[name]


def cmdline(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def ancestors():
    found, pid = [], os.getpid()
    while pid > 1:
        try:
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
        found.append(pid)
    return found


def find_agents():
    """Every process that looks like the agent: its bootstrap names agent.__main__; not us,
    not what we forked, not the sandbox's init (bwrap or docker-init)."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (me, 1):
            continue
        line = cmdline(name)
        if "agent.__main__" in line and "ATTACKER" not in line:
            found.append(int(name))
    return found


def report(**extra):
    RESULTS.update(extra)
    sys.stdout.write("REPORT " + json.dumps(RESULTS) + "\n")
    sys.stdout.flush()

# ATTACKER (marks this script's own command line)
'''

SIGSYS = 31


def attack(sb: Any, body: str, timeout: float = 30, **kwargs: Any) -> dict[str, Any]:
    """Run the attacker's ``body`` (after the prelude) in ``sb``; the dict it reported.

    A script killed by SIGSYS as a whole (a filter that kills before ``attempt`` forks)
    reports ``{"killed": 31}``: blocked by the filter. Anything else without a report is a
    broken attack, and fails the test loudly rather than passing it."""
    r = python_in(sb, PRELUDE + textwrap.dedent(body), timeout=timeout, **kwargs)
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("REPORT "):
            result: dict[str, Any] = json.loads(line[len("REPORT ") :])
            if os.environ.get("SANDLOT_ATTACK_VERBOSE"):  # with -s: what each try met
                print(json.dumps(result, indent=1)[:4000])
            return result
    if r.signal == SIGSYS:
        return {"killed": SIGSYS}
    raise AssertionError(
        f"the attack script did not run to its report (exit {r.exit_code}, signal "
        f"{r.signal}):\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    )


def succeeded(results: dict[str, Any]) -> dict[str, Any]:
    """The attempts (``attempt`` results) that worked."""
    return {
        name: value
        for name, value in results.items()
        if isinstance(value, list) and value and value[0] == "ok"
    }


# -- host side ------------------------------------------------------------------------------


def host_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def host_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running, not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def processes_with(marker: str) -> list[int]:
    """Live host processes (not this one) whose command line holds ``marker``."""
    me = os.getpid()
    return [p for p in host_pids() if p != me and marker in host_cmdline(p) and alive(p)]


def pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def in_namespace(namespace: str) -> list[int]:
    """Live host processes in the PID namespace ``namespace``."""
    return [p for p in host_pids() if pid_namespace(p) == namespace and alive(p)]


def host_uids(pid: int) -> set[int]:
    """The real, effective, saved and filesystem uids of a host process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return {int(x) for x in line.split()[1:]}
    except OSError:
        pass
    return set()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def marker_process(sb: Any, marker: str, timeout: float = 10) -> int:
    """Start a shell loop with ``marker`` on its command line (its ``$0``) in ``sb``, in the
    background, and return its host pid once the host sees it."""
    sb.commands.run(["sh", "-c", "while :; do sleep 1; done", marker], background=True)
    found = wait_for(lambda: processes_with(marker), timeout)
    assert found, f"the host never saw the sandbox's process {marker}"
    return int(found[0])
