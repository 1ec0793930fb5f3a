"""What the SDK takes from an agent's process list: checked, since a sandbox is hostile."""

from __future__ import annotations

import pytest

from sandlot.errors import ProtocolError
from sandlot.models import ProcessInfo
from sandlot.sdk.commands import _process_infos

GOOD = {
    "pid": 7, "kind": "pty", "cmd": None, "argv": ["bash", "-i"], "running": True,
    "exit_code": None, "signal": None, "timed_out": False, "start": 0, "end": 12,
    "attached": 1, "started_at": 1796584157.5, "cols": 80, "rows": 24,
}  # fmt: skip


def test_a_well_formed_list() -> None:
    (info,) = _process_infos({"processes": [GOOD]})
    assert isinstance(info, ProcessInfo)
    assert (info.pid, info.kind, info.argv, info.cols, info.end) == (
        7,
        "pty",
        ["bash", "-i"],
        80,
        12,
    )


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        {"processes": "many"},
        {"processes": [GOOD | {"kind": "daemon"}]},
        {"processes": [GOOD | {"pid": "7"}]},
        {"processes": [GOOD | {"start": -1}]},
        {"processes": [GOOD | {"argv": [1, 2]}]},
        {"processes": [{"pid": 7}]},
    ],
)
def test_a_malformed_list_is_a_protocol_error(answer: object) -> None:
    with pytest.raises(ProtocolError):
        _process_infos(answer)
