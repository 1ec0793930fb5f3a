"""``python -m sandlot.cli``: the same as the ``sandlot`` command."""

from .entry_point import main

main()
