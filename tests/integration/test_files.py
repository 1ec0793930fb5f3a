"""Files: read, write, list, stat, exists, make_dir, remove, rename, through the real agent."""

from __future__ import annotations

import hashlib
import os

import pytest

import sandlot
from sandlot.errors import (
    DirectoryNotEmptyError,
    FileExistsInSandboxError,
    IsADirectoryInSandboxError,
)

from .helpers import sandbox_folder


def test_write_and_read_text(sb: sandlot.Sandbox) -> None:
    text = "hello\nünïcødé ✓ 😀\n"
    entry = sb.files.write("/workspace/a.txt", text)
    assert entry.type == "file"
    assert entry.size == len(text.encode())
    assert entry.path == "/workspace/a.txt"
    assert entry.name == "a.txt"
    assert sb.files.read("/workspace/a.txt") == text
    assert sb.files.read("/workspace/a.txt", format="bytes") == text.encode()
    # Commands see the same file, and the other way round.
    assert sb.commands.run("cat /workspace/a.txt").stdout == text
    sb.commands.run("printf 'from a command' > /workspace/b.txt")
    assert sb.files.read("/workspace/b.txt") == "from a command"


def test_write_and_read_every_byte_value(sb: sandlot.Sandbox) -> None:
    data = bytes(range(256)) * 3
    sb.files.write("/workspace/bin.dat", data)
    assert sb.files.read("/workspace/bin.dat", format="bytes") == data
    assert sb.commands.run("sha256sum /workspace/bin.dat").stdout.split()[0] == (
        hashlib.sha256(data).hexdigest()
    )
    # As text, undecodable bytes are replaced rather than raising.
    text = sb.files.read("/workspace/bin.dat")
    assert "\ufffd" in text
    assert text.startswith("".join(chr(i) for i in range(128)))


def test_write_empty_and_overwrite(sb: sandlot.Sandbox) -> None:
    assert sb.files.write("/workspace/e", b"").size == 0
    assert sb.files.read("/workspace/e", format="bytes") == b""
    sb.files.write("/workspace/e", "a much longer content")
    sb.files.write("/workspace/e", "short")
    assert sb.files.read("/workspace/e") == "short"


def test_write_creates_parents_and_tmp_works(sb: sandlot.Sandbox) -> None:
    sb.files.write("/workspace/deep/er/file.txt", "x")
    assert sb.files.stat("/workspace/deep/er").type == "dir"
    sb.files.write("/tmp/t.txt", "in tmp")
    assert sb.commands.run("cat /tmp/t.txt").stdout == "in tmp"


def test_write_lands_in_the_host_workspace_folder(sb: sandlot.Sandbox) -> None:
    sb.files.write("/workspace/host-visible.txt", "ok")
    assert (sandbox_folder(sb.id) / "workspace" / "host-visible.txt").read_text() == "ok"


def test_list(sb: sandlot.Sandbox) -> None:
    assert sb.files.list("/workspace") == []
    sb.files.write("/workspace/b.txt", "bb")
    sb.files.write("/workspace/a.txt", "a")
    sb.files.make_dir("/workspace/c")
    sb.files.write("/workspace/c/inner.txt", "inner")
    entries = sb.files.list("/workspace")
    assert [e.name for e in entries] == ["a.txt", "b.txt", "c"]
    assert [e.type for e in entries] == ["file", "file", "dir"]
    assert [e.path for e in entries] == ["/workspace/a.txt", "/workspace/b.txt", "/workspace/c"]
    assert entries[1].size == 2
    deep = sb.files.list("/workspace", depth=2)
    assert "/workspace/c/inner.txt" in [e.path for e in deep]
    assert len(deep) == 4
    with pytest.raises(sandlot.FileNotFoundInSandboxError):
        sb.files.list("/workspace/missing")


