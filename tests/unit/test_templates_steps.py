"""Build steps without a sandbox: the command-line order of steps, what a pip step may reach
(read from pip's configuration, never written down), the apt sources' hosts, and file-step
destinations through symlinked folders."""

from __future__ import annotations

import pytest

from sandlot.cli.templates import parse_steps
from sandlot.egress.policy import NetworkPolicy
from sandlot.errors import InvalidArgumentError
from sandlot.workspace.templates import check_steps, parse_step
from sandlot.workspace.templates.steps import (
    PIP_MOUNTS,
    apt_hosts,
    network_policy,
    pip_settings,
    resolve_in_view,
)


def test_steps_keep_the_command_line_order():
    steps = parse_steps(
        ["--pip", "numpy", "pandas", "--file", "./h.py:/opt/h.py", "--run", "make all",
         "--env=K=V", "--apt", "graphviz", "--workdir", "/w"]
    )  # fmt: skip
    assert [s.label() for s in steps] == [
        "pip numpy pandas",
        "file ./h.py:/opt/h.py",
        "run make all",
        "env K=V",
        "apt graphviz",
        "workdir /w",
    ]


@pytest.mark.parametrize(
    "words",
    [
        ["numpy"],  # no option first
        ["--run", "a", "b"],  # one value only: quote it
        ["--pip"],
        ["--pip", "--index-url=http://x"],  # an option smuggled in as a requirement
        ["--apt", "-oAPT::x=y"],
        ["--file", "nodst"],
        ["--file", "a:relative"],
        ["--env", "1BAD=x"],
        ["--workdir", "/a/../b"],
    ],
)
def test_bad_steps_are_refused(words):
    with pytest.raises(InvalidArgumentError):
        parse_steps(words)


def test_steps_are_a_closed_union():
    with pytest.raises(InvalidArgumentError):
        check_steps([{"kind": "run", "command": "x", "extra": 1}])
    with pytest.raises(InvalidArgumentError):
        check_steps([{"kind": "curl", "url": "x"}])
    assert check_steps([parse_step("run", "true")])[0].kind == "run"


def test_pip_settings_come_from_the_host_configuration(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (tmp_path / "mirror/simple").mkdir(parents=True)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "none.conf"))
    environ = {
        "PIP_INDEX_URL": "https://mirror.example.test:8443/simple",
        "PIP_EXTRA_INDEX_URL": f"file://{tmp_path}/mirror/simple http://extra.example.test/s",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_TRUSTED_HOST": "mirror.example.test",
    }
    settings = pip_settings(environ)
    assert settings.hosts == ["mirror.example.test:8443", "extra.example.test:80"]
    assert settings.env["PIP_INDEX_URL"] == environ["PIP_INDEX_URL"]
    # a PEP 503 tree is bound from its top, so its relative file links resolve
    assert settings.env["PIP_EXTRA_INDEX_URL"] == (
        f"file://{PIP_MOUNTS}/0/simple http://extra.example.test/s"
    )
    assert settings.env["PIP_FIND_LINKS"] == f"{PIP_MOUNTS}/1"
    assert settings.binds == [
        (str(tmp_path / "mirror"), f"{PIP_MOUNTS}/0"),
        (str(wheels), f"{PIP_MOUNTS}/1"),
    ]
    assert settings.env["PIP_BREAK_SYSTEM_PACKAGES"] == "1"


def test_the_policy_pins_what_the_host_resolves_a_configured_name_to():
    policy = network_policy(["localhost:3141", "10.1.2.3:80", "no-such-host.invalid:443"])
    assert "localhost:3141" in policy["allow"] and "127.0.0.1:3141" in policy["allow"]
    assert "127.0.0.1" in policy["resolve"]["localhost"]
    assert "10.1.2.3:80" in policy["allow"] and "10.1.2.3" not in policy["resolve"]
    assert "no-such-host.invalid:443" in policy["allow"]
    assert "no-such-host.invalid" not in policy["resolve"]
    NetworkPolicy(**policy)  # a valid policy


def test_apt_hosts_are_read_from_the_template(tmp_path):
    root = tmp_path / "root"
    (root / "etc/apt/sources.list.d").mkdir(parents=True)
    (root / "etc/apt/sources.list").write_text(
        "# deb http://commented.example.test/debian bookworm main\n"
        "deb [arch=amd64] http://one.example.test/debian bookworm main\n"
    )
    (root / "etc/apt/sources.list.d/x.sources").write_text(
        "Types: deb\nURIs: https://two.example.test:8080/debian\nSuites: bookworm\n"
    )
    (root / "etc/apt/sources.list.d/y.list").symlink_to("/etc/passwd")  # never followed
    assert apt_hosts([root]) == ["one.example.test:80", "two.example.test:8080"]


def test_file_destinations_follow_symlinked_folders_inside_the_view(tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "opt").symlink_to("/srv/elsewhere")
    assert resolve_in_view([root], "/bin/tool") == "/usr/bin/tool"
    assert resolve_in_view([root], "/opt/x/y") == "/srv/elsewhere/x/y"
    assert resolve_in_view([root], "/new/place") == "/new/place"


async def test_apt_on_a_host_base_is_refused_before_anything_runs(tmp_path):
    from sandlot.errors import TemplateBuildError
    from sandlot.workspace.templates.build import build

    steps = [parse_step("file", f"{__file__}:/opt/x.py"), parse_step("apt", ["graphviz"])]
    with pytest.raises(TemplateBuildError, match="apt steps need an image base"):
        await build(None, "aptly", "host", steps, home=tmp_path)
    assert not list((tmp_path / "templates/layers").iterdir())


async def test_a_flood_of_step_output_is_bounded(tmp_path, monkeypatch):
    from sandlot.workspace.templates import build as B

    monkeypatch.setattr(B, "MAX_LOG", 1000)
    events: list = []
    log = B._Log(tmp_path / "log", events.append)
    await log.write("x" * 50_000)  # no newline at all
    await log.write("\nlast words\n")
    log.close()
    assert (tmp_path / "log").stat().st_size < 1200
    assert max(len(e.line) for e in events) <= B.MAX_LINE
    assert log.tail().endswith("last words\n")
