"""The E2B gateway: E2B's API served by ``sandlot serve`` on its own port (docs/e2b.md), so
code written against the official ``e2b`` and ``e2b-code-interpreter`` SDKs runs against
sandlot by changing a URL.

A front over the same core as sandlot's own API (:class:`~sandlot.server.state.ServerState`):
tenancy, limits, secrets masking and the session transcript apply to E2B calls too.

- :mod:`.control`: the control plane (``/sandboxes``, ``/v2/sandboxes``), keyed by
  ``X-API-KEY``.
- :mod:`.gateway`: requests naming a sandbox (``E2b-Sandbox-Id``/``E2b-Sandbox-Port``
  headers) go to the sandbox side, authenticated by the sandbox's ``X-Access-Token``:
  envd's Connect services (:mod:`.process`, :mod:`.filesystem`), its ``/files`` endpoint
  (:mod:`.files`), and the code interpreter (:mod:`.interpreter`).
"""
