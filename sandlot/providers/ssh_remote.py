"""The remote half of the ``ssh`` provider: a helper started once per SSH connection.

The host runs this file's source as ``PYTHON -I -S -c SOURCE ROOT`` on the remote machine
(stdlib only, Python 3.8+), then talks to it in JSON lines over the session's stdin and
stdout. One long-lived helper instead of one ``ssh host command`` per operation: every exec
pays for sshd's fork, the login shell and its rc files (about 190 ms on the test machine,
whose ``.bashrc`` initialises pyenv), while a request to the helper costs a round trip.

Operations: ``launch`` (bind the agent's socket, start it detached with ``posix_spawn`` in a
session of its own), ``kill`` (the agent's whole process tree, then its folder), ``alive``,
``log``, ``install`` (the agent's files, once per version, atomically) and ``etc`` (the
sandbox's ``/etc`` snapshot for bwrap). Agents outlive the helper and the SSH connection:
their own ``--deadline`` ends them, and each helper, when it starts, removes the folders of
sandboxes whose agent has ended. The first line the helper prints starts with ``MARKER``
(a login shell may print before it) and carries facts about the host the provider needs.
"""

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time

MARKER = "sandlot-ssh-helper "
TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
MAX_SOCKET_PATH = 107
TERM_GRACE = 1.0
# A SIGKILLed process in uninterruptible sleep (disk I/O on a loaded host) dies only when the
# I/O ends: a full test run saw one outlive 5 s.
KILL_WAIT = 15.0
ETC_RECHECK = 5.0
SWEEP_GRACE = 3600.0

_write_lock = threading.Lock()


def _send(message):
    data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
    with _write_lock:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view) :]


class Failed(Exception):
    """An answer with ``error``; ``kind`` tells the host which exception to raise."""

    def __init__(self, message, kind="start"):
        Exception.__init__(self, message)
        self.kind = kind


# -- processes -----------------------------------------------------------------------------


def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def alive(pid, started):
    return isinstance(pid, int) and pid > 0 and started is not None and start_time(pid) == started


def descendants(pid):
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    children = [int(x) for x in f.read().split()]
            except OSError:
                continue
            found.extend(children)
            stack.extend(children)
    return found


def _wait_gone(pid, started, seconds):
    deadline = time.monotonic() + seconds
    while alive(pid, started) and time.monotonic() < deadline:
        time.sleep(0.002)
    return not alive(pid, started)


def _reap(pid):
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# -- the helper ----------------------------------------------------------------------------


