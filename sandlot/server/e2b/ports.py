"""(to be built: see /tmp/s19/common.md)"""

from __future__ import annotations

from typing import Any

from starlette.responses import PlainTextResponse


async def forward(scope: Any, receive: Any, send: Any) -> None:
    await PlainTextResponse("not served yet", status_code=502)(scope, receive, send)
