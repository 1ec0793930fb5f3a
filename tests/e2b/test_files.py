"""The E2B SDKs' file API (``sandbox.files``) and user ports, unmodified, against a real
``sandlot serve``: envd's ``filesystem.Filesystem`` service, ``/files`` up and down (multipart
and octet-stream, 20 MiB whole), watching, errors as the SDK's exceptions, and a server in the
sandbox reached with ``E2b-Sandbox-Port``."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2b import AsyncSandbox, FileType, InvalidArgumentException, NotFoundException, Sandbox
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType

import sandlot

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


@pytest.fixture(scope="module")
def pair(e2b_server: Any) -> Iterator[tuple[sandlot.Sandbox, Sandbox]]:
    """A sandbox made by the E2B SDK, and sandlot's SDK on the same sandbox."""
    with pytest.MonkeyPatch.context() as env:  # as the e2b_env fixture, for the module
        env.setenv("E2B_API_URL", e2b_server.url)
        env.setenv("E2B_SANDBOX_URL", e2b_server.url)
        env.setenv("E2B_API_KEY", e2b_server.api_key)
        env.delenv("E2B_DOMAIN", raising=False)
        env.delenv("E2B_DEBUG", raising=False)
        e2b = Sandbox.create(timeout=600)
    client = sandlot.Client(url=e2b_server.url, api_key=e2b_server.api_key)
    try:
        yield sandlot.Sandbox.connect(e2b.sandbox_id, client=client), e2b
    finally:
        e2b.kill()


def _wait_events(handle: Any, wanted: set[tuple[str, FilesystemEventType]]) -> list[Any]:
    seen: list[Any] = []
    for _ in range(200):  # the watcher lists the folder a few times a second
        seen += handle.get_new_events()
        if wanted <= {(e.name, e.type) for e in seen}:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"events seen: {seen}")


def test_write_and_read_text_bytes_and_stream(pair: tuple[sandlot.Sandbox, Sandbox]) -> None:
    sb, e2b = pair
    info = e2b.files.write("/workspace/t/hello.txt", "héllo")
    assert (info.name, info.path, info.type) == (
        "hello.txt",
        "/workspace/t/hello.txt",
        FileType.FILE,
    )
    assert e2b.files.read("/workspace/t/hello.txt") == "héllo"
    assert sb.files.read("/workspace/t/hello.txt") == "héllo"  # the same file
    e2b.files.write("/workspace/t/raw.bin", b"\x00\xff" * 10)
    assert e2b.files.read("/workspace/t/raw.bin", format="bytes") == bytearray(b"\x00\xff" * 10)
    e2b.files.write("/workspace/t/streamed.bin", io.BytesIO(b"abc" * 1000))  # octet-stream
    with e2b.files.read("/workspace/t/streamed.bin", format="stream") as reader:
        assert b"".join(reader) == b"abc" * 1000


def test_write_files_several(pair: tuple[sandlot.Sandbox, Sandbox]) -> None:
    _, e2b = pair
    written = e2b.files.write_files(
        [
            {"path": "/workspace/many/a.txt", "data": "A"},
            {"path": "/workspace/many/sub/b.txt", "data": b"B"},
            {"path": "/workspace/many/c.txt", "data": "C" * 100_000},
        ]
    )
    assert [w.path for w in written] == [
        "/workspace/many/a.txt",
        "/workspace/many/sub/b.txt",
        "/workspace/many/c.txt",
    ]
    assert e2b.files.read("/workspace/many/sub/b.txt") == "B"
    assert e2b.files.read("/workspace/many/c.txt") == "C" * 100_000


def test_list_exists_info_mkdir_rename_remove(pair: tuple[sandlot.Sandbox, Sandbox]) -> None:
    _, e2b = pair
    assert e2b.files.make_dir("/workspace/tree/x/y") is True
    assert e2b.files.make_dir("/workspace/tree/x/y") is False  # already there
    e2b.files.write("/workspace/tree/x/y/f.txt", "12345")
    e2b.files.write("/workspace/tree/top.txt", "t")
    assert [(e.name, e.type) for e in e2b.files.list("/workspace/tree")] == [
        ("top.txt", FileType.FILE),
        ("x", FileType.DIR),
    ]
    deep = [e.path for e in e2b.files.list("/workspace/tree", depth=3)]
    assert deep == [
        "/workspace/tree/top.txt",
        "/workspace/tree/x",
        "/workspace/tree/x/y",
        "/workspace/tree/x/y/f.txt",
    ]
    info = e2b.files.get_info("/workspace/tree/x/y/f.txt")
    assert (info.name, info.type, info.size, info.owner) == ("f.txt", FileType.FILE, 5, "user")
    assert info.permissions.startswith("-rw") and info.mode == int(info.mode) & 0o777
    assert abs(info.modified_time.timestamp() - time.time()) < 3600
    assert e2b.files.get_info("/workspace/tree/x").permissions.startswith("d")
    assert e2b.files.exists("/workspace/tree/top.txt") is True
    assert e2b.files.exists("/workspace/tree/nope") is False
    moved = e2b.files.rename("/workspace/tree/top.txt", "/workspace/tree/new/moved.txt")
    assert (moved.name, moved.path) == ("moved.txt", "/workspace/tree/new/moved.txt")
    assert e2b.files.exists("/workspace/tree/top.txt") is False
    e2b.files.remove("/workspace/tree/x")
    assert e2b.files.exists("/workspace/tree/x/y/f.txt") is False


def test_a_missing_file_is_not_found(pair: tuple[sandlot.Sandbox, Sandbox]) -> None:
    _, e2b = pair
    with pytest.raises(NotFoundException):
        e2b.files.read("/workspace/no/such/file")
    with pytest.raises(NotFoundException):
        e2b.files.get_info("/workspace/no/such/file")
    with pytest.raises(NotFoundException):
        e2b.files.list("/workspace/no/such/dir")
    with pytest.raises(NotFoundException):
        e2b.files.remove("/workspace/no/such/file")