class Helper:
    def __init__(self, root):
        home = os.path.expanduser("~")
        self.root = os.path.normpath(os.path.join(home, os.path.expanduser(root)))
        self.home = home
        self._etc = {}  # fingerprint of the request -> (checked at, folder)
        self.top = []

    def hello(self):
        self.top = top = []
        for name in TOP_LEVEL:
            path = "/" + name
            if os.path.islink(path):
                top.append([name, "symlink", os.readlink(path)])
            elif os.path.isdir(path):
                top.append([name, "dir", ""])
        agents = os.path.join(self.root, "agent")
        try:
            installed = [n for n in os.listdir(agents) if not n.startswith(".")]
        except OSError:
            installed = []
        return {
            "root": self.root,
            "home": self.home,
            "python": os.path.realpath(sys.executable),
            "version": list(sys.version_info[:3]),
            "uid": os.geteuid(),
            "top": top,
            "installed": installed,
            "bwrap": self._probe(top),
            "has": {p: os.access(p, os.X_OK) for p in ("/usr/bin/python3",)},
        }

    def _probe(self, top):
        """None if bwrap can create the namespaces the sandbox uses here, else why not."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            return "bubblewrap is not installed"
        binds = []
        for name, kind, target in top:
            binds += ["--symlink", target, "/" + name] if kind == "symlink" else []
            binds += ["--ro-bind", "/" + name, "/" + name] if kind == "dir" else []
        argv = [
            bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--ro-bind", "/usr", "/usr", *binds,
            "--proc", "/proc", "--dev", "/dev", "--", "/usr/bin/true",
        ]  # fmt: skip
        import subprocess

        try:
            done = subprocess.run(argv, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap does not run: {exc}"
        if done.returncode != 0:
            return done.stderr.decode("utf-8", "replace").strip() or "bwrap failed"
        return None

    def _sandbox_dir(self, path):
        """A sandbox folder, refused unless it is one directly under ROOT/sandboxes."""
        parent = os.path.join(self.root, "sandboxes")
        if not isinstance(path, str) or os.path.dirname(path) != parent or ".." in path:
            raise Failed(f"not a sandbox folder of {self.root}: {path!r}", "argument")
        return path

    # -- operations ---------------------------------------------------------------------------

    def op_install(self, req):
        """Put the agent's files in ROOT/agent/DIGEST: compiled in a staging folder, renamed
        into place in one step, so a half-written copy is never used."""
        agents = os.path.join(self.root, "agent")
        target = os.path.join(agents, req["digest"])
        if os.path.isdir(os.path.join(target, "agent")):
            return {"installed": False}
        os.makedirs(agents, exist_ok=True)
        import tempfile

        staging = tempfile.mkdtemp(dir=agents, prefix=".staging-")
        try:
            package = os.path.join(staging, "agent")
            os.mkdir(package)
            for name, text in req["files"].items():
                if "/" in name or name.startswith("."):
                    raise Failed(f"bad file name {name!r}", "argument")
                with open(os.path.join(package, name), "w", encoding="utf-8") as f:
                    f.write(text)
            import subprocess

            python = req.get("python") or sys.executable
            compiled = subprocess.run(
                [python, "-I", "-S", "-m", "compileall", "-q", package],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            if compiled.returncode != 0:
                raise Failed(f"cannot compile the agent: {compiled.stdout.decode()[-2000:]}")
            self._install_vendored(python, staging, req.get("vendor") or {})
            for folder, _, names in os.walk(staging):
                os.chmod(folder, 0o755)
                for name in names:
                    os.chmod(os.path.join(folder, name), 0o644)
            try:
                os.rename(staging, target)
            except OSError:  # another helper got there first
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {"installed": True}

    def _install_vendored(self, python, staging, files):
        """sandlot's copy of cloudpickle in vendor/ (agent/persist.py imports it from
        there); dropped if this Python cannot compile it (persistence then falls back)."""
        if not files:
            return
        package = os.path.join(staging, "vendor", "cloudpickle")
        os.makedirs(package)
        for name, text in files.items():
            if "/" in name or name.startswith("."):
                raise Failed(f"bad file name {name!r}", "argument")
            with open(os.path.join(package, name), "w", encoding="utf-8") as f:
                f.write(text)
        import subprocess

        compiled = subprocess.run(
            [python, "-I", "-S", "-m", "compileall", "-q", package],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if compiled.returncode != 0:
            shutil.rmtree(os.path.dirname(package), ignore_errors=True)

    def op_etc(self, req):
        """The sandbox's /etc: allowlisted host entries plus synthetic files, one folder per
        distinct content (like the bwrap provider's snapshot), reused while unchanged."""
        allow, files = req["allowlist"], req["files"]
        digest = _fingerprint(allow, files)
        seen = self._etc.get(digest)
        if seen is not None and time.monotonic() - seen[0] < ETC_RECHECK and os.path.isdir(seen[1]):
            return {"path": seen[1]}
        parent = os.path.join(self.root, "etc")
        target = os.path.join(parent, digest)
        if not os.path.isdir(target):
            os.makedirs(parent, exist_ok=True)
            import tempfile

            staging = tempfile.mkdtemp(dir=parent, prefix=".staging-")
            try:
                for name in allow:
                    source, destination = "/etc/" + name, os.path.join(staging, name)
                    os.makedirs(os.path.dirname(destination), exist_ok=True)
                    if os.path.islink(source):
                        os.symlink(os.readlink(source), destination)
                    elif os.path.isdir(source):
                        shutil.copytree(source, destination, symlinks=True)
                    elif os.path.isfile(source):
                        shutil.copy2(source, destination)
                for name, text in files.items():
                    with open(os.path.join(staging, name), "w") as f:
                        f.write(text)
                for folder, _, names in os.walk(staging):
                    os.chmod(folder, 0o755)
                    for name in names:
                        path = os.path.join(folder, name)
                        if not os.path.islink(path):
                            os.chmod(path, 0o644)
                os.rename(staging, target)
            except OSError:
                if not os.path.isdir(target):
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        self._etc[digest] = (time.monotonic(), target)
        return {"path": target}

    def op_launch(self, req):
        """Make the sandbox folder, bind the agent's socket, start the agent detached.

        The socket is bound here and handed to the agent as ``--listen-fd``: it exists when
        this answer arrives, so the host connects at once (the connection waits in the
        backlog until the agent accepts) and nothing polls for a file to appear."""
        folder = self._sandbox_dir(req["dir"])
        path = os.path.join(folder, "agent.sock")
        if len(path.encode()) > MAX_SOCKET_PATH:
            raise Failed(f"remote_dir is too long for a Unix socket path ({path})", "argument")
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        os.mkdir(folder, 0o700)
        target = os.path.join(folder, "workspace")
        os.mkdir(target)
        for part in req.get("workdir", []):
            target = os.path.join(target, part)
            os.makedirs(target, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(64)
            fd = listener.fileno()
            os.set_inheritable(fd, True)
            argv = self._fill(req, fd)
            program = argv[0] if "/" in argv[0] else shutil.which(argv[0])
            if program is None:
                raise Failed(f"{argv[0]} is not installed on the remote host", "unavailable")
            log = os.path.join(folder, "agent.log")
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ]
            try:
                pid = os.posix_spawn(program, argv, req["env"], file_actions=actions, setsid=True)
            except OSError as exc:
                raise Failed(f"cannot start {argv[0]}: {exc}") from None
        finally:
            listener.close()
        # This helper is the agent's parent until the SSH connection ends: reap it if it
        # ends first (afterwards init does).
        threading.Thread(target=_reap, args=(pid,), daemon=True).start()
        started = start_time(pid)
        with open(os.path.join(folder, "agent.pid"), "w") as f:
            f.write(f"{pid} {started}\n")
        return {"pid": pid, "started": started, "socket": path}

    def sweep(self):
        """Remove the folders of sandboxes whose agent has ended (its deadline passed while
        no sandlot was there to destroy it), so a host collects its own leftovers."""
        parent = os.path.join(self.root, "sandboxes")
        try:
            names = os.listdir(parent)
        except OSError:
            return
        for name in names:
            folder = os.path.join(parent, name)
            try:
                with open(os.path.join(folder, "agent.pid")) as f:
                    pid, started = f.read().split()
                gone = not alive(int(pid), int(started))
            except (OSError, ValueError):
                # No pid file: a launch in progress, or one that failed long ago.
                try:
                    gone = time.time() - os.stat(folder).st_mtime > SWEEP_GRACE
                except OSError:
                    continue
            if gone:
                shutil.rmtree(folder, ignore_errors=True)

    def _fill(self, req, fd):
        """The agent's argv with this host's parts put in at the slots the host named: the
        listening descriptor, the /etc snapshot, the top-level folders (/bin, /lib, ...)."""
        argv, slots = list(req["argv"]), req.get("slots", {})
        if "fd" in slots:
            argv[slots["fd"]] = str(fd)
        if "etc" in slots:
            argv[slots["etc"]] = self.op_etc(req["etc"])["path"]
        if "top" in slots:
            binds = []
            for name, kind, target in self.top:
                if kind == "symlink":
                    binds += ["--symlink", target, "/" + name]
                else:
                    binds += ["--ro-bind", "/" + name, "/" + name]
            argv[slots["top"] : slots["top"] + 1] = binds
        return argv

    def op_kill(self, req):
        """Kill the sandbox's process tree (all at once: a fork cannot outrun it), wait until
        it is gone, then remove its folder. Fine if it is gone already."""
        folder = self._sandbox_dir(req["dir"])
        pid, started = req.get("pid"), req.get("started")
        if alive(pid, started):
            if req.get("term"):
                # Unisolated agents kill their commands' process groups on SIGTERM.
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
                _wait_gone(pid, started, TERM_GRACE)
            for _ in range(3):  # again, for anything forked while we walked the tree
                if not alive(pid, started):
                    break
                for victim in [pid, *descendants(pid)]:
                    try:
                        os.kill(victim, signal.SIGKILL)
                    except OSError:
                        pass
                _wait_gone(pid, started, KILL_WAIT / 3)
        if alive(pid, started):
            raise Failed(f"process {pid} did not die", "unavailable")
        shutil.rmtree(folder, ignore_errors=True)
        return {}

    def op_alive(self, req):
        return {"alive": alive(req.get("pid"), req.get("started"))}

    def op_log(self, req):
        folder = self._sandbox_dir(req["dir"])
        try:
            with open(os.path.join(folder, "agent.log"), "rb") as f:
                f.seek(0, 2)
                f.seek(max(f.tell() - 2000, 0))
                text = f.read().decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        return {"log": text}


def _fingerprint(allow, files):
    import hashlib

    digest = hashlib.sha256()
    for name in allow:
        try:
            st = os.lstat("/etc/" + name)
        except OSError:
            digest.update((f"{name}:-").encode())
            continue
        digest.update((f"{name}:{st.st_mode}:{st.st_size}:{st.st_mtime_ns}").encode())
    for name in sorted(files):
        digest.update((f"{name}={files[name]}").encode())
    return digest.hexdigest()[:16]


def _serve(helper, request):
    rid = request.get("id")
    try:
        method = getattr(helper, "op_" + str(request.get("op")), None)
        if method is None:
            raise Failed(f"unknown operation {request.get('op')!r}", "argument")
        answer = method(request)
    except Failed as exc:
        answer = {"error": str(exc), "kind": exc.kind}
    except Exception as exc:  # every failure is an answer: the helper serves other sandboxes
        answer = {"error": f"{type(exc).__name__}: {exc}", "kind": "start"}
    answer["id"] = rid
    _send(answer)


def main(argv):
    helper = Helper(argv[0] if argv else ".cache/sandlot")
    sys.stdout.flush()
    os.write(1, (MARKER + json.dumps(helper.hello()) + "\n").encode())
    threading.Thread(target=helper.sweep, daemon=True).start()
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            break  # the SSH session ended; the agents carry on until their deadlines
        request = json.loads(line)
        # Kills wait for processes to die; everything else is quick but runs beside them.
        threading.Thread(target=_serve, args=(helper, request), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
