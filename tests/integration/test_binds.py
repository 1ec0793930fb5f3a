"""Host binds (``binds=[{"host", "path", "mode"}]``) in bwrap sandboxes: a read-write bind is
the user's own folder (the sandbox's writes land there, owned by the user who runs sandlot),
a read-only one cannot be written, and a bad bind is refused before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot.models import MAX_BINDS


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("binds")
    (root / "proj").mkdir()
    (root / "proj" / "README").write_text("from the host\n")
    (root / "ref").mkdir()
    (root / "ref" / "data.txt").write_text("reference\n")
    (root / "one.cfg").write_text("key=1\n")
    (root / "notes.md").write_text("notes\n")
    (root / "link-to-proj").symlink_to(root / "proj")
    return root


@pytest.fixture(scope="module")
def sb(project: Path) -> Iterator[sandlot.Sandbox]:
    binds = [
        {"host": str(project / "link-to-proj"), "path": "/project", "mode": "rw"},
        {"host": str(project / "ref"), "path": "/mnt/ref"},  # ro by default
        {"host": str(project / "one.cfg"), "path": "/srv/one.cfg", "mode": "ro"},
        {"host": str(project / "notes.md"), "path": "/srv/notes.md", "mode": "rw"},
    ]
    with sandlot.Sandbox.create(binds=binds) as box:
        yield box


def test_a_rw_bind_is_the_users_folder_and_writes_are_the_users(sb, project):
    done = sb.commands.run(
        "cat /project/README && echo made > /project/new.txt && mkdir -p /project/sub/deep "
        "&& echo x > /project/sub/deep/f && rm /project/README"
    )
    assert done.exit_code == 0, done.stderr
    assert done.stdout == "from the host\n"
    proj = project / "proj"  # the symlink was resolved once: its target is what is bound
    assert (proj / "new.txt").read_text() == "made\n"
    assert not (proj / "README").exists()
    for made in (proj / "new.txt", proj / "sub", proj / "sub" / "deep" / "f"):
        assert made.stat().st_uid == os.getuid()
        assert made.stat().st_gid == os.getgid()
    # A bind, not a copy: what the host writes is there at once.
    (proj / "from-host").write_text("live\n")
    assert sb.commands.run("cat /project/from-host").stdout == "live\n"
    assert sb.files.read("/project/new.txt") == "made\n"  # the file API sees it too
    sb.files.write("/project/api.txt", "via files\n")
    assert (proj / "api.txt").read_text() == "via files\n"
    assert (proj / "api.txt").stat().st_uid == os.getuid()


def test_a_ro_bind_cannot_be_written(sb, project):
    done = sb.commands.run(
        "cat /mnt/ref/data.txt /srv/one.cfg; echo x > /mnt/ref/data.txt; "
        "touch /mnt/ref/new; echo y > /srv/one.cfg; rm /mnt/ref/data.txt; echo end"
    )
    assert done.stdout == "reference\nkey=1\nend\n"
    assert done.stderr.count("Read-only file system") == 4, done.stderr
    assert (project / "ref" / "data.txt").read_text() == "reference\n"
    assert sorted(os.listdir(project / "ref")) == ["data.txt"]
    assert (project / "one.cfg").read_text() == "key=1\n"
    with pytest.raises(sandlot.SandlotError):
        sb.files.write("/mnt/ref/data.txt", "no")


def test_the_rest_of_the_sandbox_is_unchanged(sb):
    done = sb.commands.run("ls /; test -w /workspace && echo ws-ok; touch /newdir 2>&1 | head -1")
    assert "ws-ok" in done.stdout
    assert "project" in done.stdout and "Read-only file system" in done.stdout


def _bad(binds, **kw):
    with pytest.raises(sandlot.InvalidArgumentError) as caught:
        sandlot.Sandbox.create(binds=binds, **kw)
    return str(caught.value)


def test_bad_binds_are_refused_before_anything_starts(project):
    proj = str(project / "proj")
    assert "absolute" in _bad([{"host": "proj", "path": "/project"}])
    assert "normalised" in _bad([{"host": f"{proj}/../proj", "path": "/project"}])
    assert "normalised" in _bad([{"host": proj, "path": "/project/../etc"}])
    assert "No such file" in _bad([{"host": f"{proj}-missing", "path": "/project"}])
    assert "neither a folder" in _bad([{"host": "/dev/null", "path": "/project"}])
    assert "mode" in _bad([{"host": proj, "path": "/project", "mode": "rwx"}])
    assert "extra" in _bad([{"host": proj, "path": "/project", "uid": 0}]).lower()
    for path in ("/", "/proc", "/proc/self", "/dev/x", "/sys", "/workspace", "/workspace/x",
                 "/tmp", "/usr/bin", "/etc", "/.sandlot", "/bin", "/lib64", "/root"):  # fmt: skip
        assert "path" in _bad([{"host": proj, "path": path}]), path
    assert "overlap" in _bad(
        [{"host": proj, "path": "/project"}, {"host": proj, "path": "/project/sub"}]
    )
    assert "workspace_alias" in _bad(
        [{"host": proj, "path": "/home/user/p"}], workspace_alias="/home/user"
    )
    many = [{"host": proj, "path": f"/mnt/p{i}"} for i in range(MAX_BINDS + 1)]
    assert f"at most {MAX_BINDS}" in _bad(many)
    assert "ro_binds" in _bad([{"host": proj, "path": "/opt/x"}], ro_binds=["/opt"])
    assert "process provider" in _bad([{"host": proj, "path": "/project"}], provider="process")
    # One bind or a path where a list belongs: one clear error, not one per character.
    assert "must be a list of binds" in _bad(proj)
    assert "must be a list of binds" in _bad({"host": proj, "path": "/project"})


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches host users")
def test_a_rw_bind_with_another_host_user_is_refused(project):
    proj = str(project / "proj")
    assert "host_user" in _bad([{"host": proj, "path": "/p", "mode": "rw"}], host_user="nobody")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as nobody")
def test_a_non_root_user_gets_its_own_files(tmp_path):
    """sandlot run by an ordinary user (here nobody): the rw bind's new files are its."""
    nobody = 65534
    tmp_path.chmod(0o755)
    proj = tmp_path / "proj"
    home = tmp_path / "home"
    for folder in (proj, home):
        folder.mkdir()
        os.chown(folder, nobody, nobody)
    script = (
        "import json, os, sys, sandlot\n"
        "binds = [{'host': sys.argv[1], 'path': '/project', 'mode': 'rw'}]\n"
        "with sandlot.Sandbox.create(binds=binds) as sb:\n"
        "    r = sb.commands.run('echo hi > /project/mine && id -u')\n"
        "print(json.dumps([r.exit_code, r.stdout, os.stat(sys.argv[1] + '/mine').st_uid]))\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "SANDLOT_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "HOME": str(home),
    }
    try:
        subprocess.run([sys.executable, "-c", ""], user=nobody, timeout=60, check=True)
    except (PermissionError, subprocess.CalledProcessError):
        pytest.skip(f"{sys.executable} (and sandlot's packages) cannot be run by nobody")
    done = subprocess.run(
        [sys.executable, "-c", script, str(proj)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        user=nobody,
        group=nobody,
        extra_groups=[],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    code, out, uid = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0 and out.strip() == "1000"  # the sandbox's own uid inside
    assert uid == nobody  # and the host user's outside
    assert (proj / "mine").stat().st_uid == nobody


def test_a_rw_bind_of_one_file_can_be_written_not_replaced(sb, project):
    """The agent's Landlock rule for a single file takes file rights only (a folder's would
    make the kernel refuse the rule): writing in place works, the mount point stays."""
    done = sb.commands.run("echo more >> /srv/notes.md && echo ok; rm /srv/notes.md; echo end")
    assert done.stdout == "ok\nend\n", done.stderr
    assert (project / "notes.md").read_text() == "notes\nmore\n"
    # files.write replaces a file atomically (a new file renamed over it, in its folder):
    # not possible for a bound file in the read-only root, and refused as such.
    with pytest.raises(sandlot.PermissionDeniedError, match="Read-only"):
        sb.files.write("/srv/notes.md", "rewritten\n")
    assert (project / "notes.md").read_text() == "notes\nmore\n"
