"""State outside the process, in two stores named for what they hold.

- The **host registry** (:mod:`sandlot.store.registry`, ``<home>/state.db``, plain
  :mod:`sqlite3`, ``PRAGMA user_version`` migrations), both modes: what this host's processes
  share about its sandboxes (handles, owners, ports, egress, warm pools) and the embedded
  secret store. Per host; loaded by every manager.
- The **server/session database** (:mod:`sandlot.store.database`, ``<home>/server.db`` or
  PostgreSQL, SQLAlchemy + Alembic migrations): tenants and API keys (:mod:`.keys`), sessions,
  leases and the run lock (:mod:`.sessions`), the sandboxes a session or tenant owns and
  executions (:mod:`.records`), the event log (:mod:`.eventlog`, :mod:`.logwriter`,
  :mod:`.encoding`), server secrets, retention (:mod:`.retention`, server only). Used by a
  server, and by embedded durable sessions (:class:`sandlot.Session`), which open
  ``server.db`` in the state folder; it can be shared by several hosts (PostgreSQL).
- The **owner lock** (:mod:`.owner`, ``<home>/owner.lock``): the one process (a server) that
  looks after the folder's detached sandboxes.

Importing this package loads the registry only; the database's modules load SQLAlchemy.
"""

from .registry import Store, default_home

__all__ = ["Store", "default_home"]
