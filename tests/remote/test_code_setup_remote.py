"""Setup code, ``Execution.cwd`` and ``cwd_on_path`` through a real ``sandlot serve``: the new
create-context fields cross the server's request model, the new result field its answer."""

from __future__ import annotations

import httpx
import pytest

import sandlot

from .server import ServerProcess

pytestmark = pytest.mark.timeout(120)


async def test_setup_and_cwd_through_a_server(server: ServerProcess) -> None:
    client = sandlot.Client(url=server.url)
    box = await sandlot.AsyncSandbox.create(client=client, timeout=300)
    try:
        context = await box.create_code_context(
            setup="def helper(x):\n    return x + 1\nprint('setup noise')\n",
            cwd_on_path=False,
        )
        assert context.setup and not context.cwd_on_path and context.setup_error is None
        ex = await box.run_code(
            "import os, sys\nos.chdir('/tmp')\n(helper(1), '' in sys.path)", context=context
        )
        assert ex.error is None, ex.error
        assert ex.text == "(2, False)" and ex.cwd == "/tmp"
        assert "setup noise" not in "".join(ex.logs.stdout)
        # A killed worker comes back with its helpers, without the client re-running setup.
        ex = await box.run_code(
            "import signal\nos.kill(os.getpid(), signal.SIGKILL)", context=context
        )
        assert ex.state_lost
        ex = await box.run_code("helper(2)", context=context)
        assert ex.error is None and ex.text == "3" and ex.cwd == "/workspace"
        with pytest.raises(sandlot.InvalidArgumentError):
            await box.create_code_context(setup="#" * (256 * 1024 + 1))
        # The server's request model bounds it too (a client other than the SDK).
        async with httpx.AsyncClient(base_url=server.url) as http:
            answer = await http.post(
                f"/v1/sandboxes/{box.id}/code/contexts", json={"setup": "#" * (256 * 1024 + 1)}
            )
            assert answer.status_code in (400, 422), answer.text
            answer = await http.post(
                f"/v1/sandboxes/{box.id}/code/contexts", json={"cwd_on_path": "maybe"}
            )
            assert answer.status_code in (400, 422), answer.text
        failing = await box.create_code_context(setup="raise RuntimeError('no')")
        assert failing.setup_error is not None and "no" in failing.setup_error
        ex = await box.run_code("1", context=failing)
        assert ex.error is not None and ex.error.name == "SetupError"
        assert (await box.run_code("1", context=failing)).text == "1"
    finally:
        await box.kill()
        await client.aclose()
