"""What a sandbox (or whoever can write the bucket) must not be able to do through a
checkpoint or a restore: read host files into the store, write outside the workspace, or
get tampered content restored."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sandlot.errors import ProtocolError
from sandlot.workspace import WorkspaceStore, open_store
from sandlot.workspace import checkpoint as cp

from .helpers import SID, build_tree, same_tree

SECRET = b"HOST-SECRET-7f3a9c-do-not-store\n"


def _all_stored_bytes(store: WorkspaceStore, tmp_path: Path) -> bytes:
    """Every blob's content, concatenated (through the store's own fetch)."""
    out = tmp_path / "all-blobs"
    with open(out, "wb") as f:
        for digest, _ in store.list_blobs():
            # Sizes are not known here: fetch with a generous cap (then the size check fails).
            tmp = tmp_path / "one-blob"
            with open(tmp, "wb") as g:
                try:
                    store.fetch_blob(digest, 1 << 30, g.fileno())
                except ProtocolError:
                    pass  # size check: the cap is not the real size
            f.write(tmp.read_bytes())
    return out.read_bytes()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    host.mkdir()
    (host / "shadow").write_bytes(SECRET)
    (host / "data.txt").write_bytes(SECRET)
    return host


async def test_symlinks_are_stored_as_symlinks(
    store: WorkspaceStore, tmp_path: Path, secret: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    os.symlink(secret / "shadow", ws / "shadow")
    os.symlink(secret, ws / "dir")
    info = await store.checkpoint(SID, ws, None)
    assert info.files == 0
    manifest = await store.latest(SID)
    assert manifest is not None
    assert {k: v.type for k, v in manifest.entries.items()} == {
        "shadow": "symlink",
        "dir": "symlink",
    }
    assert SECRET not in _all_stored_bytes(store, tmp_path)


async def test_swap_after_scan_is_not_followed(
    store: WorkspaceStore, tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox swaps a file, and a folder, for symlinks between our scan and our read."""
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "shadow").write_bytes(b"x" * len(SECRET))
    (ws / "sub" / "data.txt").write_bytes(b"y" * len(SECRET))
    (ws / "kept.txt").write_text("kept")
    real_scan = cp.scan

    def scan_then_swap(root_fd: int, index: cp.Index | None) -> cp.Scan:
        found = real_scan(root_fd, index)
        os.unlink(ws / "shadow")
        os.symlink(secret / "shadow", ws / "shadow")
        shutil.rmtree(ws / "sub")
        os.symlink(secret, ws / "sub")
        return found

    monkeypatch.setattr(cp, "scan", scan_then_swap)
    info = await store.checkpoint(SID, ws, None)
    manifest = await store.latest(SID)
    assert manifest is not None
    assert "shadow" not in manifest.entries and "sub/data.txt" not in manifest.entries
    assert manifest.entries["kept.txt"].type == "file"
    assert info.skipped == 2
    assert SECRET not in _all_stored_bytes(store, tmp_path)


def test_racing_swaps_never_store_the_secret(tmp_path: Path, secret: Path) -> None:
    """A thread swaps a file for a symlink to a host secret and back as fast as it can while
    checkpoints run (local store: the race is in reading the workspace, not the store)."""
    store = open_store("local", tmp_path / "home")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f").write_bytes(b"z" * len(SECRET))
    stop = threading.Event()

    def swapper() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            tmp = ws / f".t{i}"
            if i % 2:
                os.symlink(secret / "shadow", tmp)
            else:
                tmp.write_bytes(b"z" * len(SECRET))
            os.replace(tmp, ws / "f")

    t = threading.Thread(target=swapper)
    t.start()
    try:
        for _ in range(40):
            store.checkpoint_sync(SID, ws, tmp_path / "index")
    finally:
        stop.set()
        t.join()
    for digest, _ in store.list_blobs():
        assert SECRET not in (tmp_path / "home/workspaces/blobs" / digest[:2] / digest).read_bytes()


def _put_manifest(store: WorkspaceStore, number: int, entries: dict[str, dict]) -> None:
    data = json.dumps(
        {
            "format": 1,
            "session_id": SID,
            "number": number,
            "created_at": "2026-11-22T00:00:00Z",
            "entries": entries,
        }
    ).encode()
    store.write_manifest(SID, number, gzip.compress(data) if store.compress else data)


