"""Escapes: a command that tries to reach the host, or the kernel beyond its sandbox.

Each test runs an attacker's script inside a real sandbox (bwrap and docker) and asserts that
every try was refused. Where a try that must be refused worked, the assertion names it. Hole
numbers are issue 15's.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from attacker import attack, succeeded

pytestmark = pytest.mark.timeout(120)

# -- the host's files, processes and environment ----------------------------------------------


@pytest.fixture
def host_secret() -> Iterator[tuple[Path, str]]:
    """A file under /root and one in the host's /tmp, holding a secret; and the secret."""
    secret = "HOST-SECRET-" + secrets.token_hex(8)
    made = []
    for folder in ("/root", "/tmp"):
        fd, name = tempfile.mkstemp(prefix="sandlot-attack-", dir=folder)
        os.write(fd, secret.encode() + b"\n")
        os.close(fd)
        os.chmod(name, 0o644)  # readable by anyone who can reach it
        made.append(Path(name))
    try:
        yield made[0], secret
    finally:
        for path in made:
            path.unlink(missing_ok=True)


@pytest.mark.attack("read host files (/root, host /tmp, via /proc/*/root and cwd)")
def test_host_files(shared_sandbox: Any, host_secret: tuple[Path, str]) -> None:
    """The attacker reads a secret the host keeps in /root and in its own /tmp, directly and
    through every /proc/<pid>/root and /proc/<pid>/cwd it can see, and greps what it can
    list of the filesystem for it. Blocked: the secret never shows up."""
    path, secret = host_secret
    name = path.name
    r = attack(
        shared_sandbox,
        f"""
        found = []
        paths = ["/root/{name}", "/tmp/{name}", "/etc/shadow", "/root/.ssh/id_rsa"]
        for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["self"]:
            for link in ("root", "cwd"):
                paths += ["/proc/%s/%s/root/{name}" % (pid, link),
                          "/proc/%s/%s/tmp/{name}" % (pid, link),
                          "/proc/%s/%s/../../root/{name}" % (pid, link)]
        for p in paths:
            try:
                with open(p) as f:
                    found.append([p, f.read(200)])
            except OSError:
                pass
        hits = []
        for top in ("/", "/tmp", "/workspace", "/root", "/home", "/var", "/srv", "/mnt"):
            try:
                if "{name}" in os.listdir(top):
                    hits.append(top)
            except OSError:
                pass
        report(found=found, listed=hits)
        """,
    )
    leaked = [p for p, text in r["found"] if secret in text]
    assert not leaked, f"host secret read through {leaked}"
    assert not r["listed"], f"host file listed in {r['listed']}"
    assert not [p for p, _ in r["found"] if "shadow" in p or "ssh" in p], r["found"]


@pytest.mark.attack("host processes and kernel knobs through /proc and /sys")
def test_proc_and_sys(shared_sandbox: Any) -> None:
    """The attacker looks for host processes in /proc (the test runner's command line) and
    writes the kernel knobs that classic container escapes use: core_pattern (a pipe run as
    host root), sysrq-trigger, uevent_helper, modprobe, drop_caches; and reads /proc/kcore.
    Blocked: no host process visible, every write and the kcore read refused."""
    host_marker = f"sandlot-host-marker-{os.getpid()}"
    r = attack(
        shared_sandbox,
        f"""
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        seen = [cmdline(p) for p in pids]
        host = [c[:200] for c in seen
                if ("pytest" in c or "{host_marker}" in c) and "ATTACKER" not in c]
        def write(path, value=None):
            # value None: write back what is there (a failed wall must not change the
            # host's kernel settings; the write itself is the proof)
            def go():
                if value is None:
                    with open(path) as f:
                        current = f.read()
                with open(path, "w") as f:
                    f.write(current if value is None else value)
                return "written"
            return go
        def read(path):
            def go():
                with open(path, "rb") as f:
                    return len(f.read(4096))
            return go
        attempt("core_pattern", write("/proc/sys/kernel/core_pattern"))
        attempt("sysrq", write("/proc/sysrq-trigger", "h"))  # help: harmless
        attempt("uevent_helper", write("/sys/kernel/uevent_helper"))
        attempt("modprobe", write("/proc/sys/kernel/modprobe"))
        attempt("drop_caches", write("/proc/sys/vm/drop_caches", "1"))
        attempt("hostname_knob", write("/proc/sys/kernel/hostname"))
        attempt("kcore", read("/proc/kcore"))
        attempt("kmem", read("/dev/kmem"))
        attempt("mem", read("/dev/mem"))
        report(processes=len(pids), host=host)
        """,
    )
    assert not r["host"], f"host processes visible: {r['host']}"
    assert r["processes"] < 15, f"{r['processes']} processes visible in /proc"
    worked = succeeded(r)
    assert not worked, f"not refused: {sorted(worked)}"


