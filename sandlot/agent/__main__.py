"""Entry point: ``python3 -I -S -c 'import agent.__main__' --listen-fd N [options]``.

Options:
  --listen-fd N        accept host connections on this inherited, listening Unix socket
  --socket PATH        or bind and listen on this path
  --map SHOWN=REAL     serve the sandbox path SHOWN from the folder REAL (repeatable)
  --workdir PATH       default working folder of commands (default /workspace)
  --deadline SECONDS   exit, killing every command, after this long
  --parent PID         exit when this process is no longer our parent
  --rlimit NAME=VALUE  set a resource limit (nproc, as, nofile, core, fsize) for all commands
  --writable PATH      commands may change files only beneath these folders (repeatable;
                       Landlock, where the kernel has it; see walls.py)
  --walls              raise the agent's walls (walls.py) even without --writable
  --reap-all           the sandbox is a PID namespace of its own: at exit, SIGKILL every
                       process in it (daemons that left their session included)
  --lifeline FD        exit when this inherited pipe's other end closes (its creator died)
  --seccomp PATH       a seccomp program (BPF) to load for commands, on top of the
                       isolation's own (read once, at start)
"""

import sys


def _parse(argv):
    options = {"mapping": [], "rlimits": [], "writable": [], "walls": False}
    it = iter(argv)
    for flag in it:
        if flag in ("--walls", "--reap-all"):
            options[flag[2:].replace("-", "_")] = True
            continue
        try:
            value = next(it)
        except StopIteration:
            raise SystemExit("sandlot-agent: %s needs a value" % flag) from None
        if flag == "--listen-fd":
            options["listen_fd"] = int(value)
        elif flag == "--socket":
            options["socket"] = value
        elif flag == "--map":
            shown, _, real = value.partition("=")
            options["mapping"].append((shown.rstrip("/"), real.rstrip("/")))
        elif flag == "--workdir":
            options["workdir"] = value
        elif flag == "--deadline":
            options["deadline"] = float(value)
        elif flag == "--parent":
            options["parent"] = int(value)
        elif flag == "--writable":
            options["writable"].append(value)
            options["walls"] = True
        elif flag == "--seccomp":
            options["seccomp"] = value
            options["walls"] = True
        elif flag == "--lifeline":
            options["lifeline"] = int(value)
        elif flag == "--rlimit":
            name, _, limit = value.partition("=")
            options["rlimits"].append((name, int(limit)))
        else:
            raise SystemExit("sandlot-agent: unknown option " + flag)
    return options


def _listen(path):
    import _socket
    import posix

    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(64)
    return sock.detach()


def _set_rlimits(rlimits):
    if not rlimits:
        return
    import resource

    for name, value in rlimits:
        which = getattr(resource, "RLIMIT_" + name.upper())
        resource.setrlimit(which, (value, value))


def _seal_inherited():
    """Whatever else the agent was started with (bwrap's --userns descriptor, say) must not
    reach commands: close-on-exec for every descriptor above stderr."""
    import posix

    try:
        names = posix.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                posix.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, closed since


def main(argv):
    options = _parse(argv)
    _seal_inherited()
    _set_rlimits(options.pop("rlimits"))
    if "socket" in options:
        options["listen_fd"] = _listen(options.pop("socket"))
    if "listen_fd" not in options:
        raise SystemExit("sandlot-agent: --listen-fd or --socket is required")
    writable, walls = options.pop("writable"), options.pop("walls")
    if walls:
        seccomp = options.pop("seccomp", None)

        def raise_walls():
            from . import walls as w

            return w.setup(writable, seccomp)

        options["walls"] = raise_walls
    from .server import Agent

    Agent(**options).loop.run()


main(sys.argv[1:])
