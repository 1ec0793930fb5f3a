"""Workspace checkpoints: content-addressed, incremental snapshots of a sandbox's /workspace,
kept in a store (a local folder, or any S3-compatible bucket) so a session outlives its
sandboxes. See docs/workspaces.md.

    store = open_store("local", home)               # or "s3://bucket/prefix"
    info = await store.checkpoint("ses-0123456789ab", folder, index)
    await store.restore("ses-0123456789ab", other_folder, other_index)
"""

from .manifest import CheckpointInfo, Entry, Manifest, RestoreInfo, check_session_id
from .store import WorkspaceStore
from .url import check_store_url, open_store

__all__ = [
    "CheckpointInfo",
    "Entry",
    "Manifest",
    "RestoreInfo",
    "WorkspaceStore",
    "check_session_id",
    "check_store_url",
    "open_store",
]