def test_stat(sb: sandlot.Sandbox) -> None:
    entry = sb.files.write("/workspace/s.txt", "12345", mode=0o600)
    assert entry.mode & 0o777 == 0o600
    st = sb.files.stat("/workspace/s.txt")
    assert (st.type, st.size, st.mode & 0o777) == ("file", 5, 0o600)
    assert st.mtime > 0
    sb.commands.run("chmod 751 /workspace/s.txt")
    assert sb.files.stat("/workspace/s.txt").mode & 0o777 == 0o751
    folder = sb.files.stat("/workspace")
    assert folder.type == "dir"
    sb.commands.run("ln -s /workspace/s.txt /workspace/link")
    link = sb.files.stat("/workspace/link")
    assert (link.type, link.symlink_target) == ("symlink", "/workspace/s.txt")
    with pytest.raises(sandlot.FileNotFoundInSandboxError):
        sb.files.stat("/workspace/nope")


def test_exists(sb: sandlot.Sandbox) -> None:
    assert sb.files.exists("/workspace") is True
    assert sb.files.exists("/usr/bin/python3") is True
    assert sb.files.exists("/workspace/nope") is False
    assert sb.files.exists("/workspace/nope/deeper") is False
    sb.files.write("/workspace/yes", "")
    assert sb.files.exists("/workspace/yes") is True


def test_make_dir(sb: sandlot.Sandbox) -> None:
    assert sb.files.make_dir("/workspace/d") is True
    assert sb.files.make_dir("/workspace/d") is False  # exist_ok by default
    assert sb.files.make_dir("/workspace/p/q/r") is True  # parents by default
    assert sb.files.stat("/workspace/p/q/r").type == "dir"
    with pytest.raises(FileExistsInSandboxError):
        sb.files.make_dir("/workspace/d", exist_ok=False)
    with pytest.raises(sandlot.FileNotFoundInSandboxError):
        sb.files.make_dir("/workspace/x/y", parents=False)
    sb.files.write("/workspace/f", "")
    with pytest.raises(sandlot.FileError):
        sb.files.make_dir("/workspace/f")  # a file is in the way
    with pytest.raises(sandlot.PermissionDeniedError):
        sb.files.make_dir("/usr/newdir")


def test_remove_file_and_folder(sb: sandlot.Sandbox) -> None:
    sb.files.write("/workspace/f.txt", "x")
    sb.files.remove("/workspace/f.txt")
    assert sb.files.exists("/workspace/f.txt") is False
    sb.files.write("/workspace/tree/a/b.txt", "x")
    sb.files.write("/workspace/tree/c.txt", "x")
    with pytest.raises(DirectoryNotEmptyError):
        sb.files.remove("/workspace/tree", recursive=False)
    assert sb.files.exists("/workspace/tree/c.txt")
    sb.files.remove("/workspace/tree")
    assert sb.files.exists("/workspace/tree") is False
    sb.files.make_dir("/workspace/empty")
    sb.files.remove("/workspace/empty", recursive=False)
    assert sb.files.exists("/workspace/empty") is False
    with pytest.raises(sandlot.FileNotFoundInSandboxError):
        sb.files.remove("/workspace/f.txt")
    with pytest.raises(sandlot.PermissionDeniedError):
        sb.files.remove("/usr/bin/python3")
    assert sb.files.exists("/usr/bin/python3")


def test_remove_does_not_follow_symlinks(sb: sandlot.Sandbox) -> None:
    sb.files.write("/workspace/keep/precious.txt", "keep me")
    sb.commands.run("ln -s /workspace/keep /workspace/link")
    sb.files.remove("/workspace/link")
    assert sb.files.read("/workspace/keep/precious.txt") == "keep me"


def test_rename(sb: sandlot.Sandbox) -> None:
    sb.files.write("/workspace/src.txt", "payload")
    entry = sb.files.rename("/workspace/src.txt", "/workspace/dst.txt")
    assert (entry.path, entry.type, entry.size) == ("/workspace/dst.txt", "file", 7)
    assert sb.files.exists("/workspace/src.txt") is False
    assert sb.files.read("/workspace/dst.txt") == "payload"
    # Folders move too.
    sb.files.write("/workspace/dir/x", "x")
    sb.files.rename("/workspace/dir", "/workspace/moved")
    assert sb.files.read("/workspace/moved/x") == "x"


