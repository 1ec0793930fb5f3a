"""State outside the process: sandbox records (SQLite in the user's state folder)."""

from .registry import Store, default_home

__all__ = ["Store", "default_home"]