@pytest.mark.attack("environment of host processes")
def test_host_environment(make_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host process that creates the sandbox holds a secret in its environment; the
    attacker reads /proc/<pid>/environ of every process it sees (and its own).
    Blocked: the secret is nowhere."""
    secret = "hunter2-" + secrets.token_hex(8)
    monkeypatch.setenv("SANDLOT_ATTACK_HOST_SECRET", secret)
    sb = make_sandbox()
    r = attack(
        sb,
        """
        envs = {}
        for p in [p for p in os.listdir("/proc") if p.isdigit()]:
            try:
                with open("/proc/%s/environ" % p, "rb") as f:
                    envs[p] = f.read().decode("utf-8", "replace")
            except OSError as exc:
                envs[p] = "refused: %s" % exc
        report(envs=envs, mine=dict(os.environ))
        """,
    )
    assert secret not in str(r["envs"]), "the host's secret leaked into /proc/*/environ"
    assert "SANDLOT_ATTACK_HOST_SECRET" not in r["mine"]
    assert "PATH" in r["mine"]  # the positive control: we did read an environment


@pytest.mark.attack("write outside /workspace and /tmp (agent code, /etc, /usr, /, /dev, exe)")
def test_writes_outside_workspace(shared_sandbox: Any) -> None:
    """The attacker opens for writing, creates, chmods, renames and touches files outside
    /workspace and /tmp: the agent's own code first (rewriting it would take over every
    later command), the interpreter and the sandbox's init through /proc/<pid>/exe (the
    runc CVE-2019-5736 route). Each try undoes itself if it works (a failed wall must not
    break the host's /usr for the rest of the run). Blocked: every one refused."""
    r = attack(
        shared_sandbox,
        """
        import glob
        targets = glob.glob("/.sandlot*/**/*.py", recursive=True)[:5]
        targets += ["/.sandlot/x", "/etc/passwd", "/etc/x", "/usr/bin/x", "/usr/bin/python3",
                    "/x", "/dev/x", "/bin/x", "/var/x", "/root/x", "/home/x",
                    "/proc/1/exe", "/proc/self/exe"]
        def open_for_writing(t):
            existed = os.path.lexists(t)
            fd = os.open(t, os.O_WRONLY | os.O_APPEND | (0 if existed else os.O_CREAT), 0o644)
            os.close(fd)
            if not existed:
                os.unlink(t)
            return "opened"
        def same_mode(t):
            os.chmod(t, os.stat(t).st_mode & 0o7777)
            return "chmod"
        def rename_and_back(t):
            os.rename(t, t + ".sandlot-moved")
            os.rename(t + ".sandlot-moved", t)
            return "renamed"
        def same_times(t):
            st = os.stat(t)
            os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns))
            return "touched"
        for t in targets:
            attempt("write " + t, lambda t=t: open_for_writing(t))
            if os.path.lexists(t):
                attempt("chmod " + t, lambda t=t: same_mode(t))
                attempt("rename " + t, lambda t=t: rename_and_back(t))
                attempt("utime " + t, lambda t=t: same_times(t))
        attempt("mkdir /.sandlot/y", lambda: os.rmdir("/.sandlot/y") if os.mkdir("/.sandlot/y")
                is None else None)
        control = attempt("control", lambda: open_for_writing("/workspace/sandlot-probe"))
        report(targets=targets)
        """,
    )
    assert r["control"] == ["ok", "opened"], r["control"]  # the same try works in /workspace
    assert any("/.sandlot" in t and t.endswith(".py") for t in r["targets"]), r["targets"]
    worked = {k: v for k, v in succeeded(r).items() if k not in ("targets", "control")}
    assert not worked, f"written outside /workspace and /tmp: {sorted(worked)}"


# -- privileges: setuid, mount, cgroups, namespaces ------------------------------------------


@pytest.mark.attack("setuid-root binaries (su, mount, passwd, ...) to become root")
def test_setuid_binaries(shared_sandbox: Any) -> None:
    """The attacker lists setuid binaries and runs them to gain root: ``su`` (empty
    password), ``mount``, ``newgrp``, ``passwd``, and checks its no_new_privs bit.
    Blocked: no_new_privs is set and no process ever got euid 0."""
    r = attack(
        shared_sandbox,
        r"""
        import stat, subprocess
        setuid = []
        for folder in ("/usr/bin", "/usr/sbin", "/usr/lib", "/bin", "/sbin"):
            for root, dirs, files in os.walk(folder):
                for f in files:
                    p = os.path.join(root, f)
                    try:
                        st = os.lstat(p)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_ISUID:
                        setuid.append(p)
        runs = {}
        probes = [["su", "-c", "id -u", "root"], ["mount", "-t", "tmpfs", "x", "/tmp"],
                  ["newgrp", "root"], ["passwd", "-d", "root"], ["sudo", "-n", "id", "-u"]]
        for argv in probes:
            try:
                done = subprocess.run(argv, input=b"\n\n", capture_output=True, timeout=5)
                runs[argv[0]] = [done.returncode, done.stdout.decode()[-200:]]
            except (OSError, subprocess.TimeoutExpired) as exc:
                runs[argv[0]] = [None, str(exc)]
        status = open("/proc/self/status").read()
        nnp = [l for l in status.splitlines() if l.startswith("NoNewPrivs")]
        report(setuid=setuid, runs=runs, nnp=nnp, euid=os.geteuid())
        """,
    )
    assert r["nnp"] == ["NoNewPrivs:\t1"], r["nnp"]
    assert r["euid"] != 0
    rooted = {k: v for k, v in r["runs"].items() if v[0] == 0}
    assert not rooted, f"setuid programs succeeded: {rooted}"


@pytest.mark.attack("the Docker engine socket")
def test_docker_socket(shared_sandbox: Any) -> None:
    """The attacker looks for the Docker engine (and containerd) socket at its usual paths
    and anywhere it can list, and asks it for its version. Blocked: nothing answers."""
    r = attack(
        shared_sandbox,
        r"""
        paths = ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
                 "/var/run/containerd/containerd.sock", "/run/docker/containerd/containerd.sock"]
        for top in ("/", "/run", "/var", "/tmp", "/workspace", "/.sandlot-run", "/dev"):
            for root, dirs, files in os.walk(top):
                if root.startswith("/proc") or root.count("/") > 4:
                    dirs[:] = []
                    continue
                paths += [os.path.join(root, f) for f in files
                          if "docker" in f or "containerd" in f]
        def ask(p):
            def go():
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(3)
                s.connect(p)
                s.sendall(b"GET /version HTTP/1.0\r\n\r\n")
                return s.recv(200).decode("utf-8", "replace")
            return go
        for p in set(paths):
            attempt(p, ask(p))
        report(env={k: v for k, v in os.environ.items() if "DOCKER" in k})
        """,
    )
    assert not r["env"]
    worked = succeeded(r)
    assert not worked, f"engine sockets reached: {worked}"


@pytest.mark.attack("cgroup writes (release_agent, own limits, cgroup mounts)")
def test_cgroup_writes(shared_sandbox: Any) -> None:
    """The attacker raises its own memory and process limits, moves itself to the root
    group, writes ``release_agent`` / ``notify_on_release`` (the classic v1 escape), and
    mounts a cgroup hierarchy of its own. Blocked: every write and mount refused."""
    r = attack(
        shared_sandbox,
        r"""
        import glob
        files = []
        for pattern in ("/sys/fs/cgroup/*/release_agent", "/sys/fs/cgroup/*/notify_on_release",
                        "/sys/fs/cgroup/*/cgroup.procs",
                        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                        "/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/*/*/cgroup.procs",
                        "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max"):
            files += glob.glob(pattern)
        # Raising its own limits is the attack; release_agent and notify_on_release get
        # their own value back (the write is the proof; the host keeps its settings).
        values = {"cgroup.procs": "0", "memory.limit_in_bytes": "-1", "pids.max": "max",
                  "memory.max": "max"}
        def write(f, value):
            if value is None:
                value = open(f).read()
            with open(f, "w") as out:
                out.write(value)
            return "written"
        for f in set(files):
            value = values.get(os.path.basename(f))
            attempt("write " + f, lambda f=f, v=value: write(f, v))
        os.makedirs("/tmp/cg", exist_ok=True)
        for kind, opts in (("cgroup", b"memory"), ("cgroup", b"rdma"), ("cgroup2", None)):
            attempt("mount " + kind + str(opts), lambda k=kind, o=opts: sys_call(
                "mount", b"x", b"/tmp/cg", k.encode(), 0, o))
        attempt("mkdir group", lambda: os.mkdir("/sys/fs/cgroup/memory/evil"))
        report(files=sorted(set(files)))
        """,
    )
    worked = {k: v for k, v in succeeded(r).items() if k != "files"}
    assert not worked, f"cgroup writes not refused: {sorted(worked)}"


@pytest.mark.attack("TIOCSTI keystroke injection into a terminal")
def test_tiocsti(shared_sandbox: Any) -> None:
    """The attacker pushes keystrokes (``id\\n``) into any terminal it can reach with
    TIOCSTI: its stdio, /dev/tty and a pseudo-terminal's master it opens. Its own pty is
    fair game; the host's terminal is not. Blocked: TIOCSTI refused on every descriptor
    that is not the sandbox's own pty, and there is no controlling terminal."""
    r = attack(
        shared_sandbox,
        r"""
        import fcntl, termios
        def inject(fd_or_path):
            def go():
                if isinstance(fd_or_path, str):
                    fd = os.open(fd_or_path, os.O_RDWR | os.O_NOCTTY)
                else:
                    fd = fd_or_path
                for ch in b"id\n":
                    fcntl.ioctl(fd, termios.TIOCSTI, bytes([ch]))
                return "injected"
            return go
        for target in (0, 1, 2, "/dev/tty", "/dev/console", "/dev/tty0", "/dev/tty1"):
            attempt("tiocsti %s" % target, inject(target))
        attempt("open /dev/tty", lambda: os.open("/dev/tty", os.O_RDWR) and "opened")
        report(sid=os.getsid(0), pgrp=os.getpgrp())
        """,
    )
    worked = {k: v for k, v in succeeded(r).items() if k not in ("sid", "pgrp")}
    assert not worked, f"reached a terminal: {worked}"


@pytest.mark.attack("nested namespaces (unshare -U/-m/-n, clone(CLONE_NEWUSER), setns)", hole=8)
def test_nested_namespaces(shared_sandbox: Any) -> None:
    """The attacker makes namespaces of its own: ``unshare -U``, ``-Ur -m``, ``-n``, the
    unshare and clone system calls with CLONE_NEWUSER (a fresh user namespace gives back
    every capability in it, the first step of most kernel exploits), and setns into the
    namespaces of PID 1. Blocked: every one refused."""
    r = attack(
        shared_sandbox,
        r"""
        import subprocess
        CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x20000, 0x10000000, 0x40000000
        CLONE_NEWPID, CLONE_NEWUTS = 0x20000000, 0x4000000
        CLONE_NEWIPC, CLONE_NEWCGROUP = 0x8000000, 0x2000000
        for argv in (["unshare", "-U", "true"], ["unshare", "-Ur", "-m", "true"],
                     ["unshare", "-n", "true"], ["unshare", "-m", "true"],
                     ["unshare", "-Urn", "true"], ["unshare", "-Urp", "-f", "true"]):
            def run(argv=argv):
                done = subprocess.run(argv, capture_output=True, timeout=5)
                if done.returncode:
                    raise OSError(errno.EPERM, done.stderr.decode()[-200:])
                return "made"
            attempt(" ".join(argv), run)
        for name, flags in (("user", CLONE_NEWUSER), ("user+mount", CLONE_NEWUSER | CLONE_NEWNS),
                            ("user+net", CLONE_NEWUSER | CLONE_NEWNET), ("mount", CLONE_NEWNS),
                            ("net", CLONE_NEWNET), ("pid", CLONE_NEWPID), ("uts", CLONE_NEWUTS),
                            ("ipc", CLONE_NEWIPC), ("cgroup", CLONE_NEWCGROUP)):
            attempt("unshare(%s)" % name, lambda f=flags: sys_call("unshare", f))
        def clone_user():
            # fork-like clone into a new user namespace; the child leaves at once.
            pid = sys_call("clone", CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0)
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            return "cloned"
        attempt("clone(CLONE_NEWUSER)", clone_user)
        def clone3_user():
            args = struct.pack("QQQQQQQQ", CLONE_NEWUSER, 0, 0, 0, signal.SIGCHLD, 0, 0, 0)
            buf = ctypes.create_string_buffer(args, len(args))
            pid = sys_call("clone3", buf, len(args))
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            return "cloned"
        attempt("clone3(CLONE_NEWUSER)", clone3_user)
        if hasattr(os, "unshare"):
            attempt("os.unshare(CLONE_NEWUSER)", lambda: os.unshare(CLONE_NEWUSER) or "made")
        for ns in ("user", "mnt", "net", "pid"):
            def enter(ns=ns):
                fd = os.open("/proc/1/ns/" + ns, os.O_RDONLY)
                return sys_call("setns", fd, 0)
            attempt("setns(/proc/1/ns/%s)" % ns, enter)
        report()
        """,
    )
    worked = succeeded(r)
    assert not worked, f"namespaces made inside the sandbox: {sorted(worked)}"


@pytest.mark.attack("mount, remount and pivot_root")
def test_mount(shared_sandbox: Any) -> None:
    """The attacker remounts / and /usr read-write, mounts a tmpfs, bind-mounts over
    /etc, unmounts /workspace's cover and uses the new mount API (fsopen, open_tree).
    Blocked: every call refused and / stays read-only."""
    r = attack(
        shared_sandbox,
        r"""
        import subprocess
        MS_REMOUNT, MS_BIND, MS_RDONLY = 32, 4096, 1
        os.makedirs("/tmp/m", exist_ok=True)
        attempt("remount / rw", lambda: sys_call("mount", None, b"/", None, MS_REMOUNT, None))
        attempt("remount /usr rw", lambda: sys_call("mount", None, b"/usr", None,
                MS_REMOUNT | MS_BIND, None))
        attempt("tmpfs", lambda: sys_call("mount", b"x", b"/tmp/m", b"tmpfs", 0, None))
        attempt("bind /tmp over /etc", lambda: sys_call("mount", b"/tmp", b"/etc", None,
                MS_BIND, None))
        attempt("umount /workspace", lambda: sys_call("umount2", b"/workspace", 2))
        attempt("umount /proc", lambda: sys_call("umount2", b"/proc", 2))
        attempt("pivot_root", lambda: sys_call("pivot_root", b"/tmp", b"/tmp/m"))
        attempt("fsopen tmpfs", lambda: sys_call("fsopen", b"tmpfs", 0))
        attempt("open_tree /", lambda: sys_call("open_tree", -100, b"/", 1))
        def shell_mount():
            done = subprocess.run(["mount", "-o", "remount,rw", "/"], capture_output=True,
                                  timeout=5)
            if done.returncode:
                raise OSError(errno.EPERM, done.stderr.decode()[-200:])
            return "remounted"
        attempt("mount -o remount,rw /", shell_mount)
        attempt("write /", lambda: open("/pwned", "w").write("x"))
        report()
        """,
    )
    worked = succeeded(r)
    assert not worked, f"mounts not refused: {sorted(worked)}"


# -- system calls the filter must refuse -------------------------------------------------------


@pytest.mark.attack("kernel keyrings (add_key, keyctl, request_key)", hole=8)
def test_keyring_calls(shared_sandbox: Any) -> None:
    """The attacker uses the kernel keyring system calls at all (they are not namespaced
    by anything but the user namespace; see test_tenants for the cross-sandbox read).
    Blocked: add_key, keyctl and request_key refused."""
    r = attack(
        shared_sandbox,
        r"""
        KEY_SPEC_SESSION, KEY_SPEC_USER = -3, -4
        attempt("add_key @u", lambda: sys_call("add_key", b"user", b"sandlot-probe", b"v", 1,
                KEY_SPEC_USER))
        attempt("keyctl get_keyring_id @u", lambda: sys_call("keyctl", 0, KEY_SPEC_USER, 0))
        attempt("keyctl join_session", lambda: sys_call("keyctl", 1, None))
        attempt("request_key", lambda: sys_call("request_key", b"user", b"sandlot-none",
                None, KEY_SPEC_SESSION))
        report()
        """,
    )
    worked = succeeded(r)
    # request_key of a key that does not exist fails with ENOKEY even unfiltered: the test
    # counts only what worked.
    assert not worked, f"keyring calls not refused: {sorted(worked)}"


@pytest.mark.attack("io_uring_setup", hole=8)
def test_io_uring(shared_sandbox: Any) -> None:
    """The attacker sets up an io_uring (a large, often exploited kernel surface that
    bypasses system-call filters for the operations it runs). Blocked: refused."""
    r = attack(
        shared_sandbox,
        r"""
        params = ctypes.create_string_buffer(120)
        attempt("io_uring_setup", lambda: sys_call("io_uring_setup", 4, params))
        report()
        """,
    )
    worked = succeeded(r)
    assert not worked, f"io_uring available: {worked}"


@pytest.mark.attack("userfaultfd (user-mode only, too)", hole=8)
def test_userfaultfd(shared_sandbox: Any) -> None:
    """The attacker opens a userfaultfd (the classic tool to win kernel races), with
    UFFD_USER_MODE_ONLY (allowed unprivileged even with vm.unprivileged_userfaultfd=0) and
    without, and through /dev/userfaultfd. Blocked: all refused."""
    r = attack(
        shared_sandbox,
        r"""
        O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY = 0o2000000, 0o4000, 1
        attempt("userfaultfd(user mode only)", lambda: sys_call("userfaultfd",
                O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY))
        attempt("userfaultfd()", lambda: sys_call("userfaultfd", O_CLOEXEC | O_NONBLOCK))
        attempt("/dev/userfaultfd", lambda: os.open("/dev/userfaultfd", os.O_RDWR))
        report()
        """,
    )
    worked = succeeded(r)
    assert not worked, f"userfaultfd available: {sorted(worked)}"


@pytest.mark.attack("bpf (maps and socket filters)")
def test_bpf(shared_sandbox: Any) -> None:
    """The attacker creates a BPF map and loads a socket-filter program (unprivileged BPF is
    the source of many kernel exploits). Blocked: refused."""
    r = attack(
        shared_sandbox,
        r"""
        BPF_MAP_CREATE, BPF_PROG_LOAD = 0, 5
        attr = struct.pack("IIII", 2, 4, 8, 16) + b"\0" * 112  # array map
        buf = ctypes.create_string_buffer(attr, len(attr))
        attempt("BPF_MAP_CREATE", lambda: sys_call("bpf", BPF_MAP_CREATE, buf, len(attr)))
        insns = struct.pack("<BBhi", 0xb7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
        prog = ctypes.create_string_buffer(insns, len(insns))
        lic = ctypes.create_string_buffer(b"GPL")
        pattr = struct.pack("IIQQIIQ", 1, 2, ctypes.addressof(prog),
                            ctypes.addressof(lic), 0, 0, 0) + b"\0" * 80
        pbuf = ctypes.create_string_buffer(pattr, len(pattr))
        attempt("BPF_PROG_LOAD socket filter", lambda: sys_call("bpf", BPF_PROG_LOAD, pbuf,
                len(pattr)))
        report()
        """,
    )
    worked = succeeded(r)
    assert not worked, f"bpf available: {sorted(worked)}"


@pytest.mark.attack("perf_event_open", hole=8)
def test_perf_event_open(shared_sandbox: Any) -> None:
    """The attacker opens a software perf event on itself (user space only: what
    perf_event_paranoid=2 still allows; perf is a side channel and an exploit surface).
    Blocked: refused."""
    r = attack(
        shared_sandbox,
        r"""
        PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK = 1, 0
        # type, size, config, sample_period, sample_type, read_format, then the flags:
        # exclude_kernel (bit 5) | exclude_hv (bit 6); the rest zero
        attr = struct.pack("IIQQQQQ", PERF_TYPE_SOFTWARE, 128, PERF_COUNT_SW_CPU_CLOCK, 0, 0, 0,
                           (1 << 5) | (1 << 6))
        attr += b"\0" * (128 - len(attr))
        buf = ctypes.create_string_buffer(attr, 128)
        attempt("perf_event_open(self, sw cpu clock)", lambda: sys_call(
            "perf_event_open", buf, 0, -1, -1, 0))
        attempt("perf_event_open(pid 1)", lambda: sys_call("perf_event_open", buf, 1, -1, -1, 0))
        report()
        """,
    )
    worked = succeeded(r)
    assert not worked, f"perf_event_open available: {sorted(worked)}"


@pytest.mark.attack("kexec and kernel modules")
def test_kexec_and_modules(shared_sandbox: Any) -> None:
    """The attacker loads a kernel image and kernel modules and removes one, each with
    arguments that would do nothing if allowed (no segments, an ELF header alone, a module
    that does not exist): the kernel checks the privilege first, so any answer but EPERM,
    EACCES or ENOSYS means the call got past it. Blocked: every one refused there."""
    r = attack(
        shared_sandbox,
        r"""
        img = ctypes.create_string_buffer(b"\x7fELF" + b"\0" * 60)
        attempt("kexec_load", lambda: sys_call("kexec_load", 0, 0, None, 0))
        fd = os.open("/usr/bin/true", os.O_RDONLY)
        attempt("kexec_file_load", lambda: sys_call("kexec_file_load", fd, fd, 1, b"", 0))
        attempt("init_module", lambda: sys_call("init_module", img, 64, b""))
        attempt("finit_module", lambda: sys_call("finit_module", fd, b"", 0))
        attempt("delete_module", lambda: sys_call("delete_module", b"sandlot_no_such_mod", 0))
        report()
        """,
    )
    refused = ("EPERM", "EACCES", "ENOSYS")
    passed = {
        name: value
        for name, value in r.items()
        if value[0] == "ok" or (value[0] == "error" and not value[1].startswith(refused))
    }
    assert not passed, f"past the privilege check: {passed}"


@pytest.mark.attack("personality tricks (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC)", hole=8)
def test_personality(shared_sandbox: Any) -> None:
    """The attacker switches off address-space randomisation and makes readable memory
    executable for what it runs next (personality flags; Docker's profile allows only the
    plain Linux personas). Blocked: the calls refused, or without effect on a child."""
    r = attack(
        shared_sandbox,
        r"""
        import subprocess
        ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC = 0x0040000, 0x0400000
        def set_and_check(flag):
            def go():
                sys_call("personality", flag)
                out = subprocess.run(["cat", "/proc/self/personality"], capture_output=True,
                                     timeout=5).stdout.decode().strip()
                if not int(out, 16) & flag:
                    raise OSError(errno.EPERM, "no effect: " + out)
                return out
            return go
        attempt("ADDR_NO_RANDOMIZE", set_and_check(ADDR_NO_RANDOMIZE))
        attempt("READ_IMPLIES_EXEC", set_and_check(READ_IMPLIES_EXEC))
        report()
        """,
    )
    worked = succeeded(r)
    assert not worked, f"personality changed: {worked}"


@pytest.mark.attack("ptrace another process of the sandbox", hole=8)
def test_ptrace_other_process(shared_sandbox: Any) -> None:
    """The attacker attaches to processes it did not start: the sandbox's PID 1 and a
    command the host started before (a sibling), with PTRACE_ATTACH and PTRACE_SEIZE, and
    reads a sibling's memory with process_vm_readv. (test_agent attacks the agent.)
    Blocked: all refused."""
    marker = "sandlot-sibling-" + secrets.token_hex(4)
    sibling = shared_sandbox.commands.run(
        ["sh", "-c", "while :; do sleep 1; done", marker], background=True
    )
    try:
        r = attack(
            shared_sandbox,
            f"""
            PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SEIZE = 16, 17, 0x4206
            targets = [1] + [int(p) for p in os.listdir("/proc")
                             if p.isdigit() and "{marker}" in cmdline(p)
                             and "ATTACKER" not in cmdline(p)]
            def trace(pid, how):
                def go():
                    sys_call("ptrace", how, pid, 0, 0)
                    if how == PTRACE_ATTACH:
                        os.waitpid(pid, 0x40000000)  # __WALL
                    sys_call("ptrace", PTRACE_DETACH, pid, 0, 0)
                    return "traced"
                return go
            def readv(pid):
                def go():
                    with open("/proc/%d/maps" % pid) as f:
                        start = int(f.readline().split("-")[0], 16)
                    buf = ctypes.create_string_buffer(16)
                    local = struct.pack("QQ", ctypes.addressof(buf), 16)
                    remote = struct.pack("QQ", start, 16)
                    n = libc.syscall(ctypes.c_long(310), ctypes.c_long(pid), local,
                                     ctypes.c_long(1), remote, ctypes.c_long(1), ctypes.c_long(0))
                    if n < 0:
                        raise OSError(ctypes.get_errno(), "process_vm_readv")
                    return n
                return go
            for pid in targets:
                attempt("PTRACE_SEIZE %d" % pid, trace(pid, PTRACE_SEIZE))
                attempt("PTRACE_ATTACH %d" % pid, trace(pid, PTRACE_ATTACH))
                attempt("process_vm_readv %d" % pid, readv(pid))
            report(targets=targets)
            """,
        )
    finally:
        sibling.kill()
    assert len(r["targets"]) >= 2, f"the sibling was not found: {r['targets']}"
    worked = {k: v for k, v in succeeded(r).items() if k != "targets"}
    assert not worked, f"ptrace not refused: {sorted(worked)}"


@pytest.mark.attack("the filter bypassed through the i386 ABI (int 0x80, socketcall)", hole=8)
def test_seccomp_other_abis(shared_sandbox: Any) -> None:
    """A 64-bit process may still make 32-bit system calls with ``int 0x80`` (this kernel
    has IA32 emulation): their numbers differ, and ``socketcall`` hides its arguments from
    any filter. A filter written for x86_64 numbers alone lets them through. The attacker
    runs machine code that makes i386 unshare, keyctl, add_key, io_uring_setup,
    userfaultfd, bpf, socket/socketcall(AF_VSOCK), personality and mount calls.
    Blocked: every one refused or the caller killed (the i386 getpid control aside)."""
    r = attack(
        shared_sandbox,
        r"""
        import mmap
        MAP_32BIT = 0x40
        low = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_32BIT,
                        prot=mmap.PROT_READ | mmap.PROT_WRITE)
        LOW = ctypes.addressof(ctypes.c_char.from_buffer(low))
        code_map = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        CODE = ctypes.addressof(ctypes.c_char.from_buffer(code_map))

        def int80(nr, a1=0, a2=0, a3=0, a4=0, a5=0):
            # A 32-bit (i386) system call from this 64-bit process: int 0x80.
            code = (b"\x53" + b"\xb8" + struct.pack("<I", nr & 0xFFFFFFFF)
                    + b"\xbb" + struct.pack("<I", a1 & 0xFFFFFFFF)
                    + b"\xb9" + struct.pack("<I", a2 & 0xFFFFFFFF)
                    + b"\xba" + struct.pack("<I", a3 & 0xFFFFFFFF)
                    + b"\xbe" + struct.pack("<I", a4 & 0xFFFFFFFF)
                    + b"\xbf" + struct.pack("<I", a5 & 0xFFFFFFFF)
                    + b"\xcd\x80\x48\x63\xc0\x5b\xc3")
            code_map.seek(0)
            code_map.write(code)
            ret = ctypes.CFUNCTYPE(ctypes.c_long)(CODE)()
            if -4096 < ret < 0:
                raise OSError(-ret, errno.errorcode.get(-ret, str(-ret)))
            return ret

        def low_bytes(offset, data):
            low.seek(offset)
            low.write(data)
            return LOW + offset

        attempt("i386 getpid (the control: the ABI answers)", lambda: int80(20))
        attempt("i386 unshare(CLONE_NEWUSER)", lambda: int80(310, 0x10000000))
        attempt("i386 keyctl(get @u)", lambda: int80(288, 0, -4 & 0xFFFFFFFF, 0))
        attempt("i386 add_key", lambda: int80(286, low_bytes(0, b"user\0"),
                low_bytes(16, b"sandlot-i386\0"), low_bytes(48, b"v\0"), 1, -4))
        attempt("i386 io_uring_setup", lambda: int80(425, 4, low_bytes(256, b"\0" * 120)))
        attempt("i386 userfaultfd(user mode only)", lambda: int80(374, 0o2000000 | 1))
        MAP = struct.pack("IIII", 2, 4, 8, 16) + b"\0" * 112
        attempt("i386 bpf(map create)", lambda: int80(357, 0, low_bytes(512, MAP), 128))
        attempt("i386 socket(AF_VSOCK)", lambda: int80(359, 40, 1, 0))
        ARGS = struct.pack("III", 40, 1, 0)  # AF_VSOCK, SOCK_STREAM, 0
        attempt("i386 socketcall(SOCKET, AF_VSOCK)", lambda: int80(102, 1, low_bytes(1024, ARGS)))
        def persona():
            int80(136, 0x0040000)
            now = int80(136, 0xFFFFFFFF)
            if not now & 0x0040000:
                raise OSError(errno.EPERM, "no effect")
            return now
        attempt("i386 personality(ADDR_NO_RANDOMIZE)", persona)
        attempt("i386 mount(tmpfs)", lambda: int80(21, low_bytes(2048, b"x\0"),
                low_bytes(2064, b"/tmp\0"), low_bytes(2080, b"tmpfs\0"), 0, 0))
        report()
        """,
    )
    worked = {k: v for k, v in succeeded(r).items() if "control" not in k}
    assert not worked, f"32-bit system calls got past the filter: {sorted(worked)}"


# -- the network ------------------------------------------------------------------------------


@pytest.mark.attack("raw and packet sockets")
def test_raw_sockets(shared_sandbox: Any) -> None:
    """The attacker opens raw IP and packet sockets (to spoof or sniff). Blocked: refused."""
    r = attack(
        shared_sandbox,
        r"""
        attempt("AF_INET SOCK_RAW icmp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                socket.IPPROTO_ICMP).fileno())
        attempt("AF_INET SOCK_RAW raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                socket.IPPROTO_RAW).fileno())
        attempt("AF_INET6 SOCK_RAW", lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW,
                socket.IPPROTO_ICMPV6).fileno())
        attempt("AF_PACKET SOCK_RAW", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                socket.htons(3)).fileno())
        attempt("AF_PACKET SOCK_DGRAM", lambda: socket.socket(socket.AF_PACKET,
                socket.SOCK_DGRAM, socket.htons(3)).fileno())
        report()
        """,
    )
    worked = succeeded(r)
    assert not worked, f"raw sockets opened: {sorted(worked)}"


@pytest.mark.attack("AF_VSOCK sockets (not namespaced: reach the VM's hypervisor)", hole=8)
def test_vsock(shared_sandbox: Any) -> None:
    """This host is a Firecracker VM, and vsock is not namespaced: a vsock socket from any
    sandbox talks to the hypervisor's side whatever the network namespace says. The
    attacker creates vsock sockets and binds a listener (which the hypervisor could reach);
    it connects nowhere (no traffic leaves this machine). Blocked: socket() refused."""
    r = attack(
        shared_sandbox,
        r"""
        AF_VSOCK = 40
        attempt("socket(AF_VSOCK, STREAM)", lambda: socket.socket(AF_VSOCK,
                socket.SOCK_STREAM).fileno())
        attempt("socket(AF_VSOCK, DGRAM)", lambda: socket.socket(AF_VSOCK,
                socket.SOCK_DGRAM).fileno())
        attempt("socket(AF_VSOCK, SEQPACKET)", lambda: socket.socket(AF_VSOCK,
                socket.SOCK_SEQPACKET).fileno())
        def listen():
            s = socket.socket(AF_VSOCK, socket.SOCK_STREAM)
            s.bind((0xFFFFFFFF, 0xFFFFFFFF))  # any CID, any port
            s.listen(1)
            return list(s.getsockname())
        attempt("vsock listener", listen)
        report()
        """,
    )
    worked = succeeded(r)
    assert not worked, f"vsock available: {sorted(worked)}"


@pytest.fixture
def host_listeners() -> Iterator[dict[str, Any]]:
    """The host listens on 127.0.0.1 and ::1 (TCP and UDP) and on an abstract Unix socket,
    and counts every connection or datagram it gets."""
    got: list[str] = []
    stop = threading.Event()
    tcp4 = socket.create_server(("127.0.0.1", 0))
    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp4.bind(("127.0.0.1", 0))
    servers: list[socket.socket] = [tcp4, udp4]
    tcp6: socket.socket | None = None
    if socket.has_ipv6:
        try:
            tcp6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
            servers.append(tcp6)
        except OSError:
            tcp6 = None
    abstract_name = "sandlot-attack-" + secrets.token_hex(6)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + abstract_name)
    unix.listen(8)
    servers.append(unix)

    def serve(server: socket.socket, label: str) -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                if server.type == socket.SOCK_DGRAM:
                    server.recvfrom(100)
                else:
                    conn, _ = server.accept()
                    with conn:
                        conn.sendall(b"HOST-BANNER\n")
                got.append(label)
            except (TimeoutError, OSError):
                continue

    threads = [
        threading.Thread(target=serve, args=(s, repr(s.getsockname())), daemon=True)
        for s in servers
    ]
    for t in threads:
        t.start()
    try:
        yield {
            "tcp4": tcp4.getsockname()[1],
            "udp4": udp4.getsockname()[1],
            "tcp6": tcp6.getsockname()[1] if tcp6 else None,
            "abstract": abstract_name,
            "got": got,
        }
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for s in servers:
            s.close()


