"""E2B's ``templateID`` naming one of the caller's own templates (built through sandlot's
``/v1/templates`` with the same key), driven by the official ``e2b`` SDK, unmodified."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from e2b import Sandbox, SandboxException

pytestmark = pytest.mark.timeout(120)


def test_a_template_id_names_the_callers_template(e2b_server: Any) -> None:
    content = b"from the template\n"
    step = {
        "kind": "file",
        "dst": "/opt/e2b.txt",
        "content_b64": base64.b64encode(content).decode(),
    }
    answer = httpx.post(
        e2b_server.url + "/v1/templates",
        json={"name": "e2b-mytpl", "steps": [step]},
        headers={"Authorization": f"Bearer {e2b_server.api_key}"},
        timeout=60,
    )
    assert answer.status_code == 201, answer.text
    sbx = Sandbox.create(template="e2b-mytpl", timeout=60)
    try:
        assert sbx.files.read("/opt/e2b.txt") == content.decode()
        assert sbx.get_info().template_id == "e2b-mytpl"
        assert sbx.commands.run("pwd").stdout == "/home/user\n"  # E2B's layout still holds
    finally:
        sbx.kill()
    # Another tenant has no such template: E2B's "not found".
    with pytest.raises(SandboxException, match="template 'e2b-mytpl' not found") as err:
        Sandbox.create(template="e2b-mytpl", api_key=e2b_server.other_key, timeout=60)
    assert getattr(err.value, "status_code", None) == 404
