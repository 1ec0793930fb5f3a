"""The store's database fixtures (``stores.py``), for the unit tests that use them."""

from stores import db, pg_store, postgres, session, tenant, url  # noqa: F401 (fixtures)