@pytest.mark.parametrize(
    "path",
    ["../escaped", "/tmp/escaped", "a/../../escaped", "a//b", "./a", "a/./b", "a\x00b", ""],
)
async def test_tampered_manifest_paths_are_refused(
    store: WorkspaceStore, tmp_path: Path, path: str
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a").mkdir()
    (ws / "a" / "f").write_text("content")
    await store.checkpoint(SID, ws, None)
    manifest = await store.latest(SID)
    assert manifest is not None
    entries = {k: v.model_dump(exclude_none=True) for k, v in manifest.entries.items()}
    entries[path] = entries["a/f"]
    _put_manifest(store, 2, entries)
    dst = tmp_path / "dst" / "inner"
    dst.mkdir(parents=True)
    with pytest.raises(ProtocolError, match="tampered"):
        await store.restore(SID, dst, None)
    assert list(dst.iterdir()) == []
    assert not (tmp_path / "dst" / "escaped").exists()


async def test_manifest_with_an_orphan_path_is_refused(
    store: WorkspaceStore, tmp_path: Path
) -> None:
    """A file under a symlink entry (or a missing folder) would be created through it."""
    _put_manifest(
        store,
        1,
        {
            "out": {"type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": "/tmp"},
            "out/x": {
                "type": "file",
                "mode": 0o644,
                "mtime_ns": 0,
                "size": 0,
                "hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            },
        },
    )
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(ProtocolError):
        await store.restore(SID, dst, None)


async def test_tampered_blob_is_refused(store: WorkspaceStore, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f").write_text("original content")
    (ws / "g").write_text("other")
    await store.checkpoint(SID, ws, None)
    manifest = await store.latest(SID)
    assert manifest is not None
    digest = manifest.entries["f"].hash
    assert digest is not None
    evil = b"evil content!!!!"  # the same size
    if hasattr(store, "client"):
        store.client.put_object(  # type: ignore[attr-defined]
            Bucket=store.bucket,
            Key=store._blob_key(digest),
            Body=evil,  # type: ignore[attr-defined]
        )
    else:
        # The local store's folder is the host's own (0700): by default a restore checks
        # sizes only; with verify=True it hashes every blob again, as the S3 store does.
        store.verify = True  # type: ignore[attr-defined]
        blob = store._blob(digest)  # type: ignore[attr-defined]
        os.chmod(blob, 0o644)
        blob.write_bytes(evil)
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(ProtocolError, match="does not match"):
        await store.restore(SID, dst, None)
    assert not (dst / "f").exists()


async def test_restore_does_not_write_through_planted_symlinks(
    store: WorkspaceStore, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x").write_text("inside")
    (src / "y").write_text("inside too")
    await store.checkpoint(SID, src, None)
    outside = tmp_path / "outside"
    outside.mkdir()
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(outside, dst / "d")  # the sandbox plants symlinks where folders/files go
    os.symlink(outside / "y", dst / "y")
    await store.restore(SID, dst, None)
    assert list(outside.iterdir()) == []
    assert (dst / "d").is_dir() and not (dst / "d").is_symlink()
    assert (dst / "d" / "x").read_text() == "inside"
    assert not (dst / "y").is_symlink() and (dst / "y").read_text() == "inside too"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
async def test_restore_gives_entries_to_the_folder_owner(
    store: WorkspaceStore, tmp_path: Path
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_tree(src, big=1024)
    os.unlink(src / "fifo")
    await store.checkpoint(SID, src, None)
    dst.mkdir()
    os.chown(dst, 1000, 1000)
    await store.restore(SID, dst, None)
    for p in [*dst.rglob("*")]:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (1000, 1000), p
    assert os.stat(dst / "a" / "run.sh").st_mode & 0o777 == 0o755


async def test_local_store_refuses_a_blob_of_the_wrong_size(tmp_path: Path) -> None:
    store = open_store("local", tmp_path / "home")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f").write_text("original content")
    await store.checkpoint(SID, ws, None)
    manifest = await store.latest(SID)
    assert manifest is not None and manifest.entries["f"].hash is not None
    store._blob(manifest.entries["f"].hash).write_bytes(b"longer than the original")  # type: ignore[attr-defined]
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(ProtocolError, match="size"):
        await store.restore(SID, dst, None)
    assert not (dst / "f").exists()


# -- a workspace's .git is data to the host -----------------------------------------------------

# githooks(5), and the ones other porcelains (git-p4, send-email, fsmonitor) call.
GIT_HOOKS = (  # noqa: SIM905 (a list of words reads better as words)
    "applypatch-msg pre-applypatch post-applypatch pre-commit pre-merge-commit "
    "prepare-commit-msg commit-msg post-commit pre-rebase post-checkout post-merge pre-push "
    "pre-receive update proc-receive post-receive post-update reference-transaction "
    "push-to-checkout pre-auto-gc post-rewrite sendemail-validate fsmonitor-watchman "
    "p4-changelist p4-prepare-changelist p4-post-changelist p4-pre-submit post-index-change"
).split()
# Process-starting events of the host's own Python (sys.audit): none may fire while the host
# checkpoints or restores a workspace.
_EXEC_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork"}
)
# The one program the host may start meanwhile: the local store's syncfs looks libc up with
# ctypes.util.find_library, which runs the system's ldconfig (a fixed path, nothing from the
# workspace).
_ALLOWED_PROGRAMS = frozenset({"/sbin/ldconfig"})
_watching = threading.Event()
_started: list[tuple[str, str]] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _watching.is_set() and event in _EXEC_EVENTS:
        program = str(args[0]) if args else ""
        if program not in _ALLOWED_PROGRAMS:
            _started.append((event, repr(args)[:200]))


_audit_added = False


def _plant_git_traps(ws: Path, markers: Path) -> None:
    """A repository whose every hook and every program-running setting leaves a marker file
    in ``markers`` (a host folder) if anything runs it."""

    def trap(name: str) -> str:
        return f"sh -c 'echo {name} >> {markers}/ran' #"

    git = ws / ".git"
    for folder in ("hooks", "evil-hooks", "objects/info", "refs/heads", "info"):
        (git / folder).mkdir(parents=True, exist_ok=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    for hooks in (git / "hooks", git / "evil-hooks"):
        for name in GIT_HOOKS:
            (hooks / name).write_text(f"#!/bin/sh\necho hook {name} >> {markers}/ran\n")
            os.chmod(hooks / name, 0o755)
    (git / "config").write_text(
        "[core]\n"
        "\trepositoryformatversion = 0\n"
        "\tbare = false\n"
        f"\tfsmonitor = {trap('fsmonitor')}\n"
        f"\thooksPath = {git / 'evil-hooks'}\n"
        f"\tsshCommand = {trap('sshCommand')}\n"
        f"\tpager = {trap('pager')}\n"
        f"\teditor = {trap('editor')}\n"
        f"\taskPass = {trap('askPass')}\n"
        f"\tgitProxy = {trap('gitProxy')}\n"
        '[filter "evil"]\n'
        f"\tclean = {trap('clean')}\n"
        f"\tsmudge = {trap('smudge')}\n"
        f"\tprocess = {trap('process')}\n"
        "\trequired = true\n"
        '[diff "evil"]\n'
        f"\ttextconv = {trap('textconv')}\n"
        "[diff]\n"
        f"\texternal = {trap('diff.external')}\n"
        "[alias]\n"
        f"\tstatus = !{trap('alias')}\n"
        "[credential]\n"
        f"\thelper = !{trap('credential')}\n"
        "[gpg]\n"
        f"\tprogram = {trap('gpg')}\n"
        "[include]\n"
        "\tpath = ../evil.gitconfig\n"
    )
    (ws / "evil.gitconfig").write_text(f"[core]\n\tfsmonitor = {trap('included')}\n")
    (ws / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (ws / "tracked.txt").write_text("a file git would clean, smudge and diff\n")
    (git / "index").write_bytes(b"DIRC\x00\x00\x00\x02\x00\x00\x00\x00" + b"\x00" * 20)


async def test_git_hooks_and_config_never_run_on_the_host(
    store: WorkspaceStore, tmp_path: Path
) -> None:
    """Issue 15, hole 8: a sandbox fills /workspace/.git with hooks (every name, executable)
    and a config whose fsmonitor, hooksPath, sshCommand, filters, diff.external, aliases and
    includes each run a program, plus a symlink out of the workspace. A checkpoint and a
    restore (into an empty folder, and over a repository already there) start no process on
    the host at all (audited), leave no marker, never follow the symlink, and give back the
    same bytes, modes and links: data. A control shows the trap is armed: the host's own
    ``git status`` in the restored folder does run it (running git there is the user's
    call)."""
    global _audit_added
    if not _audit_added:  # a hook cannot be removed: one for the whole run, idle unless watching
        sys.addaudithook(_audit)
        _audit_added = True
    markers = tmp_path / "markers"
    markers.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "host.txt").write_bytes(SECRET)
    ws = tmp_path / "ws"
    _plant_git_traps(ws, markers)
    os.symlink(outside, ws / ".git" / "objects" / "info" / "alternates-dir")
    os.symlink(outside / "host.txt", ws / ".git" / "description")

    dst, over = tmp_path / "dst", tmp_path / "over"
    dst.mkdir()
    _plant_git_traps(over, markers)  # a restore over a repository the sandbox left behind
    (over / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\necho stale\n")
    _watching.set()
    subprocess.run(["/bin/true"], check=True)  # the audit sees a process start...
    assert _started and _started[0][0] == "subprocess.Popen"
    _started.clear()
    try:  # ...and none while the host checkpoints and restores
        await store.checkpoint(SID, ws, tmp_path / "index")
        await store.restore(SID, dst, tmp_path / "dst.index")
        await store.restore(SID, over, None)
    finally:
        _watching.clear()
    assert _started == [], f"the host started a process: {_started}"
    assert list(markers.iterdir()) == []
    assert list(outside.iterdir()) == [outside / "host.txt"]
    assert SECRET not in _all_stored_bytes(store, tmp_path)
    same_tree(ws, dst)
    same_tree(ws, over)
    assert os.readlink(dst / ".git" / "description") == str(outside / "host.txt")

    git = shutil.which("git")
    if git is None:
        return
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(tmp_path), "LANG": "C"}
    subprocess.run([git, "status"], cwd=dst, env=env, capture_output=True, timeout=30)
    ran = (markers / "ran").read_text() if (markers / "ran").exists() else ""
    assert ran, "control: host git in the folder should hit the trap"  # fsmonitor, hooks
