"""``sandlot remote up`` and ``down``: a sandlot server on a host reached over SSH.

``up`` installs this sandlot on the host (a wheel built here from the running code, into a
venv there), starts ``sandlot serve`` there detached and bound to the host's loopback, creates
an admin key for it, and reaches it through an SSH tunnel that a small detached local process
keeps open. What it started is recorded in ``$SANDLOT_HOME/remote/`` (mode 0600: the record
holds the key) so that ``down`` can stop it from any later shell.

Host keys are always checked against known_hosts and an unknown host is an error, never a
prompt. asyncssh (the ``ssh`` extra) is imported only when a connection is made.

One module per step: ``target`` (where), ``ssh`` (connecting, running commands there),
``wheel`` (what is installed), ``install`` (the venv), ``server`` (``sandlot serve`` there),
``tunnel`` (the local process), ``record`` (the state file), ``progress`` (what is shown),
``exits`` (the exit codes) and ``provision`` (``up`` and ``down``, the steps in order).
The command line is :mod:`sandlot.cli.remote`; remote mode's HTTP client is
:mod:`sandlot.remote`, which knows nothing of this package.
"""

from .exits import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_HOST_KEY,
    EXIT_INSTALL,
    EXIT_NOT_READY,
    EXIT_PORT_IN_USE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    exit_code_for,
)
from .progress import Reporter, Step
from .provision import DownResult, UpOptions, UpResult, down, readyz, up
from .record import Record, all_records, read_record, record_path, records_dir
from .target import SshOptions, Target, parse_target
from .tunnel import tunnel_alive
from .wheel import Wheel, build_wheel

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_HOST_KEY",
    "EXIT_INSTALL",
    "EXIT_NOT_READY",
    "EXIT_PORT_IN_USE",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "DownResult",
    "Record",
    "Reporter",
    "SshOptions",
    "Step",
    "Target",
    "UpOptions",
    "UpResult",
    "Wheel",
    "all_records",
    "build_wheel",
    "down",
    "exit_code_for",
    "parse_target",
    "read_record",
    "readyz",
    "record_path",
    "records_dir",
    "tunnel_alive",
    "up",
]
