"""The notebook magic in a real Jupyter kernel: ipykernel started by jupyter_client with this
checkout on PYTHONPATH, cells sent over ZeroMQ, and what comes back on IOPub read as a
notebook front end would (stream, display_data, execute_result, error)."""

from __future__ import annotations

import base64
import os
import queue
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The `dev` extra has both; a missing one fails the module rather than skipping it.
import jupyter_client
import pytest

import sandlot

REPO = str(Path(__file__).resolve().parents[2])
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class Kernel:
    """One ipykernel and a blocking client; :meth:`run` returns a cell's IOPub messages."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
        self.manager = jupyter_client.KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
        """The reply's status and the cell's IOPub messages (type, content), in order."""
        msg_id = self.client.execute(code)
        messages: list[tuple[str, dict[str, Any]]] = []
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no idle status for {code!r}; got {messages}") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind not in ("status", "execute_input"):
                messages.append((kind, content))
        return self.reply(msg_id, timeout), messages

    def reply(self, msg_id: str, timeout: float = 60) -> str:
        """The status of ``msg_id``'s execute_reply (older replies are passed over)."""
        while True:
            reply = self.client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                return str(reply["content"]["status"])

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)  # a clean exit: atexit handlers run


def stdout(messages: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(c["text"] for k, c in messages if k == "stream" and c["name"] == "stdout")


def results(messages: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [c["data"] for k, c in messages if k == "execute_result"]


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    status, messages = k.run("%load_ext sandlot")
    assert status == "ok", messages
    yield k
    k.stop()


def test_state_lives_between_cells(kernel: Kernel) -> None:
    status, messages = kernel.run("%%sandlot\nx = 41\nimport os")
    assert status == "ok", messages
    status, messages = kernel.run("%%sandlot\nx + 1")
    assert status == "ok", messages
    assert results(messages) == [{"text/plain": "42"}]
    # The cell ran in the sandbox, not in the kernel.
    status, messages = kernel.run("'x' in globals()")
    assert results(messages) == [{"text/plain": "False"}]


def test_rich_results_and_streams_in_order(kernel: Kernel) -> None:
    code = f"""%%sandlot
import base64, sys
class Html:
    def _repr_html_(self): return "<b>hi</b>"
class Png:
    def _repr_png_(self): return base64.b64decode({base64.b64encode(PNG).decode()!r})
print("before")
display(Html())
print("oops", file=sys.stderr)
display(Png())
print("after")
"""
    status, messages = kernel.run(code)
    assert status == "ok", messages
    kinds = [
        (k, c.get("name") or sorted(c.get("data", {})))
        for k, c in messages
        if k in ("stream", "display_data")
    ]
    assert kinds == [
        ("stream", "stdout"),
        ("display_data", ["text/html", "text/plain"]),
        ("stream", "stderr"),
        ("display_data", ["image/png", "text/plain"]),
        ("stream", "stdout"),
    ]
    html = next(c["data"] for k, c in messages if k == "display_data")
    assert html["text/html"] == "<b>hi</b>"
    png = [c["data"] for k, c in messages if k == "display_data"][1]
    assert base64.b64decode(png["image/png"]) == PNG
    assert stdout(messages) == "before\nafter\n"


def test_active_content_is_cleaned_unless_trusted(kernel: Kernel) -> None:
    # A notebook front end runs scripts in live outputs, with the user's Jupyter rights.
    cell = (
        "class Evil:\n"
        "    def _repr_html_(self): return '<b>ok</b><img src=x onerror=f()><script>x</script>'\n"
        "    def _repr_javascript_(self): return 'alert(1)'\n"
        "Evil()"
    )
    status, messages = kernel.run("%%sandlot\n" + cell)
    assert status == "ok", messages
    [data] = results(messages)
    assert data["text/html"] == "<b>ok</b><img>"  # no handler, no src, no script
    assert "application/javascript" not in data
    status, messages = kernel.run("%%sandlot --trust\nEvil()")
    [data] = results(messages)
    assert "<script>" in data["text/html"] and data["application/javascript"] == "alert(1)"


def test_matplotlib_figures_and_dataframes(kernel: Kernel) -> None:
    _, messages = kernel.run(
        "%%sandlot\nimport importlib.util as u\n"
        "all(u.find_spec(m) for m in ('matplotlib', 'pandas'))"
    )
    if results(messages) != [{"text/plain": "True"}]:
        pytest.skip("the sandbox's Python has no matplotlib or pandas")
    status, messages = kernel.run(
        "%%sandlot\nimport matplotlib.pyplot as plt, pandas as pd\n"
        "plt.plot([1, 3, 2]); plt.show()\npd.DataFrame({'a': [1, 2]})"
    )
    assert status == "ok", messages
    [figure] = [c["data"] for k, c in messages if k == "display_data"]
    assert base64.b64decode(figure["image/png"]).startswith(b"\x89PNG")
    [table] = results(messages)
    assert "<table" in table["text/html"] and "a" in table["text/plain"]


def test_output_streams_while_the_cell_runs(kernel: Kernel) -> None:
    # The first line arrives as a stream message before the cell ends: the cell waits for a
    # file the test writes into its sandbox only after seeing that line.
    _, messages = kernel.run("import os; os.getpid()")
    pid = results(messages)[0]["text/plain"]
    [info] = sandlot.Sandbox.list(metadata={"sandlot.notebook": f"kernel-{pid}"})
    flag = "/tmp/flag"
    msg_id = kernel.client.execute(
        "%%sandlot\nimport os, time\nprint('waiting', flush=True)\n"
        f"while not os.path.exists({flag!r}): time.sleep(0.02)\nprint('done')"
    )
    seen: list[str] = []
    while "waiting\n" not in seen:
        msg = kernel.client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            seen.append(msg["content"]["text"])
    sb = sandlot.Sandbox.connect(info.id)
    try:
        sb.files.write(flag, b"")
    finally:
        sb.close()
    while True:
        msg = kernel.client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            seen.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    assert "".join(seen) == "waiting\ndone\n"
    assert kernel.reply(msg_id) == "ok"


def test_an_exception_is_shown_as_the_remote_one(kernel: Kernel) -> None:
    status, messages = kernel.run("%%sandlot\ndef f():\n    return 1 / 0\nf()")
    assert status == "error"
    errors = [c for k, c in messages if k == "error"]
    assert len(errors) == 1
    err = errors[0]
    assert err["ename"] == "ZeroDivisionError"
    assert err["evalue"] == "division by zero"
    text = "\n".join(err["traceback"])
    assert "return 1 / 0" in text
    # The sandbox's frames only: nothing of the host's magic or IPython.
    assert "notebook.py" not in text and "IPython" not in text and REPO not in text
    # The state survived the error.
    status, messages = kernel.run("%%sandlot\nx")
    assert results(messages) == [{"text/plain": "41"}]


def test_reset_clears_the_namespace(kernel: Kernel) -> None:
    kernel.run("%%sandlot\ngone = 1")
    status, messages = kernel.run("%sandlot_reset")
    assert status == "ok", messages
    status, messages = kernel.run("%%sandlot\ngone")
    assert status == "error"
    assert [c["ename"] for k, c in messages if k == "error"] == ["NameError"]


def test_timeout_interrupts_and_keeps_state(kernel: Kernel) -> None:
    kernel.run("%%sandlot\nkept = 'yes'")
    status, messages = kernel.run("%%sandlot --timeout 1\nimport time\ntime.sleep(30)")
    assert status == "error"
    assert [c["ename"] for k, c in messages if k == "error"] == ["CodeTimeoutError"]
    status, messages = kernel.run("%%sandlot\nkept")
    assert results(messages) == [{"text/plain": "'yes'"}]


def _wheel(folder: Path) -> Path:
    """The smallest valid wheel: one module, no dependencies."""
    path = folder / "magicpkg-0.1-py3-none-any.whl"
    info = "magicpkg-0.1.dist-info"
    files = {
        "magicpkg.py": "VALUE = 'from the wheel'\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: magicpkg\nVersion: 0.1\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", record)
    return path


def test_install_a_local_wheel(kernel: Kernel, tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    status, messages = kernel.run(f"%sandlot_install {wheel}", timeout=120)
    if status == "error":
        err = next(c for k, c in messages if k == "error")
        if "externally-managed" in err["evalue"] or "no pip" in err["evalue"].lower():
            pytest.skip(f"the sandbox's Python cannot pip install: {err['evalue'][:200]}")
    assert status == "ok", messages
    status, messages = kernel.run("%%sandlot\nimport magicpkg\nmagicpkg.VALUE")
    assert status == "ok", messages
    assert results(messages) == [{"text/plain": "'from the wheel'"}]


def test_a_named_session_is_separate_and_found_again(kernel: Kernel) -> None:
    name = f"nb-{os.getpid()}"
    status, messages = kernel.run(f"%%sandlot --session {name}\ny = 5")
    assert status == "ok", messages
    status, messages = kernel.run(f"%%sandlot --session {name}\ny * 2")
    assert results(messages) == [{"text/plain": "10"}]
    status, messages = kernel.run("%%sandlot\n'y' in globals()")
    assert results(messages) == [{"text/plain": "False"}]
    sessions = sandlot.Session.list(metadata={"sandlot.notebook": name})
    assert len(sessions) == 1


def test_kernel_interrupt_interrupts_the_cell(kernel: Kernel) -> None:
    kernel.run("%%sandlot\nsurvivor = 3")
    msg_id = kernel.client.execute(
        "%%sandlot\nimport time\nprint('sleeping', flush=True)\ntime.sleep(60)"
    )
    while True:  # the cell runs in the sandbox: interrupt now
        msg = kernel.client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    kernel.manager.interrupt_kernel()
    errors = []
    while True:
        msg = kernel.client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "error":
            errors.append(msg["content"]["ename"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    kernel.reply(msg_id)
    assert errors == ["KeyboardInterrupt"]
    _, messages = kernel.run("%%sandlot\nsurvivor")
    assert results(messages) == [{"text/plain": "3"}]


def test_sandlot_errors_and_bad_usage_are_one_line(kernel: Kernel) -> None:
    status, messages = kernel.run("%sandlot_install /workspace/no-such-0.1-py3-none-any.whl")
    assert status == "error"
    [err] = [c for k, c in messages if k == "error"]
    assert err["ename"] == "InstallError"
    assert not any("site-packages" in line or "sdk" in line for line in err["traceback"])
    status, messages = kernel.run("%%sandlot --timeout soon\n1")
    assert status == "error"
    # IPython prints a UsageError as one line on stderr.
    errors = "".join(c["text"] for k, c in messages if k == "stream" and c["name"] == "stderr")
    assert "UsageError: --timeout must be a number of seconds" in errors


def test_an_ended_sandbox_is_replaced_with_a_warning(kernel: Kernel) -> None:
    kernel.run("%%sandlot\nbefore = 1")
    _, messages = kernel.run("import os; os.getpid()")
    pid = results(messages)[0]["text/plain"]
    [info] = sandlot.Sandbox.list(metadata={"sandlot.notebook": f"kernel-{pid}"})
    sandlot.Sandbox.connect(info.id).kill()  # as its idle timeout would
    status, messages = kernel.run("%%sandlot\n'before' in globals()")
    assert status == "ok", messages
    assert results(messages) == [{"text/plain": "False"}]
    stderr = "".join(c["text"] for k, c in messages if k == "stream" and c["name"] == "stderr")
    assert "the sandbox of this kernel had ended" in stderr


def test_kernel_exit_kills_its_sandbox() -> None:
    k = Kernel()
    try:
        k.run("%load_ext sandlot")
        status, messages = k.run("%%sandlot\n1")
        assert status == "ok", messages
        status, messages = k.run("import os; os.getpid()")
        pid = results(messages)[0]["text/plain"]
        mine = {"sandlot.notebook": f"kernel-{pid}"}
        assert len(sandlot.Sandbox.list(metadata=mine)) == 1
    finally:
        k.stop()
    assert sandlot.Sandbox.list(metadata=mine) == []


def test_a_named_session_outlives_the_kernel() -> None:
    name = f"nb-keep-{os.getpid()}"
    first = Kernel()
    try:
        first.run("%load_ext sandlot")
        status, messages = first.run(f"%%sandlot --session {name}\nkept = [1, 2]")
        assert status == "ok", messages
        first.run(f"%%sandlot --session {name}\nopen('/workspace/note.txt', 'w').write('hi')")
    finally:
        first.stop()  # detaches: checkpoint, then destroy
    second = Kernel()
    try:
        second.run("%load_ext sandlot")
        status, messages = second.run(
            f"%%sandlot --session {name}\nkept, open('/workspace/note.txt').read()"
        )
        assert status == "ok", messages
        assert results(messages) == [{"text/plain": "([1, 2], 'hi')"}]
    finally:
        second.stop()


def test_parse_and_remote_errors_offline() -> None:
    from IPython.core.error import UsageError

    from sandlot.notebook import _parse, _remote_error

    assert _parse("--session 'my nb' --timeout=5 --trust") == (
        {"session": "my nb", "timeout": "5", "trust": "yes"},
        [],
    )
    assert _parse("a.whl --session s b") == ({"session": "s"}, ["a.whl", "b"])
    for bad in ("--session", "--session 'open"):
        with pytest.raises(UsageError):
            _parse(bad)
    # The class name is the sandbox's: anything but an identifier becomes RemoteError.
    err = _remote_error("x; import os", "v", "")
    assert type(err).__name__ == "RemoteError"
    long = _remote_error("E", "v", "\n".join(f"line {i}" for i in range(5000)))
    rendered = long._render_traceback_()
    assert len(rendered) == 1002 and rendered[500] == "[... 4000 lines ...]"
    assert rendered[-1] == "E: v"
