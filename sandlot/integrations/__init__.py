"""sandlot as the sandbox of agent frameworks: one module per framework, each a thin front
over the SDK (docs/integrations.md). Import the module you need; each needs its framework
(the extra of the same name) and nothing here imports one before that.

- :mod:`sandlot.integrations.pydantic_ai`: a ``pydantic_ai.workspaces`` backend
- :mod:`sandlot.integrations.deepagents`: LangChain deepagents' ``BaseSandbox``
- :mod:`sandlot.integrations.openai_agents`: the OpenAI Agents SDK's sandbox client
- :mod:`sandlot.integrations.smolagents`: a smolagents Python executor

The MCP server is :mod:`sandlot.mcp` (``sandlot mcp``, and ``/mcp`` on ``sandlot serve``).
"""
