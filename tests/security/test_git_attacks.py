"""A workspace's ``.git``, attacked from inside a sandbox: traps meant to run on the host when
the host checkpoints the workspace, or restores it into the next sandbox of the session.

The attacker, in a sandbox attached to a durable session, fills ``/workspace/.git`` with every
hook git knows (executable) and a config whose fsmonitor, hooksPath, sshCommand, pager, filters,
diff drivers, aliases, credential helper and an include each run a program; each trap appends
to a marker file in a host folder (a trap would run as the host process that touched the
repository, so it could write there). Contained: the session's checkpoint (on detach) and
restore (into a new sandbox) leave no marker, and the next sandbox gets the same files back,
as data. Whether git run *by the user on the host* in such a folder obeys them is outside
sandlot (see docs/security.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import spec_for

import sandlot

pytestmark = pytest.mark.timeout(240)

HOOKS = (  # noqa: SIM905 (a list of words reads better as words)
    "applypatch-msg pre-applypatch post-applypatch pre-commit pre-merge-commit "
    "prepare-commit-msg commit-msg post-commit pre-rebase post-checkout post-merge pre-push "
    "pre-receive update proc-receive post-receive post-update reference-transaction "
    "push-to-checkout pre-auto-gc post-rewrite sendemail-validate fsmonitor-watchman "
    "p4-changelist p4-prepare-changelist p4-post-changelist p4-pre-submit post-index-change"
).split()

PLANT = r"""
import json, os, sys
markers, hooks = sys.argv[1], json.loads(sys.argv[2])
trap = lambda name: "sh -c 'echo %s >> %s/ran' #" % (name, markers)
os.makedirs("/workspace/.git/hooks", exist_ok=True)
os.makedirs("/workspace/.git/evil-hooks", exist_ok=True)
os.makedirs("/workspace/.git/refs/heads", exist_ok=True)
os.makedirs("/workspace/.git/objects/info", exist_ok=True)
open("/workspace/.git/HEAD", "w").write("ref: refs/heads/main\n")
for folder in ("hooks", "evil-hooks"):
    for name in hooks:
        path = "/workspace/.git/%s/%s" % (folder, name)
        open(path, "w").write("#!/bin/sh\necho hook %s >> %s/ran\n" % (name, markers))
        os.chmod(path, 0o755)
settings = {
    "core": {"fsmonitor": trap("fsmonitor"), "hooksPath": "/workspace/.git/evil-hooks",
             "sshCommand": trap("sshCommand"), "pager": trap("pager"),
             "editor": trap("editor"), "askPass": trap("askPass"), "gitProxy": trap("gitProxy")},
    'filter "evil"': {"clean": trap("clean"), "smudge": trap("smudge"),
                      "process": trap("process"), "required": "true"},
    'diff "evil"': {"textconv": trap("textconv")},
    "diff": {"external": trap("diff.external")},
    "alias": {"status": "!" + trap("alias")},
    "credential": {"helper": "!" + trap("credential")},
    "gpg": {"program": trap("gpg")},
    "include": {"path": "/workspace/evil.gitconfig"},
}
with open("/workspace/.git/config", "w") as f:
    for section, values in settings.items():
        f.write("[%s]\n" % section)
        for key, value in values.items():
            f.write("\t%s = %s\n" % (key, value))
open("/workspace/evil.gitconfig", "w").write("[core]\n\tfsmonitor = %s\n" % trap("included"))
open("/workspace/.gitattributes", "w").write("* filter=evil diff=evil\n")
open("/workspace/tracked.txt", "w").write("clean me\n")
os.symlink("/etc", "/workspace/.git/objects/info/alternates-dir")
print("planted")
"""

READ_BACK = r"""
import json, os, stat
out = {}
for folder, dirs, names in os.walk("/workspace"):
    for name in dirs + names:
        path = os.path.join(folder, name)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            out[path] = ["link", os.readlink(path)]
        elif stat.S_ISREG(st.st_mode):
            out[path] = [oct(stat.S_IMODE(st.st_mode)), open(path).read()]
print(json.dumps(out, sort_keys=True))
"""


def _run(sb: Any, script: str, *args: str) -> str:
    sb.files.write("/tmp/script.py", script)
    result = sb.commands.run(["python3", "/tmp/script.py", *args], timeout=60)
    assert result.exit_code == 0, result.stderr
    return str(result.stdout)


@pytest.mark.attack("workspace .git hooks and config run by a host checkpoint or restore", hole=8)
def test_git_traps_in_a_session_workspace(
    provider: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    settings = spec_for(provider, request)  # Sandbox.create's keyword arguments
    name = settings.pop("provider")
    settings.update(settings.pop("config", {}))
    session = sandlot.Session.create(metadata={"attack": "hole-8"})
    try:
        with session.sandbox(name, **settings) as sb:
            assert _run(sb, PLANT, str(markers), json.dumps(HOOKS)).strip() == "planted"
            before = json.loads(_run(sb, READ_BACK))
        # detached: the host checkpointed /workspace; the next sandbox gets it restored
        with session.sandbox(name, **settings) as sb:
            after = json.loads(_run(sb, READ_BACK))
        assert session.refresh().checkpoint is not None
    finally:
        session.delete()
    assert list(markers.iterdir()) == [], (markers / "ran").read_text()
    assert after == before  # the same bytes, modes and links: data
    assert after["/workspace/.git/hooks/pre-commit"][0] == "0o755"
    assert after["/workspace/.git/objects/info/alternates-dir"] == ["link", "/etc"]
