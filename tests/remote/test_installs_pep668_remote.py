"""Installs on a PEP 668 host through a real ``sandlot serve``: the same agent defaults, and
pip's reason in ``InstallError`` on the client's side of HTTP."""

from __future__ import annotations

import pytest
from integration.test_installs_pep668 import _wheel

import sandlot

from .server import ServerProcess

pytestmark = pytest.mark.timeout(120)


async def test_install_bang_pip_and_pips_reason_through_a_server(server: ServerProcess) -> None:
    client = sandlot.Client(url=server.url)
    box = await sandlot.AsyncSandbox.create(client=client, timeout=300)
    try:
        for name, value in (("remotepkg", 1), ("remotebang", 2)):
            wheel = _wheel(name, f"V = {value}\n")
            await box.files.write(f"/workspace/w/{name}-0.1-py3-none-any.whl", wheel)
        context = await box.create_code_context()  # running before anything is installed
        await box.install(["/workspace/w/remotepkg-0.1-py3-none-any.whl"], timeout=120)
        ex = await box.run_code(
            "!pip install --no-index /workspace/w/remotebang-0.1-py3-none-any.whl\n"
            "import remotepkg, remotebang\nremotepkg.V + remotebang.V",
            context=context,
        )
        assert ex.error is None, (ex.error, ex.logs)
        assert ex.text == "3"
        run = await box.commands.run("python3 -c 'import remotepkg, remotebang'")
        assert run.exit_code == 0, run.stderr
        with pytest.raises(sandlot.InstallError) as info:
            await box.install(["surely-not-a-real-package-xyz"], timeout=120)
        message = str(info.value)
        assert "this sandbox has no network" in message
        assert "surely-not-a-real-package-xyz" in message.split("pip said:", 1)[1]
    finally:
        await box.kill()
        await client.aclose()