def test_rename_refuses_to_overwrite_unless_asked(sb: sandlot.Sandbox) -> None:
    sb.files.write("/workspace/a", "A")
    sb.files.write("/workspace/b", "B")
    with pytest.raises(FileExistsInSandboxError):
        sb.files.rename("/workspace/a", "/workspace/b")
    assert sb.files.read("/workspace/a") == "A"
    assert sb.files.read("/workspace/b") == "B"
    sb.files.rename("/workspace/a", "/workspace/b", overwrite=True)
    assert sb.files.exists("/workspace/a") is False
    assert sb.files.read("/workspace/b") == "A"
    with pytest.raises(sandlot.FileNotFoundInSandboxError):
        sb.files.rename("/workspace/missing", "/workspace/c")


@pytest.mark.timeout(120)
def test_large_file_round_trip(sb: sandlot.Sandbox) -> None:
    data = os.urandom(50 << 20)
    entry = sb.files.write("/workspace/big.bin", data)
    assert entry.size == len(data)
    digest = sb.commands.run("sha256sum /workspace/big.bin").stdout.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    assert sb.files.read("/workspace/big.bin", format="bytes") == data


def test_read_missing_file(sb: sandlot.Sandbox) -> None:
    with pytest.raises(sandlot.FileNotFoundInSandboxError) as caught:
        sb.files.read("/workspace/missing.txt")
    assert isinstance(caught.value, FileNotFoundError)
    assert isinstance(caught.value, sandlot.FileError)
    assert caught.value.code == "file_not_found"
    assert "missing.txt" in str(caught.value)
    # The builtin works for callers who know nothing about sandlot.
    with pytest.raises(FileNotFoundError):
        sb.files.read("/workspace/missing.txt", format="bytes")


def test_read_a_folder(sb: sandlot.Sandbox) -> None:
    with pytest.raises(IsADirectoryInSandboxError):
        sb.files.read("/workspace")


@pytest.mark.parametrize("path", ["/usr/x", "/etc/x", "/x", "/bin/x"])
def test_write_outside_the_writable_folders(sb: sandlot.Sandbox, path: str) -> None:
    with pytest.raises(sandlot.PermissionDeniedError) as caught:
        sb.files.write(path, "nope")
    assert isinstance(caught.value, PermissionError)
    assert caught.value.code == "permission_denied"
    assert sb.files.exists(path) is False
    assert sb.commands.run("echo ok").stdout == "ok\n"


def test_files_are_owned_by_the_sandbox_user(sb: sandlot.Sandbox) -> None:
    sb.files.write("/workspace/mine", "x")
    r = sb.commands.run("stat -c '%u %g' /workspace/mine && echo more >> /workspace/mine")
    assert r.stdout == sb.commands.run("echo $(id -u) $(id -g)").stdout  # the sandbox user's
    assert sb.files.read("/workspace/mine") == "xmore\n"


def test_odd_file_names_round_trip(sb: sandlot.Sandbox) -> None:
    """Names that are not UTF-8 come back surrogate-escaped (as ``os.listdir`` does) and
    can be used again; newlines and spaces in names are kept."""
    sb.commands.run("touch \"$(printf '/workspace/bad\\xff')\" '/workspace/with space'")
    sb.files.write("/workspace/new\nline", "n")
    names = [e.name for e in sb.files.list("/workspace")]
    assert names == ["bad\udcff", "new\nline", "with space"]
    assert sb.files.stat("/workspace/bad\udcff").type == "file"
    assert sb.files.read("/workspace/new\nline") == "n"
    sb.files.remove("/workspace/bad\udcff")
    assert [e.name for e in sb.files.list("/workspace")] == ["new\nline", "with space"]
    assert sb.commands.run("ls -b /workspace").stdout == "new\\nline\nwith\\ space\n"
