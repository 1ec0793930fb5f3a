"""A durable session moves between providers: bwrap, then docker, then bwrap again. The
docker sandbox runs as another user (a host uid of its own), so the restored workspace must be
its."""

from __future__ import annotations

import pytest

import sandlot

from .conftest import IMAGE

pytestmark = pytest.mark.timeout(180)


def test_resume_across_providers() -> None:
    s = sandlot.Session.create(metadata={"test": "across"})
    with s.sandbox(provider="bwrap") as sb:
        sb.commands.run("mkdir -p /workspace/repo && echo x > /workspace/note")
        ctx = sb.create_code_context(name="main", persist=True)
        assert sb.run_code("answer = 41", context=ctx).error is None
    with s.sandbox(provider="docker", image=IMAGE, pull="never") as sb:
        assert sb.provider == "docker"
        assert sb.files.read("/workspace/note") == "x\n"
        r = sb.commands.run(
            "id -u; echo y >> /workspace/note; touch /workspace/repo/new && echo ok"
        )
        assert r.stdout.split()[1:] == ["ok"], r.stderr  # the sandbox user may write it
        ctx = sb.create_code_context(name="main", persist=True)
        assert sb.run_code("answer + 1", context=ctx).text == "42"
    with s.sandbox(provider="bwrap") as sb:
        assert sb.files.read("/workspace/note") == "x\ny\n"
        assert sb.files.exists("/workspace/repo/new")
    providers = [e.data["provider"] for e in s.events() if e.kind == "sandbox"
                 and e.data["event"] == "attached"]  # fmt: skip
    assert providers == ["bwrap", "docker", "bwrap"]
    s.delete()
