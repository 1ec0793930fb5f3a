"""sandlot's MCP server (sandlot.mcp) driven by the official ``mcp`` package's client, over
stdio (``sandlot mcp``) and over streamable HTTP (``/mcp`` on a real ``sandlot serve``).

No ``__init__.py`` here: a package of this folder's name must never shadow ``mcp``. The
client helpers are in ``mcp_driver.py`` (importable by name: this folder is on sys.path).
"""
