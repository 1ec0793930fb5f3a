"""Build mode as root without the host's root: the template's folders through idmapped mounts.

A build step runs as uid 0 in its sandbox and must change files the host's root owns (the
host's ``/usr``, a base unpacked as root). Mapping the sandbox's uid 0 onto the host's would
make an escape from a build land as root. Instead the sandbox's user namespace maps its uid 0
onto a fresh unprivileged host uid (as every sandbox's does), and each folder the overlays
use (layers, the host's folders, the upper and work folders) is first cloned as an
*idmapped mount* through that namespace: there, files the host's root owns appear owned by
that uid, i.e. by the sandbox's root, and what the step writes lands on disk owned by the
host's root again. ``mount(8)`` in Debian 12 cannot make idmapped mounts (util-linux 2.39
can), so the wrapper is a short Python script (the host's interpreter, standard library and
``_ctypes`` only) making the system calls itself, then exec'ing bwrap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

IDMAP_DIR = "idmap"

# The wrapper: argv[1] is the JSON plan, the rest is bwrap's command line. System call numbers
# are the same on every architecture for these (>= 424).
SCRIPT = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def check(result, what):
    if result < 0:
        err = ctypes.get_errno()
        sys.stderr.write("sandlot build mount: %s: %s\n" % (what, os.strerror(err)))
        sys.exit(126)
plan = json.loads(sys.argv[1])
check(libc.unshare(0x00020000), "unshare")  # CLONE_NEWNS
check(libc.mount(None, b"/", None, 0x4000 | 0x40000, None), "private /")  # MS_REC|MS_PRIVATE
L = ctypes.c_long
attr = (ctypes.c_uint64 * 4)(0x00100000, 0, 0, plan["ns"])  # MOUNT_ATTR_IDMAP, userns fd
for source, target in plan["idmaps"]:
    # open_tree(AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC): a detached copy
    fd = libc.syscall(L(428), L(-100), source.encode(), L(1 | 0o2000000))
    check(fd, "open_tree " + source)
    # mount_setattr(fd, "", AT_EMPTY_PATH, attr, sizeof attr): idmapped through the namespace
    check(libc.syscall(L(442), L(fd), b"", L(0x1000), attr, L(32)), "idmap " + source)
    # move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)
    done = libc.syscall(L(429), L(fd), b"", L(-100), target.encode(), L(4))
    check(done, "move_mount " + target)
    os.close(fd)
# Into the sandbox's user namespace as its root (the host uid that owns it: what overlayfs
# creates, it creates as that uid, which the idmapped clones write as the host's root), and a
# mount namespace of that user namespace, where the overlays are mounted; bwrap starts there.
os.setgroups([])
check(libc.setns(plan["ns"], 0x10000000), "setns")  # CLONE_NEWUSER
os.setresgid(0, 0, 0)
os.setresuid(0, 0, 0)
check(libc.unshare(0x00020000), "unshare")
os.chdir(plan["cwd"])
for target, options in plan["overlays"]:
    done = libc.mount(b"sandlot", target.encode(), b"overlay", 0, options.encode())
    check(done, "overlay " + target)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def command(
    python: str,
    ns_fd: int,
    idmaps: Sequence[tuple[Path, Path]],
    cwd: Path,
    overlays: Sequence[tuple[Path, str]],
) -> list[str]:
    """The argv (before bwrap's) that clones each ``(folder, mount point)`` of ``idmaps`` as
    an idmapped mount through the user namespace ``ns_fd``, then mounts each ``(target,
    options)`` overlay from ``cwd`` (options name the clones by relative paths)."""
    plan = {
        "ns": ns_fd,
        "idmaps": [[str(a), str(b)] for a, b in idmaps],
        "cwd": str(cwd),
        "overlays": [[str(t), o] for t, o in overlays],
    }
    return [python, "-I", "-S", "-c", SCRIPT, json.dumps(plan)]


def supported() -> bool:
    """Whether this kernel has idmapped mounts (Linux 5.12; overlayfs over them: 5.19)."""
    release = os.uname().release.split(".")
    try:
        return (int(release[0]), int(release[1].split("-")[0])) >= (5, 19)
    except (ValueError, IndexError):
        return False
