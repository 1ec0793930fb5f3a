"""The seccomp filter of every bwrap sandbox: the kernel's attack surface, cut down.

In the spirit of Docker's default profile and of the filters of OpenAI Codex's Linux sandbox
and Anthropic's sandbox-runtime, but written as a deny list so that real workloads (pip, git,
compilers, Node, threads, multiprocessing) keep every call they make. A denied call fails
with ``EPERM`` (``ENOSYS`` for ``clone3``, so libc falls back to ``clone``, whose flags a
filter can read; ``EAFNOSUPPORT`` for socket families), never kills, so programs that probe
for a feature carry on without it. Denied:

- keyrings (``add_key``, ``keyctl``, ``request_key``): not namespaced enough to share;
- reaching other processes (``ptrace``, ``process_vm_*``, ``pidfd_getfd``, ``kcmp``): with
  the agent non-dumpable this is the second wall between commands and the agent;
- the kernel itself (modules, ``kexec``, ``bpf``, ``perf_event_open``, ``userfaultfd``,
  ``io_uring_*``, ``open_by_handle_at``, clock and swap and reboot calls, ``syslog``, ...);
- new namespaces (``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*`` flag) and mounts
  (the whole mount family, ``pivot_root``, ``chroot``);
- personality flags that weaken the address space (no ASLR, executable reads, page zero);
- ``TIOCSTI``/``TIOCLINUX`` (typing into a terminal), and socket families other than Unix,
  IPv4, IPv6 and netlink (``AF_VSOCK`` is not namespaced: it reaches a VM's host).

Other architectures' calls (i386, x32) are refused: their numbers differ, so a filter for
one does not cover the others.

libseccomp builds the BPF program (architecture checks, syscall numbers), through
``pyseccomp``, its Python API over ctypes (no compiler at install). The program is built once
per process; each bwrap reads it from a fresh memory file (``--seccomp FD``).
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile

from ..errors import ProviderUnavailableError

DENIED = (
    # keyrings
    "add_key", "keyctl", "request_key",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    # the kernel
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "bpf", "perf_event_open", "userfaultfd", "lookup_dcookie",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init",
    "acct", "swapon", "swapoff", "reboot", "syslog", "vhangup", "uselib", "ustat",
    "sysfs", "_sysctl", "nfsservctl", "iopl", "ioperm", "quotactl", "quotactl_fd",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    # namespaces and mounts
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
)  # fmt: skip
CLONE_NEW = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
# ADDR_NO_RANDOMIZE, MMAP_PAGE_ZERO, READ_IMPLIES_EXEC
PERSONALITY_DENIED = (0x0040000, 0x0100000, 0x0400000)
TERMINAL_IOCTLS = (0x5412, 0x541C)  # TIOCSTI, TIOCLINUX
SOCKET_FAMILIES = frozenset({1, 2, 10, 16})  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
AF_MAX = 64


@functools.cache
def program() -> bytes:
    """The filter as a BPF program for this machine's architecture."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:
        raise ProviderUnavailableError(
            f"bwrap needs libseccomp for its seccomp filter ({exc}); Debian/Ubuntu: "
            "apt-get install libseccomp2"
        ) from None
    deny = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    # A binary tree of system call numbers: every call of the sandbox runs the filter, and
    # a list would make each walk past every rule (~180 instructions) to be allowed.
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    for name in DENIED:
        _add(f, deny, name)
    for flag in CLONE_NEW.values():
        _add(f, deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    _add(f, sc.ERRNO(errno.ENOSYS), "clone3")
    for bit in PERSONALITY_DENIED:
        _add(f, deny, "personality", sc.Arg(0, sc.MASKED_EQ, bit, bit))
    for request in TERMINAL_IOCTLS:
        _add(f, deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    no_family = sc.ERRNO(errno.EAFNOSUPPORT)
    for call in ("socket", "socketpair"):
        for family in range(AF_MAX):
            if family not in SOCKET_FAMILIES:
                _add(f, no_family, call, sc.Arg(0, sc.EQ, family))
        _add(f, no_family, call, sc.Arg(0, sc.GE, AF_MAX))
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def _add(f: object, action: int, name: str, *args: object) -> None:
    try:
        f.add_rule(action, name, *args)  # type: ignore[attr-defined]
    except (RuntimeError, ValueError, OSError) as exc:
        # A call this libseccomp does not know on this architecture (say, ``_sysctl`` on
        # arm64) cannot be made here either; anything else is a bug in the list.
        if "resolve" not in str(exc).lower() and not _unknown(name):
            raise


def _unknown(name: str) -> bool:
    import pyseccomp as sc

    try:
        return int(sc.resolve_syscall(sc.system_arch(), name)) < 0
    except Exception:
        return True


def memfd() -> int:
    """A fresh, readable descriptor holding the program, positioned at its start (bwrap
    reads it to the end, so each sandbox needs its own)."""
    code = program()
    fd = os.memfd_create("sandlot-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, code)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd
