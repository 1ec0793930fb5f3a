"""Installs that work where the sandbox's Python is "externally managed" (PEP 668: Debian's and
Ubuntu's /usr/bin/python3) and its root is read-only: ``install()``, ``!pip``/``%pip`` in a
cell and ``pip`` in a command all land in the user site (``$HOME/.local``, in the workspace),
which every ``python3`` of the sandbox sees, running code contexts included. No network: the
packages are wheels built here with zipfile and installed with ``--no-index``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot.agent.server import _pip_defaults
from sandlot.sdk.code import PIP_TAIL_CHARS, _pip_tail

pytestmark = pytest.mark.timeout(120)

WHEELS = "/workspace/wheels"


def _wheel(name: str, source: str, script: str | None = None) -> bytes:
    """A minimal pure-Python wheel (version 0.1), with a console script ``script`` calling
    ``name.main`` if given."""

    def digest(data: bytes) -> str:
        raw = hashlib.sha256(data).digest()
        return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    info = f"{name}-0.1.dist-info"
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: sandlot-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    if script is not None:
        files[f"{info}/entry_points.txt"] = f"[console_scripts]\n{script} = {name}:main\n".encode()
    record = "".join(f"{path},{digest(data)},{len(data)}\n" for path, data in files.items())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return buffer.getvalue()


def _put_wheel(box: sandlot.Sandbox, name: str, source: str, script: str | None = None) -> str:
    path = f"{WHEELS}/{name}-0.1-py3-none-any.whl"
    box.files.write(path, _wheel(name, source, script))
    return path


@pytest.fixture(scope="module")
def box() -> Iterator[sandlot.Sandbox]:
    with sandlot.Sandbox.create(timeout=600) as sandbox:
        yield sandbox


@pytest.fixture
def fresh(box: sandlot.Sandbox) -> Iterator[sandlot.CodeContext]:
    """No user site yet (as in a new sandbox), and a context started before anything is
    installed: its ``sys.path`` lacks the user site."""
    assert box.commands.run("rm -rf /workspace/.local").exit_code == 0
    context = box.create_code_context()
    assert box.run_code("import site, sys\nsite.USER_SITE in sys.path", context=context).text == (
        "False"
    )
    yield context
    box.remove_code_context(context)


def test_the_sandbox_python_is_externally_managed(box: sandlot.Sandbox) -> None:
    """What the other tests overcome: pip without sandlot's defaults refuses (PEP 668)."""
    marker = box.commands.run(
        "python3 -c 'import os, sysconfig; "
        'print(os.path.exists(sysconfig.get_path("stdlib") + "/EXTERNALLY-MANAGED"))\''
    )
    if marker.stdout.strip() != "True":
        pytest.skip("the sandbox's python3 is not marked externally managed on this host")
    wheel = _put_wheel(box, "refused", "V = 0\n")
    result = box.commands.run(f"python3 -m pip install --no-index {wheel}")
    assert result.exit_code == 0  # sandlot's environment: PIP_BREAK_SYSTEM_PACKAGES=1
    bare = box.commands.run(
        f"env -u PIP_BREAK_SYSTEM_PACKAGES python3 -m pip install --no-index {wheel}"
    )
    assert bare.exit_code != 0
    assert "externally-managed-environment" in bare.stderr


def test_install_then_import_in_a_cell_and_in_python3_from_a_command(
    box: sandlot.Sandbox, fresh: sandlot.CodeContext
) -> None:
    wheel = _put_wheel(
        box, "sdkpkg", "VALUE = 42\ndef main():\n    print('hi from sdkpkg')\n", "sdkhi"
    )
    result = box.install([wheel], timeout=120)
    assert "Successfully installed sdkpkg-0.1" in result.stdout
    ex = box.run_code("import sdkpkg\nsdkpkg.VALUE", context=fresh)  # started before the install
    assert ex.error is None, ex.error
    assert ex.text == "42"
    run = box.commands.run("python3 -c 'import sdkpkg, sys; print(sdkpkg.__file__)'")
    assert run.exit_code == 0, run.stderr
    assert run.stdout.startswith("/workspace/.local/lib/python3.")  # the user site
    script = box.commands.run("sdkhi")  # its console script, from $HOME/.local/bin on PATH
    assert (script.exit_code, script.stdout) == (0, "hi from sdkpkg\n")


def test_bang_pip_in_a_cell_then_import_in_the_same_cell(
    box: sandlot.Sandbox, fresh: sandlot.CodeContext
) -> None:
    wheel = _put_wheel(box, "bangpkg", "VALUE = 'bang'\n")
    ex = box.run_code(
        f"!pip install --no-index {wheel}\nimport bangpkg\nbangpkg.VALUE", context=fresh
    )
    assert ex.error is None, (ex.error, ex.logs)
    assert "Successfully installed bangpkg-0.1" in "".join(ex.logs.stdout)
    assert ex.text == "'bang'"


def test_percent_pip_in_a_cell_then_import_in_the_next_and_in_another_context(
    box: sandlot.Sandbox, fresh: sandlot.CodeContext
) -> None:
    other = box.create_code_context()  # also running before the install
    try:
        wheel = _put_wheel(box, "pctpkg", "VALUE = 'pct'\n")
        ex = box.run_code(f"%pip install --no-index {wheel}", context=fresh)
        assert ex.error is None, ex.error
        assert "Successfully installed pctpkg-0.1" in "".join(ex.logs.stdout)
        assert box.run_code("import pctpkg\npctpkg.VALUE", context=fresh).text == "'pct'"
        assert box.run_code("import pctpkg\npctpkg.VALUE", context=other).text == "'pct'"
    finally:
        box.remove_code_context(other)


def test_pip_in_a_command_is_seen_by_a_running_context(
    box: sandlot.Sandbox, fresh: sandlot.CodeContext
) -> None:
    wheel = _put_wheel(box, "cmdpkg", "VALUE = 'cmd'\n")
    result = box.commands.run(f"pip install --no-index {wheel}")
    assert result.exit_code == 0, result.stderr
    assert "Defaulting to user installation" in result.stdout  # the root is read-only
    ex = box.run_code("import cmdpkg\ncmdpkg.VALUE", context=fresh)
    assert ex.error is None, ex.error
    assert ex.text == "'cmd'"


def test_a_missing_module_is_still_an_import_error(
    box: sandlot.Sandbox, fresh: sandlot.CodeContext
) -> None:
    ex = box.run_code("import no_such_module_anywhere", context=fresh)
    assert ex.error is not None and ex.error.name == "ModuleNotFoundError"


def test_a_virtual_environment_the_user_makes_still_installs_into_itself(
    box: sandlot.Sandbox,
) -> None:
    """PIP_USER is not set, so pip in a venv installs into the venv (it would refuse)."""
    wheel = _put_wheel(box, "venvpkg", "VALUE = 'venv'\n")
    result = box.commands.run(
        "python3 -m venv --without-pip --system-site-packages /workspace/venv && "
        f"/workspace/venv/bin/python -m pip install --no-index {wheel} && "
        "/workspace/venv/bin/python -c 'import venvpkg; print(venvpkg.__file__)'",
        timeout=60,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("/workspace/venv/lib/")


def test_a_failing_install_raises_with_pips_own_reason(box: sandlot.Sandbox) -> None:
    box.files.write(f"{WHEELS}/index/index.html", "<html><body></body></html>")
    with pytest.raises(sandlot.InstallError) as info:
        box.install(["no-such-pkg"], index_url=f"file://{WHEELS}/index", timeout=120)
    message = str(info.value)
    assert "no package matches no-such-pkg" in message  # sandlot's summary
    assert "pip said:" in message
    assert "ERROR: No matching distribution found for no-such-pkg" in message  # pip's words
    broken = f"{WHEELS}/broken-0.1-py3-none-any.whl"
    box.files.write(broken, b"not a zip file")
    with pytest.raises(sandlot.InstallError) as info:
        box.install([broken], timeout=120)
    message = str(info.value)
    assert "pip said:" in message
    assert "ERROR" in message.split("pip said:", 1)[1]
    assert info.value.stderr  # and all of pip's output is kept
    with pytest.raises(sandlot.InstallError) as info:
        box.install([broken], timeout=0.05)  # pip cannot even start in time
    assert str(info.value).startswith("pip did not finish within 0.05 s\npip said:\n")


def test_an_index_install_without_network_fails_at_once_with_a_clear_reason(
    box: sandlot.Sandbox,
) -> None:
    with pytest.raises(sandlot.InstallError) as info:
        box.install(["surely-not-a-real-package-xyz"], timeout=120)
    message = str(info.value)
    assert "this sandbox has no network" in message
    assert "surely-not-a-real-package-xyz" in message.split("pip said:", 1)[1]
    assert "Retrying" not in info.value.stderr  # pip was told not to retry
    # the same from a cell: pip's own error, no retries either
    ex = box.run_code("!pip install surely-not-a-real-package-xyz")
    output = "".join(ex.logs.stdout + ex.logs.stderr)
    assert "ERROR: Could not find a version that satisfies the requirement" in output
    assert "Retrying" not in output


def test_installed_packages_follow_the_session_to_its_next_sandbox() -> None:
    """The user site is in the workspace: checkpointed and restored with it."""
    session = sandlot.Session.create(metadata={"test": "installs"})
    try:
        with session.sandbox(timeout=300) as first:
            wheel = _put_wheel(first, "sesspkg", "VALUE = 'kept'\n")
            first.install([wheel], timeout=120)
        with session.sandbox(timeout=300) as second:
            assert second.run_code("import sesspkg\nsesspkg.VALUE").text == "'kept'"
    finally:
        session.delete()


# -- the agent's pip defaults (pure function) -------------------------------------------------


def test_pip_defaults_lift_pep_668_only_where_the_prefix_is_read_only(tmp_path: Path) -> None:
    env = {"HOME": "/workspace", "PATH": "/usr/bin:/bin"}
    _pip_defaults(env, str(tmp_path / "missing"))  # not writable (as a read-only root)
    assert env["PIP_BREAK_SYSTEM_PACKAGES"] == "1"
    assert env["PATH"] == "/usr/bin:/bin:/workspace/.local/bin"
    assert "PIP_USER" not in env
    _pip_defaults(env, str(tmp_path / "missing"))
    assert env["PATH"] == "/usr/bin:/bin:/workspace/.local/bin"  # once
    env = {"HOME": "/home/me", "PIP_DISABLE_PIP_VERSION_CHECK": "0"}
    _pip_defaults(env, str(tmp_path))  # writable: the host's own Python (process provider)
    assert "PIP_BREAK_SYSTEM_PACKAGES" not in env
    assert env["PIP_DISABLE_PIP_VERSION_CHECK"] == "0"  # the caller's value wins
    assert env["PATH"] == "/home/me/.local/bin"


def test_pips_tail_is_bounded_and_keeps_its_first_error() -> None:
    noise = "\n".join(f"line {i} " + "x" * 1000 for i in range(100))
    tail = _pip_tail("", f"ERROR: the first reason\n{noise}\nERROR: the last")
    assert len(tail) <= PIP_TAIL_CHARS + 400  # the last lines, and the first error (cut)
    assert tail.startswith("  ERROR: the first reason\n  ...\n  line 9")
    assert tail.endswith("  ERROR: the last")
    short = _pip_tail("", "ERROR: the first reason\n" + "\n".join(f"l{i}" for i in range(20)))
    assert short.splitlines()[:2] == ["  ERROR: the first reason", "  ..."]
    assert short.splitlines()[-1] == "  l19"
    assert _pip_tail("only stdout\n", "  \n") == "  only stdout"
    assert _pip_tail("", "") == "(no output)"
