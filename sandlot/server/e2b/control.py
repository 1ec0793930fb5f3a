"""(to be built: see /tmp/s19/common.md)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["e2b"], include_in_schema=False)
