"""``Session.find_or_create(metadata=...)``, embedded (issue 21, item 6): found by a subset
of its metadata, made when missing, the most recently used of several, one session when
threads and processes race."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

import sandlot
from sandlot.errors import InvalidArgumentError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tag() -> Iterator[str]:
    """A metadata value no other test uses; its sessions are deleted afterwards."""
    value = uuid.uuid4().hex[:12]
    yield value
    for info in sandlot.Session.list({"tag": value}):
        sandlot.Session.connect(info.id).delete()


def test_finds_by_a_subset_and_creates_when_missing(tag: str) -> None:
    made = sandlot.Session.find_or_create({"tag": tag, "user": "ana"}, idle_timeout=90)
    assert made.info.metadata == {"tag": tag, "user": "ana"}
    assert made.info.idle_timeout == 90
    assert sandlot.Session.find_or_create({"tag": tag, "user": "ana"}).id == made.id
    assert sandlot.Session.find_or_create({"tag": tag}).id == made.id  # a subset matches
    other = sandlot.Session.find_or_create({"tag": tag, "user": "bob"})  # a pair differs
    assert other.id != made.id
    assert len(sandlot.Session.list({"tag": tag})) == 2

    async def in_async() -> str:
        return (await sandlot.AsyncSession.find_or_create({"tag": tag, "user": "bob"})).id

    assert asyncio.run(in_async()) == other.id
    with pytest.raises(InvalidArgumentError, match="needs metadata"):
        sandlot.Session.find_or_create({})
    with pytest.raises(InvalidArgumentError):
        sandlot.Session.find_or_create({"tag": 1})  # type: ignore[dict-item]


def test_of_several_the_most_recently_used_is_taken(tag: str) -> None:
    older = sandlot.Session.create({"tag": tag, "n": "1"})
    newer = sandlot.Session.create({"tag": tag, "n": "2"})
    assert sandlot.Session.find_or_create({"tag": tag}).id == newer.id
    with older.sandbox() as sb:  # a run makes the older one the most recently used
        assert sb.commands.run("true").exit_code == 0
    assert older.refresh().last_active_at is not None
    assert sandlot.Session.find_or_create({"tag": tag}).id == older.id


FIND = (
    "import sys, sandlot\n"
    "print(sandlot.Session.find_or_create({'tag': sys.argv[1], 'race': 'yes'}).id)\n"
)


def test_racing_threads_and_processes_make_one_session(tag: str) -> None:
    barrier = threading.Barrier(4)
    found: list[str] = []

    def find() -> None:
        barrier.wait()
        found.append(sandlot.Session.find_or_create({"tag": tag, "race": "yes"}).id)

    children = [
        subprocess.Popen(
            [sys.executable, "-c", FIND, tag], stdout=subprocess.PIPE, env=dict(os.environ)
        )
        for _ in range(3)
    ]
    threads = [threading.Thread(target=find) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for child in children:
        out, _ = child.communicate(timeout=90)
        assert child.returncode == 0
        found.append(out.decode().strip())
    assert len(found) == 7 and len(set(found)) == 1
    assert [s.id for s in sandlot.Session.list({"tag": tag})] == found[:1]
