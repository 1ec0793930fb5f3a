"""The cloudpickle copy sandlot ships beside the agent (agent/persist.py imports it in every
persistent code context): a sandbox must not be able to rewrite it, or code planted there would
run in every later persistent context that imports it (and on every restore)."""

from __future__ import annotations

from typing import Any

import pytest
from attacker import attack, succeeded


@pytest.mark.attack("rewrite or plant files in the shipped cloudpickle copy (/.sandlot/vendor)")
def test_shipped_cloudpickle_is_read_only(shared_sandbox: Any) -> None:
    r = attack(
        shared_sandbox,
        """
        import glob
        targets = sorted(glob.glob("/.sandlot*/vendor/cloudpickle/*.py"))
        def open_for_writing(t):
            fd = os.open(t, os.O_WRONLY | os.O_APPEND)
            os.close(fd)
            return "opened"
        def plant(folder):
            path = folder + "/planted.py"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)
            os.unlink(path)
            return "planted"
        def rename_and_back(t):
            os.rename(t, t + ".moved")
            os.rename(t + ".moved", t)
            return "renamed"
        for t in targets:
            attempt("write " + t, lambda t=t: open_for_writing(t))
            attempt("rename " + t, lambda t=t: rename_and_back(t))
        for folder in sorted(glob.glob("/.sandlot*/vendor*")) + sorted(
            glob.glob("/.sandlot*/vendor/cloudpickle")
        ):
            attempt("plant " + folder, lambda f=folder: plant(f))
        attempt("swap the folder", lambda: os.rename("/.sandlot/vendor", "/.sandlot/v2"))
        control = attempt("control", lambda: plant("/workspace"))
        report(targets=targets)
        """,
    )
    assert r["control"] == ["ok", "planted"], r["control"]  # the same try works in /workspace
    assert any(t.endswith("/cloudpickle/__init__.py") for t in r["targets"]), r["targets"]
    worked = {k: v for k, v in succeeded(r).items() if k not in ("targets", "control")}
    assert not worked, f"the shipped cloudpickle was changed: {sorted(worked)}"