def test_watch_dir_sees_a_create_and_a_write(pair: tuple[sandlot.Sandbox, Sandbox]) -> None:
    _, e2b = pair
    e2b.files.make_dir("/workspace/watched/deep")
    handle = e2b.files.watch_dir("/workspace/watched", recursive=True, include_entry=True)
    try:
        e2b.files.write("/workspace/watched/new.txt", "one")
        e2b.files.write("/workspace/watched/deep/inner.txt", "x")
        seen = _wait_events(
            handle,
            {
                ("new.txt", FilesystemEventType.CREATE),
                ("deep/inner.txt", FilesystemEventType.CREATE),
            },
        )
        created = next(e for e in seen if e.name == "new.txt")
        assert created.entry is not None and created.entry.path == "/workspace/watched/new.txt"
        e2b.files.write("/workspace/watched/new.txt", "one and more")
        _wait_events(handle, {("new.txt", FilesystemEventType.WRITE)})
        e2b.files.remove("/workspace/watched/new.txt")
        _wait_events(handle, {("new.txt", FilesystemEventType.REMOVE)})
    finally:
        handle.stop()


def test_twenty_mib_up_and_down_whole(pair: tuple[sandlot.Sandbox, Sandbox]) -> None:
    _, e2b = pair
    data = bytes(range(256)) * (20 * MiB // 256)
    digest = hashlib.sha256(data).hexdigest()
    e2b.files.write("/workspace/big/multipart.bin", data)  # bytes: multipart/form-data
    chunks = (data[i : i + MiB] for i in range(0, len(data), MiB))
    e2b.files.write("/workspace/big/octet.bin", chunks)  # an iterable: octet-stream
    for name in ("multipart.bin", "octet.bin"):
        assert e2b.files.get_info(f"/workspace/big/{name}").size == len(data)
        got = hashlib.sha256()
        with e2b.files.read(f"/workspace/big/{name}", format="stream") as reader:
            for chunk in reader:
                got.update(chunk)
        assert got.hexdigest() == digest
    assert (
        hashlib.sha256(e2b.files.read("/workspace/big/octet.bin", format="bytes")).hexdigest()
        == digest
    )


def test_gzip_upload(pair: tuple[sandlot.Sandbox, Sandbox]) -> None:
    _, e2b = pair
    e2b.files.write("/workspace/gz.txt", "zipped " * 1000, gzip=True)
    assert e2b.files.read("/workspace/gz.txt") == "zipped " * 1000


def test_file_metadata_is_refused_plainly(pair: tuple[sandlot.Sandbox, Sandbox]) -> None:
    _, e2b = pair
    with pytest.raises(InvalidArgumentException, match="metadata"):
        e2b.files.write("/workspace/meta.txt", "x", metadata={"owner": "me"})
    assert e2b.files.exists("/workspace/meta.txt") is False


def test_relative_paths_are_under_home(pair: tuple[sandlot.Sandbox, Sandbox]) -> None:
    sb, e2b = pair
    e2b.files.write("rel/in-home.txt", "home")
    assert e2b.files.read("/home/user/rel/in-home.txt") == "home"
    assert sb.files.read("/workspace/rel/in-home.txt") == "home"


async def test_the_async_sdk(e2b_server: Any, pair: tuple[sandlot.Sandbox, Sandbox]) -> None:
    sb, _ = pair
    e2b = await AsyncSandbox.connect(sb.id)
    await e2b.files.make_dir("/workspace/async")
    events: list[Any] = []
    handle = await e2b.files.watch_dir("/workspace/async", on_event=events.append)
    try:
        await e2b.files.write("/workspace/async/a.txt", "async")
        assert await e2b.files.read("/workspace/async/a.txt") == "async"
        assert [e.name for e in await e2b.files.list("/workspace/async")] == ["a.txt"]
        for _ in range(200):
            if ("a.txt", FilesystemEventType.CREATE) in {(e.name, e.type) for e in events}:
                break
            import asyncio

            await asyncio.sleep(0.05)
        assert ("a.txt", FilesystemEventType.CREATE) in {(e.name, e.type) for e in events}
        with pytest.raises(NotFoundException):
            await e2b.files.read("/workspace/async/missing")
    finally:
        await handle.stop()


def test_a_user_port_through_e2b_sandbox_port(
    e2b_server: Any, pair: tuple[sandlot.Sandbox, Sandbox]
) -> None:
    sb, e2b = pair
    e2b.files.write("/workspace/site/index.txt", "served from the sandbox")
    sb.commands.run(
        "cd /workspace/site && python3 -m http.server 8123 --bind 127.0.0.1",
        background=True,
        timeout=None,
    )
    token = e2b._envd_access_token  # what create answered (envdAccessToken)
    assert token
    headers = {"E2b-Sandbox-Id": sb.id, "E2b-Sandbox-Port": "8123"}
    status = 0
    for _ in range(200):  # the server starts in the background
        r = httpx.get(f"{e2b_server.url}/index.txt", headers={**headers, "X-Access-Token": token})
        status = r.status_code
        if status == 200:
            break
        time.sleep(0.05)
    assert status == 200 and r.text == "served from the sandbox"
    # E2B's header for user ports carries the same token.
    r = httpx.get(
        f"{e2b_server.url}/index.txt?x=1",
        headers={**headers, "e2b-traffic-access-token": token},
    )
    assert r.status_code == 200 and r.text == "served from the sandbox"
    r = httpx.get(f"{e2b_server.url}/index.txt", headers=headers)  # no token
    assert r.status_code == 401
