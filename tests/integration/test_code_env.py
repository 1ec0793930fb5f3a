"""A cell's own environment variables (``code.run`` with ``env``, what E2B's ``run_code(envs=)``
maps to), at the channel level in a real sandbox: set for that cell only, a variable it
replaced comes back, bad names and values are refused without touching the context."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import sandlot
from sandlot.agent import protocol as p
from sandlot.errors import InvalidArgumentError


async def cell(channel: Any, code: str, **args: Any) -> tuple[str, dict[str, Any]]:
    """Run a cell; its stdout and its END."""
    request = channel.open("code.run", context="default", code=code, **args)
    out = bytearray()

    async def go() -> dict[str, Any]:
        while True:
            kind, _, payload = await request.receive()
            if kind == p.DATA:
                out.extend(payload)
                request.consumed(len(payload))
            elif kind == p.END:
                return dict(json.loads(payload))

    end = await asyncio.wait_for(go(), 30)
    return out.decode(), end


async def test_env_is_the_cells_own() -> None:
    async with sandlot.AsyncSandbox.create(env={"KEPT": "sandbox"}) as sb:
        ch = sb._channel
        show = "import os\nprint(os.environ.get('ONLY_HERE'), os.environ.get('KEPT'))"
        out, end = await cell(ch, show, env={"ONLY_HERE": "cell", "KEPT": "replaced"})
        assert (out, end["error"]) == ("cell replaced\n", None)
        out, _ = await cell(ch, show)
        assert out == "None sandbox\n"  # unset again, and the replaced one back
        raising = "import os\nraise KeyError(os.environ['ONLY_HERE'])"
        _, end = await cell(ch, raising, env={"ONLY_HERE": "x"})
        assert end["error"]["name"] == "KeyError"
        out, _ = await cell(ch, show)
        assert out == "None sandbox\n"  # also after a cell that raised


@pytest.mark.parametrize("env", [{"A": "x\0y"}, {"A=B": "x"}, {"": "x"}, {"A": 5}, ["A"]])
async def test_bad_env_is_refused(env: Any) -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        await cell(sb._channel, "state = 'kept'")
        with pytest.raises(InvalidArgumentError):
            await cell(sb._channel, "1", env=env)
        out, _ = await cell(sb._channel, "print(state)")
        assert out == "kept\n"
