"""Checking a relay request before anything runs. Every refusal names the rule it broke."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ops import MAX_ARG_LENGTH, MAX_ARGS, Operation, Whitelist

REQUEST_ID = re.compile(r"[0-9a-f]{8,64}(?:-[0-9a-f]{1,32})?", re.ASCII)


class Refused(Exception):
    """A request broke ``rule``; nothing ran."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass(frozen=True)
class Checked:
    operation: Operation
    args: list[str]
    cwd: Path
    argv: list[str]


def check(request: Any, whitelist: Whitelist) -> Checked:
    """The operation, arguments and folder of a valid request; else :class:`Refused`."""
    if not isinstance(request, dict):
        raise Refused("request", "a request is a JSON object")
    name = request.get("op")
    if not isinstance(name, str) or name not in whitelist.operations:
        raise Refused("operation", f"operation {str(name)[:64]!r} is not in the whitelist")
    operation = whitelist.operations[name]
    args = _args(request.get("args", []), operation)
    cwd = _cwd(request.get("cwd"), whitelist)
    try:
        argv = operation.render(args)
    except ValueError as exc:  # a required argument is missing (min_args checked above)
        raise Refused("args_count", str(exc)) from None
    return Checked(operation, args, cwd, argv)


def _args(args: Any, operation: Operation) -> list[str]:
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise Refused("args_type", "args must be a list of strings")
    if len(args) > MAX_ARGS:
        raise Refused("args_count", f"at most {MAX_ARGS} arguments")
    if not operation.min_args <= len(args) <= operation.max_args:
        raise Refused(
            "args_count",
            f"{operation.name} takes {operation.min_args} to {operation.max_args} arguments, "
            f"not {len(args)}",
        )
    pattern = re.compile(operation.arg_pattern, re.ASCII)
    for index, arg in enumerate(args):
        if len(arg) > MAX_ARG_LENGTH:
            raise Refused("arg_length", f"argument {index} is over {MAX_ARG_LENGTH} characters")
        if "\0" in arg:
            raise Refused("arg_nul", f"argument {index} contains a NUL character")
        if not pattern.fullmatch(arg):
            raise Refused(
                "arg_pattern",
                f"argument {index} ({arg[:64]!r}) does not match {operation.name}'s pattern",
            )
        if arg.startswith("-") and not operation.allow_options:
            # whatever a site's pattern says: an argument is never an option unless the
            # operation says it takes options
            raise Refused("arg_option", f"argument {index} looks like an option")
    return list(args)


def _cwd(value: Any, whitelist: Whitelist) -> Path:
    if not isinstance(value, str) or not value:
        raise Refused("cwd_missing", "cwd is required")
    if "\0" in value or len(value) > 4096:
        raise Refused("cwd_invalid", "cwd is not a usable path")
    path = Path(value)
    if not path.is_absolute():
        raise Refused("cwd_invalid", "cwd must be an absolute path")
    try:
        resolved = path.resolve(strict=True)  # follows every symlink
    except (OSError, RuntimeError):
        raise Refused("cwd_not_found", f"cwd {value[:200]!r} does not exist") from None
    except ValueError:  # e.g. a lone surrogate, which JSON can carry and no path can
        raise Refused("cwd_invalid", "cwd is not a usable path") from None
    if not resolved.is_dir():
        raise Refused("cwd_not_found", f"cwd {value!r} is not a folder")
    if not any(_inside(resolved, root) for root in whitelist.roots):
        raise Refused("cwd_outside", f"cwd {value!r} is outside $HOME and the configured roots")
    if whitelist.projects is not None and not any(
        _inside(resolved, project) for project in whitelist.projects
    ):
        raise Refused("cwd_not_project", f"cwd {value!r} is not inside an allowed project")
    return resolved


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def environment(home: Path, writable: list[Path]) -> dict[str, str]:
    """The fixed, minimal environment every operation runs with.

    PATH keeps only absolute folders outside ``writable`` ($HOME and the roots): the compute
    node can write there, and must not be able to plant a ``git`` that the login node runs.
    """
    path = [
        entry
        for entry in (os.environ.get("PATH") or os.defpath).split(":")
        if entry.startswith("/")
        and not any(_inside(Path(entry).resolve(), folder) for folder in writable)
    ]
    return {
        "PATH": ":".join(path) or "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "GIT_TERMINAL_PROMPT": "0",  # never wait for a password nobody will type
        # ~/.gitconfig and ~/.ssh/config are in the shared home, so the compute node could
        # fill them with commands (pager, aliases, ProxyCommand...): neither is read.
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_SSH_COMMAND": "ssh -F /dev/null -o BatchMode=yes",
        # The environment outranks any config file for these.
        "GIT_PAGER": "cat",
        "GIT_EDITOR": ":",
        "GIT_SEQUENCE_EDITOR": ":",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
    }


