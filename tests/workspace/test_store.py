"""Workspace checkpoints through the local store and a real S3 server (SeaweedFS): round
trips, incremental checkpoints (counted requests), crash safety, deletion and gc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from s3 import SeaweedFS

from sandlot.errors import InvalidArgumentError, SandlotError
from sandlot.workspace import WorkspaceStore, check_store_url, open_store
from sandlot.workspace import checkpoint as cp

from .helpers import SID, SID2, build_tree, same_tree, tree

REPO = Path(__file__).resolve().parents[2]


def test_store_urls() -> None:
    assert check_store_url("local") == "local"
    assert check_store_url("s3://bucket") == "s3://bucket"
    assert check_store_url("s3://my.bucket-1/a/b/") == "s3://my.bucket-1/a/b"
    for bad in (
        "",
        "file:///x",
        "s3://",
        "s3://B",
        "s3://ab",
        "s3://bucket/a/../b",
        "s3://bucket/a//b",
        "s3://bucket/a b",
        "http://x",
        "/tmp/x",
    ):
        with pytest.raises(InvalidArgumentError):
            check_store_url(bad)


async def test_session_ids_are_checked(tmp_path: Path) -> None:
    store = open_store("local", tmp_path)
    (tmp_path / "ws").mkdir()
    for bad in ("../x", "a/b", "", ".", "-x", "x" * 100, "a\x00b"):
        with pytest.raises(InvalidArgumentError):
            await store.checkpoint(bad, tmp_path / "ws", None)
        with pytest.raises(InvalidArgumentError):
            await store.restore(bad, tmp_path / "ws", None)
    with pytest.raises(InvalidArgumentError):
        await store.checkpoint(SID, tmp_path / "missing", None)


async def test_round_trip(store: WorkspaceStore, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_tree(src)
    dst.mkdir()
    assert await store.restore(SID, dst, None) is None
    assert await store.latest(SID) is None

    info = await store.checkpoint(SID, src, tmp_path / "src.index")
    assert info.number == 1
    assert info.files == 10 and info.skipped == 1  # the fifo
    assert info.changed == 10
    assert info.uploaded_blobs == 9  # two files share their content
    assert info.bytes == sum(
        e.size
        for e in (await store.latest(SID)).entries.values()  # type: ignore[union-attr]
    )

    got = await store.restore(SID, dst, tmp_path / "dst.index")
    assert got is not None and got.number == 1 and got.files == 10
    assert got.fetched_bytes == info.bytes
    same_tree(src, dst)
    assert not (dst / "fifo").exists()

    # Restore replaces: extra entries go, changed ones come back, unchanged are not fetched.
    (dst / "extra.txt").write_text("x")
    (dst / "a" / "b" / "more").mkdir()
    (dst / "hello.txt").write_text("HELLO\n")
    os.unlink(dst / "link")
    (dst / "link").write_text("now a file")
    os.rename(dst / "empty", dst / "moved")
    again = await store.restore(SID, dst, tmp_path / "dst.index")
    assert again is not None
    same_tree(src, dst)
    assert again.fetched_blobs == 1  # hello.txt; the rest was in place
    assert again.fetched_bytes == len("hello\n")


async def test_incremental(store: WorkspaceStore, tmp_path: Path) -> None:
    src, index = tmp_path / "src", tmp_path / "src.index"
    build_tree(src, big=1 << 20)
    first = await store.checkpoint(SID, src, index)
    requests = getattr(store, "requests", None)
    if requests is not None:
        requests.clear()

    (src / "a" / "b" / "c" / "deep.txt").write_text("changed\n")
    second = await store.checkpoint(SID, src, index)
    assert second.number == first.number + 1
    assert (second.changed, second.uploaded_blobs, second.uploaded_bytes) == (1, 1, 8)
    if requests is not None:
        assert requests["PutObject"] == 2  # the one blob, the manifest
        assert requests["HeadObject"] == 1  # the new hash: not stored yet
        assert requests["GetObject"] == 0  # the previous manifest was cached

    # Nothing changed: no blob request at all.
    if requests is not None:
        requests.clear()
    third = await store.checkpoint(SID, src, index)
    assert (third.changed, third.uploaded_blobs) == (0, 0)
    if requests is not None:
        assert requests["PutObject"] == 1 and requests["HeadObject"] == 0

    # Same size, forged mtime: ctime and the inode still tell.
    p = src / "hello.txt"
    st = p.stat()
    p.write_text("HELLO\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    fourth = await store.checkpoint(SID, src, index)
    assert fourth.changed == 1
    dst = tmp_path / "dst"
    dst.mkdir()
    await store.restore(SID, dst, None)
    assert (dst / "hello.txt").read_text() == "HELLO\n"

    # Only the last three manifests are kept.
    assert sorted(store.manifest_names(SID)) == [2, 3, 4]


async def test_first_checkpoint_after_restore_reads_nothing(
    store: WorkspaceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_tree(src, big=1 << 20)
    dst.mkdir()
    await store.checkpoint(SID, src, tmp_path / "src.index")
    await store.restore(SID, dst, tmp_path / "dst.index")
    reads: list[int] = []
    real = cp._stage
    monkeypatch.setattr(cp, "_stage", lambda fd, st: reads.append(fd) or real(fd, st))
    info = await store.checkpoint(SID, dst, tmp_path / "dst.index")
    assert (info.changed, info.uploaded_blobs, reads) == (0, 0, [])


CRASH = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from sandlot.workspace import open_store
    url, home, folder, index = sys.argv[1:5]
    store = open_store(url, Path(home))
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    store.write_manifest = die
    store.checkpoint_sync("SID", Path(folder), Path(index))
    """
).replace("SID", SID)


