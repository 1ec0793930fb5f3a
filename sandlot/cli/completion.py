"""``sandlot completion SHELL``: the script that makes a shell complete sandlot's commands
and options. The shell then runs ``sandlot`` with ``_SANDLOT_COMPLETE`` set, and
:func:`~sandlot.cli.entry_point.main` answers with the whole app (a completion request
names no command, so the lazy registry builds all of them)."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"
    powershell = "powershell"


def completion(
    shell: Annotated[Shell, typer.Argument(help="The shell: bash, zsh, fish or powershell.")],
) -> None:
    """Print the shell completion script.

    bash: eval "$(sandlot completion bash)" in ~/.bashrc; zsh: the same in ~/.zshrc;
    fish: sandlot completion fish > ~/.config/fish/completions/sandlot.fish
    """
    from typer._completion_shared import get_completion_script

    from .entry_point import COMPLETE_VAR

    script = get_completion_script(
        prog_name="sandlot", complete_var=COMPLETE_VAR, shell=shell.value
    )
    sys.stdout.write(script + "\n")