def git_identity(home: Path) -> list[str]:
    """``-c user.name=... -c user.email=...`` from the user's global git config, read once when
    the daemon starts (later edits from the compute node do not count). Values are data on
    git's command line, never run."""
    import subprocess

    identity: list[str] = []
    for key in ("user.name", "user.email"):
        found = subprocess.run(
            ["git", "config", "--file", str(home / ".gitconfig"), "--get", key],
            capture_output=True,
            text=True,
            env={"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home)},
        )
        value = found.stdout.strip()
        if found.returncode == 0 and value and "\n" not in value:
            identity += ["-c", f"{key}={value}"]
    return identity


# Repository settings a git operation may meet. Anything else in .git/config (hooks, filters,
# fsmonitor, sshCommand, pager, credential helpers, includes, aliases...) can make git run a
# program: the compute node can write that file, so the daemon refuses such repositories.
SAFE_GIT_KEYS = re.compile(
    r"core\.(repositoryformatversion|filemode|bare|logallrefupdates|ignorecase|precomposeunicode"
    r"|autocrlf|eol|symlinks|safecrlf)"
    r"|remote\.[^\n]+\.(url|pushurl|fetch|push|tagopt|prune|mirror)"
    r"|branch\.[^\n]+\.(remote|merge|rebase|pushremote|description)"
    r"|user\.(name|email)|pull\.(rebase|ff)|push\.(default|autosetupremote)|fetch\.prune"
    r"|init\.defaultbranch|extensions\.objectformat|gc\.auto|advice\.[a-z]+",
    re.ASCII,
)
SAFE_GIT_URL = re.compile(r"(https?://|ssh://|git://|file://|/|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:)\S*")
# Also on git's command line, because .git/config can change between the check above and
# git reading it: the known settings that run a program, pinned (command-line wins).
GIT_HARDENING = [
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "credential.helper=",
    "-c",
    "protocol.ext.allow=never",
    "-c",
    "commit.gpgSign=false",
    "-c",
    "core.gitProxy=",
]


def check_git_repository(cwd: Path, env: dict[str, str], writable: list[Path]) -> None:
    """Refuse a repository whose own config could make git run a program."""
    import subprocess

    listed = subprocess.run(
        ["git", "config", "--local", "--list", "--null"],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=30,
    )
    if listed.returncode != 0:
        raise Refused("git_repository", f"{cwd} is not a git repository git can read")
    for entry in listed.stdout.split(b"\0"):
        if not entry:
            continue
        key, _, value = entry.decode("utf-8", "replace").partition("\n")
        if not SAFE_GIT_KEYS.fullmatch(key.lower()):
            raise Refused(
                "git_config", f"the repository's config sets {key!r}, which could run a program"
            )
        if key.lower().endswith(("url", "pushurl")):
            _check_remote_url(value, writable)


LOOPBACK_HOSTS = frozenset(["localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"])


def _check_remote_url(url: str, writable: list[Path]) -> None:
    if not SAFE_GIT_URL.fullmatch(url):
        raise Refused("git_config", f"the repository's remote URL {url[:100]!r} is not allowed")
    if url.startswith(("/", "file://")):
        # git runs a local remote's own hooks (pre-receive...) itself, on this node: a remote
        # repository the compute node can write would run its code here.
        path = Path(url[len("file://") :] if url.startswith("file://") else url).resolve()
        if any(_inside(path, folder) for folder in writable):
            raise Refused(
                "git_remote",
                f"the remote {url[:100]!r} is a repository in a folder the compute node can "
                "write; its hooks would run on this node",
            )
        return
    host = re.sub(r"^[a-z+]+://", "", url).split("/", 1)[0].rsplit("@", 1)[-1]
    host = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    import socket

    if host.lower() in LOOPBACK_HOSTS or host.lower() == socket.gethostname().lower():
        raise Refused(
            "git_remote", f"the remote {url[:100]!r} is this node: its hooks would run here"
        )


def hardened(argv: list[str], identity: tuple[str, ...] | list[str] = ()) -> list[str]:
    """git with hooks and fsmonitor off, whatever the repository says, and the user's
    identity from the daemon's start."""
    if argv and argv[0] == "git":
        return [argv[0], *GIT_HARDENING, *identity, *argv[1:]]
    return argv
