"""sandlot as an MCP server: ``sandlot mcp`` (stdio) and ``/mcp`` on ``sandlot serve``
(streamable HTTP). See docs/mcp.md."""
