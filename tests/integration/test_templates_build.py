"""Building templates for real: a host base, file steps copied on the host, pip and run steps
in build-mode bwrap sandboxes, the cache (a changed step redoes itself and what follows,
nothing before), a failed step reported by name with its log, and a sandbox started from
the result seeing the file and the package (and the host not seeing them).

No network: the pip step installs a wheel made here, put in the template by a file step.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlot.errors import TemplateBuildError
from sandlot.manager import Manager
from sandlot.models import SandboxSpec
from sandlot.sdk.sandbox import AsyncSandbox
from sandlot.store import default_home
from sandlot.workspace.templates import TemplateManifest, TemplateStore, parse_step
from sandlot.workspace.templates.build import build

pytestmark = pytest.mark.timeout(120)

needs_template_sandboxes = pytest.mark.skipif(
    "template" not in SandboxSpec.model_fields,
    reason="this tree's providers cannot start sandboxes from templates yet (SandboxSpec "
    "has no template field)",
)
PACKAGE = "sandlot_tpl_probe"


def make_wheel(folder: Path, value: str) -> Path:
    """A minimal pure-Python wheel of PACKAGE whose VALUE is ``value``."""

    def digest(data: bytes) -> str:
        raw = hashlib.sha256(data).digest()
        return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    info = f"{PACKAGE}-0.1.dist-info"
    files = {
        f"{PACKAGE}/__init__.py": f"VALUE = {value!r}\n".encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{n},{digest(d)},{len(d)}\n" for n, d in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = folder / f"{PACKAGE}-0.1-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    make_wheel(folder, "from-the-wheel")
    (folder / "helpers.py").write_text("HELPER = 1\n")
    return folder


def file_steps(folder: Path, names: list[str]) -> list:
    return [parse_step("file", f"{folder / n}:/opt/tpl/{n}") for n in names]


async def run_build(name: str, steps: list, **options) -> tuple[list, TemplateManifest]:
    events: list = []
    manager = Manager()
    try:
        manifest = await build(manager, name, "host", steps, on_event=events.append, **options)
    finally:
        await manager.close()
    return events, manifest


def cached_flags(events: list) -> list[bool]:
    return [e.cached for e in events if e.type == "step_finished" and e.layer]


async def test_a_changed_file_step_redoes_itself_and_what_follows(tmp_path):
    for name in "abc":
        (tmp_path / name).write_text(name)
    steps = file_steps(tmp_path, ["a", "b", "c"])
    await run_build("files", steps)
    events, _ = await run_build("files", steps)
    assert cached_flags(events) == [True, True, True]
    (tmp_path / "b").write_text("b, changed")
    events, manifest = await run_build("files", steps)
    assert cached_flags(events) == [True, False, False]
    store = TemplateStore(default_home())
    view = store.resolve("files").lowers
    assert (view[1] / "opt/tpl/b").read_text() == "b, changed"
    assert store.log_path(manifest.digest()).is_file()
    assert [e.type for e in events][-1] == "done"
    # --no-cache runs every step again; the layers in use stay as they are
    events, again = await run_build("files", steps, no_cache=True)
    assert cached_flags(events) == [False, False, False]
    assert again.layer_ids == manifest.layer_ids  # the same content: the same layers
    assert all(store.layer_dir(i).is_dir() for i in manifest.layer_ids)


@needs_template_sandboxes
async def test_build_from_host_with_file_and_pip_steps_and_start_a_sandbox(inputs):
    wheel = f"/opt/tpl/{PACKAGE}-0.1-py3-none-any.whl"
    steps = [
        *file_steps(inputs, [Path(wheel).name]),
        parse_step("pip", [wheel]),
        *file_steps(inputs, ["helpers.py"]),
        parse_step("env", "TPL_GREETING=hello"),
    ]
    events, _ = await run_build("probe", steps)
    finished = [e for e in events if e.type == "step_finished"]
    assert [e.name.split()[0] for e in finished] == ["file", "pip", "file", "env"]
    assert finished[1].bytes > 0  # the pip step wrote the package into its layer
    manager = Manager()
    try:
        live = await manager.create(SandboxSpec(template="probe"))
        sb = AsyncSandbox(manager, live)
        try:
            probe = f"import {PACKAGE} as p; print(p.VALUE)"
            result = await sb.commands.run(["python3", "-c", probe])
            assert result.stdout.strip() == "from-the-wheel", result.stderr
            helper = await sb.commands.run(["cat", "/opt/tpl/helpers.py"])
            assert helper.stdout == "HELPER = 1\n"
            env = await sb.commands.run("echo $TPL_GREETING")
            assert env.stdout.strip() == "hello"
        finally:
            await manager.kill(live.info.id)
    finally:
        await manager.close()
    host = subprocess.run(["/usr/bin/python3", "-c", f"import {PACKAGE}"], capture_output=True)
    assert host.returncode != 0  # the host's own python never got it
    assert not Path("/opt/tpl").exists()

    # Changing the helper redoes its step only: the wheel and pip layers are reused.
    (inputs / "helpers.py").write_text("HELPER = 2\n")
    events, _ = await run_build("probe", steps)
    assert cached_flags(events) == [True, True, False]


@needs_template_sandboxes
async def test_a_failed_run_step_is_named_with_its_log(tmp_path):
    steps = [parse_step("env", "X=1"), parse_step("run", "echo building; echo oops >&2; exit 3")]
    events: list = []
    manager = Manager()
    try:
        with pytest.raises(TemplateBuildError) as caught:
            await build(manager, "broken", "host", steps, on_event=events.append)
    finally:
        await manager.close()
    message = str(caught.value)
    assert message.startswith("step 2 (run echo building; echo oops >&2; exit 3): exit 3")
    assert "oops" in message and "building" in message
    log = Path(caught.value.details["log"])
    assert "oops" in log.read_text()
    assert events[-1].type == "failed" and events[-1].index == 2
    store = TemplateStore(default_home())
    with pytest.raises(LookupError):
        store.get("broken")


def test_the_cli_builds_lists_shows_exports_imports_removes_and_collects(
    tmp_path, capsys, monkeypatch
):
    from sandlot.cli.entry_point import main

    # A state folder of its own: its gc must not collect what other tests built.
    monkeypatch.setenv("SANDLOT_HOME", str(tmp_path / "home"))

    def cli(*args: str) -> str:
        with pytest.raises(SystemExit) as done:
            main(["template", *args])
        out, err = capsys.readouterr()
        assert done.value.code == 0, err
        return out

    (tmp_path / "f").write_text("from the cli\n")
    events = [
        json.loads(line)
        for line in cli("build", "clitpl", "--from", "host", "--env", "A=1",
                        "--file", f"{tmp_path / 'f'}:/opt/clitpl/f", "--json").splitlines()
    ]  # fmt: skip
    assert [e["name"] for e in events if e["type"] == "step_started"] == [
        "env A=1",
        f"file {tmp_path / 'f'}:/opt/clitpl/f",
    ]
    assert events[-1]["type"] == "done"
    assert "clitpl" in [t["name"] for t in json.loads(cli("ls", "--json"))]
    shown = json.loads(cli("show", "clitpl", "--json"))
    assert shown["env"] == {"A": "1"} and shown["base"]["kind"] == "host"
    assert shown["digest"] == "sha256:" + events[-1]["digest"] and Path(shown["log"]).is_file()
    cli("export", "clitpl", "-o", str(tmp_path / "t.tar"))
    cli("import", str(tmp_path / "t.tar"), "--name", "clicopy")
    copy = json.loads(cli("show", "clicopy", "--json"))
    assert copy["steps"] == shown["steps"]
    cli("rm", "clitpl", "clicopy")
    assert "clitpl" not in [t["name"] for t in json.loads(cli("ls", "--json"))]
    report = json.loads(cli("gc", "--json"))
    assert events[-1]["digest"] in report["removed_manifests"]


@pytest.fixture
def web_on_loopback(tmp_path) -> Iterator[str]:
    """An HTTP server on 127.0.0.2 (not in a sandbox's NO_PROXY: reached through its proxy)."""
    import functools
    import http.server
    import threading

    (tmp_path / "x").write_text("served\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.2:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_run_steps_have_no_network_unless_allowed(web_on_loopback):
    fetch = (
        "python3 -c \"import urllib.request as u; open('/opt/fetched', 'w')"
        f".write(u.urlopen('http://{web_on_loopback}/x').read().decode())\""
    )
    steps = [parse_step("run", fetch)]
    manager = Manager()
    try:
        with pytest.raises(TemplateBuildError, match="exit 1"):
            await build(manager, "offline", "host", steps)
        await build(manager, "online", "host", steps, allow=[web_on_loopback])
    finally:
        await manager.close()
    root = TemplateStore(default_home()).resolve("online").lowers[0]
    assert (root / "opt/fetched").read_text() == "served\n"


async def test_a_run_step_makes_and_works_in_the_workdir():
    steps = [parse_step("workdir", "/opt/wd"), parse_step("run", "touch made-here")]
    manager = Manager()
    try:
        manifest = await build(manager, "workdir", "host", steps)
    finally:
        await manager.close()
    assert manifest.workdir == "/opt/wd"
    root = TemplateStore(default_home()).resolve("workdir").lowers[0]
    assert (root / "opt/wd/made-here").is_file()
