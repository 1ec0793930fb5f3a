"""(to be built: see /tmp/s19/common.md)"""

from __future__ import annotations

from starlette.routing import Route

routes: list[Route] = []
