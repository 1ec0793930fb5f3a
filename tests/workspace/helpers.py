"""Building and comparing workspace trees for the store tests."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

SID = "ses-0123456789ab"
SID2 = "ses-ba9876543210"


def build_tree(root: Path, big: int = 9 << 20) -> None:
    """Files, nested and empty folders, symlinks (one dangling, one absolute), modes,
    unicode names, an empty file, a big file (over the S3 store's in-memory staging size),
    a fifo (skipped), and explicit old mtimes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "private").mkdir(mode=0o700)
    (root / "hello.txt").write_text("hello\n")
    (root / "a" / "b" / "c" / "deep.txt").write_text("deep\n" * 100)
    (root / "a" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "a" / "run.sh", 0o755)
    (root / "private" / "key").write_text("not a secret")
    os.chmod(root / "private" / "key", 0o600)
    (root / "readonly").write_text("ro")
    os.chmod(root / "readonly", 0o444)
    (root / "zero").write_bytes(b"")
    (root / "ünïcødé 文件 name.txt").write_text("ü\n")
    (root / "same1").write_text("duplicate content")
    (root / "a" / "same2").write_text("duplicate content")
    with open(root / "big.bin", "wb") as f:
        f.write(os.urandom(big))
    os.symlink("hello.txt", root / "link")
    os.symlink("does/not/exist", root / "a" / "dangling")
    os.symlink("/etc/hostname", root / "absolute")
    os.mkfifo(root / "fifo")
    for i, p in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        t = 1_600_000_000_000_000_000 + i * 1_000_000_123
        os.utime(p, ns=(t, t), follow_symlinks=False)


def tree(root: Path) -> dict[str, Any]:
    """Everything restore promises to reproduce, by relative path (fifos etc. excluded)."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", mode, st.st_mtime_ns, st.st_size, digest)
    return out


def same_tree(a: Path, b: Path) -> None:
    ta, tb = tree(a), tree(b)
    assert ta.keys() == tb.keys(), (sorted(ta.keys() - tb.keys()), sorted(tb.keys() - ta.keys()))
    for rel in ta:
        assert ta[rel] == tb[rel], rel