@pytest.mark.attack("host loopback (TCP, UDP, IPv6) and abstract Unix sockets, network none")
def test_host_loopback_and_abstract_sockets(
    shared_sandbox: Any, host_listeners: dict[str, Any]
) -> None:
    """The host listens on 127.0.0.1 and ::1 and on an abstract Unix socket; the attacker,
    with the network off, connects to each (and sends a datagram). Blocked: the host's
    listeners got nothing and the attacker got no banner."""
    ports = host_listeners
    # The positive control: the listeners answer on the host.
    with socket.create_connection(("127.0.0.1", ports["tcp4"]), timeout=3) as s:
        assert s.recv(100) == b"HOST-BANNER\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(3)
        s.connect("\0" + ports["abstract"])
        assert s.recv(100) == b"HOST-BANNER\n"
    assert threading_wait(lambda: len(ports["got"]) >= 2)
    ports["got"].clear()

    r = attack(
        shared_sandbox,
        f"""
        def tcp(host, port, family=socket.AF_INET):
            def go():
                s = socket.socket(family)
                s.settimeout(3)
                s.connect((host, port))
                return s.recv(100).decode()
            return go
        def udp():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"hello", ("127.0.0.1", {ports["udp4"]}))
            return "sent"
        def abstract():
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(3)
            s.connect("\\0{ports["abstract"]}")
            return s.recv(100).decode()
        attempt("tcp 127.0.0.1", tcp("127.0.0.1", {ports["tcp4"]}))
        attempt("tcp localhost", tcp("localhost", {ports["tcp4"]}))
        if {ports["tcp6"]!r}:
            attempt("tcp ::1", tcp("::1", {ports["tcp6"]!r} or 0, socket.AF_INET6))
        attempt("udp 127.0.0.1", udp)
        attempt("abstract unix", abstract)
        report()
        """,
    )
    banners = {k: v for k, v in succeeded(r).items() if "HOST-BANNER" in str(v)}
    assert not banners, f"host reached: {banners}"
    assert not ports["got"], f"the host's listeners got traffic from the sandbox: {ports['got']}"


def threading_wait(predicate: Any, timeout: float = 5) -> bool:
    event = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return True
        event.wait(0.05)
    return bool(predicate())


# -- the filter itself ------------------------------------------------------------------------


@pytest.mark.attack("a seccomp filter is in force (Seccomp: 2)", hole=8)
def test_seccomp_in_force(shared_sandbox: Any) -> None:
    """The attacker checks whether any system-call filter stands in its way: /proc/self/
    status's ``Seccomp:`` line for a command and for what it execs. Blocked: mode 2 (filter)
    for both."""
    r = attack(
        shared_sandbox,
        r"""
        import subprocess
        mine = [l for l in open("/proc/self/status").read().splitlines()
                if l.startswith(("Seccomp:", "NoNewPrivs:"))]
        child = subprocess.run(["grep", "^Seccomp:", "/proc/self/status"], capture_output=True,
                               timeout=5).stdout.decode().strip()
        report(mine=mine, child=child)
        """,
    )
    assert "Seccomp:\t2" in r["mine"], r["mine"]
    assert r["child"] == "Seccomp:\t2", r["child"]