async def test_crash_between_blobs_and_manifest(store: WorkspaceStore, tmp_path: Path) -> None:
    src, index = tmp_path / "src", tmp_path / "src.index"
    build_tree(src, big=1 << 20)
    before = tree(src)
    first = await store.checkpoint(SID, src, index)
    (src / "hello.txt").write_text("new content that reaches the store as a blob\n")
    (src / "new.txt").write_text("another new blob\n")

    url = store.url
    done = subprocess.run(
        [sys.executable, "-c", CRASH, url, str(tmp_path / "home"), str(src), str(index)],
        env=os.environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    # The blobs went up, the manifest did not: the first checkpoint is still the latest.
    blobs = {digest for digest, _ in store.list_blobs()}
    assert len(blobs) == first.uploaded_blobs + 2
    latest = await store.latest(SID)
    assert latest is not None and latest.number == first.number
    dst = tmp_path / "dst"
    dst.mkdir()
    await store.restore(SID, dst, None)
    got = tree(dst)
    assert got == before

    # The next checkpoint completes, and gc collects nothing that is referenced.
    second = await store.checkpoint(SID, src, index)
    assert second.number == first.number + 1
    assert second.uploaded_blobs == 0  # the crashed run's blobs are reused
    assert await store.gc(grace=0) == 0


async def test_delete_keeps_shared_blobs(store: WorkspaceStore, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, own in ((one, "only in one"), (two, "only in two, longer")):
        folder.mkdir()
        (folder / "shared.txt").write_text("the same in both sessions")
        (folder / "own.txt").write_text(own)
    await store.checkpoint(SID, one, None)
    info = await store.checkpoint(SID2, two, None)
    assert info.uploaded_blobs == 1  # the shared blob was already stored (dedup)
    assert len(list(store.list_blobs())) == 3

    assert await store.delete(SID, grace=60) == 0  # too young for gc
    assert await store.latest(SID) is None
    assert await store.delete(SID, grace=0) == 1  # "only in one"
    dst = tmp_path / "dst"
    dst.mkdir()
    assert await store.restore(SID2, dst, None) is not None
    assert (dst / "shared.txt").read_text() == "the same in both sessions"
    assert await store.delete(SID2, grace=0) == 2
    assert list(store.list_blobs()) == []
    assert store.manifest_names(SID) == {} and store.manifest_names(SID2) == {}


async def test_s3_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("SANDLOT_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETLOOKING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    store = open_store("s3://bucket/p", tmp_path)
    (tmp_path / "ws").mkdir()
    with pytest.raises(SandlotError) as caught:
        await store.checkpoint(SID, tmp_path / "ws", None)
    assert "cannot be reached" in str(caught.value)
    assert "very-secret-value" not in str(caught.value)
    assert "AKIDSECRETLOOKING" not in str(caught.value)


async def test_s3_missing_bucket(s3_env: SeaweedFS, tmp_path: Path) -> None:
    store = open_store("s3://no-such-bucket-here", tmp_path)
    (tmp_path / "ws").mkdir()
    with pytest.raises(SandlotError):
        await store.checkpoint(SID, tmp_path / "ws", None)


async def test_a_reused_blob_is_young_again(store: WorkspaceStore, tmp_path: Path) -> None:
    """A checkpoint that finds a blob another session stored (and so sends nothing) gives it
    a new time: a gc elsewhere then keeps it for its grace period instead of deleting it
    from under the new manifest."""
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
        (folder / "shared.txt").write_text("the same in both sessions")
    await store.checkpoint(SID, one, None)
    (before,) = [t for _, t in store.list_blobs()]
    if hasattr(store, "refresh_after"):
        store.refresh_after = 0.0  # S3 refreshes only blobs older than a few seconds
    time.sleep(1.1)  # S3 times are in whole seconds
    info = await store.checkpoint(SID2, two, None)
    assert info.uploaded_blobs == 0  # reused, not sent
    (after,) = [t for _, t in store.list_blobs()]
    assert after > before
    await store.delete(SID, grace=0)
    assert await store.delete(SID, grace=30) == 0  # the gc keeps it: SID2 uses it, and young
    dst = tmp_path / "dst"
    dst.mkdir()
    assert await store.restore(SID2, dst, None) is not None
    assert (dst / "shared.txt").read_text() == "the same in both sessions"
