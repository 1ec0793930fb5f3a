"""Sandbox lifecycle on this host (embedded mode)."""

from .manager import GcReport, LiveSandbox, Manager

__all__ = ["GcReport", "LiveSandbox", "Manager"]
