"""What a sandbox (or whoever can write the bucket) must not be able to do through a
checkpoint or a restore: read host files into the store, write outside the workspace, or
get tampered content restored."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from sandlot.errors import ProtocolError
from sandlot.workspace import WorkspaceStore, open_store
from sandlot.workspace import checkpoint as cp

from .helpers import SID, build_tree

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
