"""Renames and hard links across folders work in a sandbox where the agent's walls are up
(apt, dpkg and many installers rename a downloaded file from one folder into another).

The agent starts each command in a nested Landlock domain; a domain layer that handles any
file-system right but not REFER makes every such rename fail with EXDEV, which ``mv`` hides
(it falls back to copying) and ``os.rename`` does not.
"""

from __future__ import annotations

import sandlot

SCRIPT = """
import os
for top in ("/tmp", "/workspace"):
    os.makedirs(top + "/a/b")
    open(top + "/a/b/f", "w").close()
    os.rename(top + "/a/b/f", top + "/a/f")
    os.link(top + "/a/f", top + "/a/b/g")
print("renamed")
"""


def test_rename_and_link_across_folders(sb: sandlot.Sandbox) -> None:
    result = sb.commands.run(["python3", "-c", SCRIPT])
    assert result.stdout.strip() == "renamed", result.stderr
    # the walls still stand: nothing is written outside the writable folders
    denied = sb.commands.run(["python3", "-c", "open('/usr/planted', 'w')"])
    assert denied.exit_code != 0
