"""``sandlot serve``: the HTTP API in front of a manager (FastAPI + uvicorn).

Only the server and its CLI commands import this package's modules (``sandlot.server.app``
for :func:`create_app`), so the SDK never pays for FastAPI or SQLAlchemy.
"""
