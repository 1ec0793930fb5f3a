"""The ``sandlot`` command line: run commands in sandboxes, list, exec into and kill them.

Exit codes (see docs/cli.md): ``run`` and ``exec`` exit with the command's own code (128+n
when a signal ended it), 124 when the command timed out, 125 when sandlot itself failed
(the sandbox could not start or died). ``run-code`` exits 0 when the cell succeeded, 1 when
it raised, 124 on timeout and 125 when sandlot failed; ``repl`` exits 0 at the end of input
and 125 when sandlot failed. Every command exits 2 on bad input (unknown provider, sandbox id
or code context, malformed ``K=V``, empty command, missing file, bad option) and prints one
red line on stderr, never a traceback; other sandlot failures exit 1 outside ``run``/``exec``/
``run-code``/``repl``.

One module per command group, as :mod:`entry_point` assembles them: ``run`` (run, exec),
``code`` (run-code, repl), ``sandboxes`` (providers, ls, kill, gc), ``create``, ``cp``,
``logs``, ``sessions``, ``pool``, ``secrets``, ``relay``, ``remote`` (up, down, status),
``server`` (serve, keys), ``mcp`` (the MCP server over stdio), ``completion``; what they
share is in ``_common``. Importing this package adds little to importing ``sandlot``: rich,
the providers and the manager are imported inside the commands that use them.
"""

from .._lazy import lazy_names
from .entry_point import main

__all__ = ["app", "main"]

# Built on use: `main` builds only the command it runs.
__getattr__, __dir__ = lazy_names(__name__, {"app": ".entry_point"}, __all__)
