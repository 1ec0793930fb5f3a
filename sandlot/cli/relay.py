"""``sandlot relay``: the daemon, consent (pending, approve, reject) and status."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidArgumentError, NotFoundError
from ._common import print_json

relay_app = typer.Typer(
    help="The air-gapped relay: whitelisted operations for a compute node without internet.",
    no_args_is_help=True,
)

QueueOption = Annotated[
    str | None,
    typer.Option("--queue", help="The queue folder on the shared filesystem (default ~/.relay)."),
]


def _queue(path: str | None) -> Any:
    from ..relay.queue import Queue

    return Queue(path)


ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="Site operations and folders (TOML; keep it off the shared filesystem). "
        "Without it: the built-in operations, in $HOME.",
    ),
]
PollOption = Annotated[float, typer.Option("--poll", min=0.05, help="Seconds between scans.")]
TrustConfigOption = Annotated[
    bool,
    typer.Option(
        "--trust-shared-config",
        help="Accept a config file the compute node could write (inside $HOME or a root).",
    ),
]
ConsentCodesOption = Annotated[
    bool,
    typer.Option(
        "--consent-codes/--no-consent-codes",
        help="Approvals must quote the code this daemon prints (default: on). Without "
        "codes, anything that can write the queue can approve, the agent included.",
    ),
]
ConsentExpiryOption = Annotated[
    float,
    typer.Option("--consent-expiry", min=1, help="Seconds before an undecided request expires."),
]


@relay_app.command()
def daemon(
    queue: QueueOption = None,
    config: ConfigOption = None,
    poll: PollOption = 0.5,
    trust_shared_config: TrustConfigOption = False,
    consent_codes: ConsentCodesOption = True,
    consent_expiry: ConsentExpiryOption = 24 * 3600.0,
) -> None:
    """Serve the queue (on the login node; e.g. inside tmux). Stops on SIGTERM or Ctrl-C."""
    import signal

    from ..relay.daemon import Daemon
    from ..relay.ops import Whitelist

    home = Path.home()
    config_path = Path(os.path.expanduser(config)) if config is not None else None
    whitelist = Whitelist.load(config_path, home)
    if config_path is not None and not trust_shared_config:
        real = config_path.resolve()
        if any(real == root or root in real.parents for root in whitelist.roots):
            raise InvalidArgumentError(
                f"the relay config {config_path} is in a folder the compute node can write "
                "(a compromised node could add its own operations for the next start): keep it "
                "on the login node's own disk, or pass --trust-shared-config"
            )

    def say(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    server = Daemon(
        _queue(queue),
        whitelist,
        poll=poll,
        consent_expiry=consent_expiry,
        consent_codes=consent_codes,
        say=say,
    )

    def stop(signum: int, _frame: Any) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    sys.stderr.write(
        f"relay daemon serving {server.queue.root} (pid {os.getpid()}); operations: "
        f"{', '.join(sorted(whitelist.operations))}\n"
    )
    sys.stderr.flush()
    server.run()


@relay_app.command()
def pending(
    queue: QueueOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests waiting for a person's consent."""
    q = _queue(queue)
    rows = []
    for path in q.entries(q.pending):
        try:
            request = q.read(path) or {}
        except ValueError:
            request = {}
        rows.append(
            {
                "id": path.name[: -len(".json")],
                "op": request.get("op"),
                "args": request.get("args"),
                "cwd": request.get("cwd"),
                "host": request.get("host"),
                "age_s": round(time.time() - path.stat().st_mtime, 1),
            }
        )
    if json_output:
        print_json(rows)
        return
    if not rows:
        sys.stdout.write("no requests await consent\n")
        return
    for row in rows:
        args = " ".join(row["args"] or [])
        sys.stdout.write(
            f"{row['id']}  {row['op']} {args}  in {row['cwd']}  from {row['host']}, "
            f"{row['age_s']:.0f} s ago\n"
        )
    sys.stdout.write(
        "approve with: sandlot relay approve ID --code CODE (the daemon prints each code)\n"
    )


def _decide(queue: str | None, request_id: str, folder: str, code: str | None = None) -> None:
    from ..relay.validate import REQUEST_ID

    q = _queue(queue)
    if not REQUEST_ID.fullmatch(request_id):
        raise InvalidArgumentError(f"{request_id!r} is not a request id")
    if not (q.pending / f"{request_id}.json").exists():
        raise NotFoundError(f"no request {request_id} awaits consent (see 'sandlot relay pending')")
    decision: dict[str, Any] = {"time": time.time(), "by": os.getuid()}
    if code is not None:
        decision["code"] = code
    q.write(getattr(q, folder) / request_id, decision)
    sys.stdout.write(f"{folder} {request_id}\n")


@relay_app.command()
def approve(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    code: Annotated[
        str | None,
        typer.Option("--code", help="The consent code the daemon printed for this request."),
    ] = None,
    queue: QueueOption = None,
) -> None:
    """Let a pending request run. Quote the code the daemon printed in its terminal: an
    approval with a wrong or missing code counts as a rejection (unless the daemon runs
    with --no-consent-codes)."""
    _decide(queue, request_id, "approved", code)


@relay_app.command()
def reject(
    request_id: Annotated[str, typer.Argument(metavar="ID")], queue: QueueOption = None
) -> None:
    """Refuse a pending request (a rejection wins over an approval)."""
    _decide(queue, request_id, "rejected")


@relay_app.command()
def status(
    queue: QueueOption = None,
    last: Annotated[int, typer.Option("--last", min=0, help="How many log entries.")] = 10,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The daemon's heartbeat, the queue's depths and the last operations."""
    q = _queue(queue)
    age = q.heartbeat_age()
    depths = {
        name: len(q.entries(getattr(q, name)))
        for name in ("inbox", "processing", "pending", "outbox")
    }
    entries = []
    for path in q.entries(q.log_folder)[-last:] if last else []:
        try:
            entries.append(q.read(path))
        except ValueError:
            continue
    report = {"queue": str(q.root), "heartbeat_age_s": age, "depths": depths, "last": entries}
    if json_output:
        print_json(report)
        return
    if age is None:
        beat = "no heartbeat: no daemon serves this queue"
    else:
        beat = f"heartbeat {age:.1f} s ago" + (" (stale: the daemon is down)" if age > 30 else "")
    sys.stdout.write(f"{q.root}: {beat}\n")
    sys.stdout.write("  " + ", ".join(f"{k} {v}" for k, v in depths.items()) + "\n")
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.get("time", 0)))
        extra = " ".join(
            f"{k}={v}" for k, v in entry.items() if k not in ("time", "id", "event") and v
        )
        sys.stdout.write(f"  {when}  {entry.get('event')}  {entry.get('id')}  {extra}\n")
