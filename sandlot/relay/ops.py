"""The relay's whitelist: operations as data (argv templates, argument patterns, limits).

An operation never runs through a shell. Its ``argv`` is a template whose items are literal
words or whole-item placeholders:

- ``{args}``: every argument, in order;
- ``{N}``: argument N, required;
- ``{N:default}``: argument N, or ``default`` when the request has fewer;
- ``{N?}``: argument N, or nothing.

Every argument must fully match the operation's ``arg_pattern`` (ASCII only, so look-alike
characters never match), and defaults must too. Sites add operations in a TOML file; a bad
entry stops the daemon with a message naming it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import InvalidArgumentError
from ..models import describe

MAX_ARGS = 32
MAX_ARG_LENGTH = 256
PLACEHOLDER = re.compile(r"\{(?:(args)|(\d{1,2})(?:(\?)|:([^{}]*))?)\}")
NAME = r"[a-z][a-z0-9_]{0,63}"

# A git ref, remote or revision: no leading '-' (an option), no '..' (a range, or a path
# out), no ':' or '+' (a refspec that deletes or force-pushes), no '@{' or '~^' magic.
GIT_NAME = r"(?!.*\.\.)(?!.*//)[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}"
# A path below the working folder: relative, no '..' component, no leading '-'.
RELATIVE_PATH = r"(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9_][A-Za-z0-9._/-]{0,255}"


class Operation(BaseModel):
    """One whitelisted operation. (The git built-ins name ``--upload-pack``/``--receive-pack``
    themselves, so a remote's ``uploadpack`` setting cannot pick the program.)"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=f"^{NAME}$")
    argv: list[str] = Field(min_length=1)
    arg_pattern: str = GIT_NAME
    max_args: int = Field(0, ge=0, le=MAX_ARGS)
    timeout: float = Field(300.0, gt=0, le=24 * 3600, description="seconds the command may run")
    consent: bool = False
    allow_options: bool = Field(
        False, description="arguments may start with '-' (refused otherwise, whatever the pattern)"
    )
    description: str = ""

    @field_validator("arg_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value, re.ASCII)
        except re.error as exc:
            raise ValueError(f"arg_pattern is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _template(self) -> Operation:
        if PLACEHOLDER.search(self.argv[0]) or not self.argv[0]:
            raise ValueError("argv[0] must be a program, not a placeholder")
        pattern = re.compile(self.arg_pattern, re.ASCII)
        has_all = False
        for item in self.argv:
            match = PLACEHOLDER.fullmatch(item)
            if match is None:
                if "{" in item or "}" in item:
                    raise ValueError(f"argv item {item!r}: a placeholder must be a whole item")
                continue
            every, index, _optional, default = match.groups()
            if every:
                has_all = True
                continue
            if int(index) >= self.max_args:
                raise ValueError(f"argv item {item!r} refers past max_args={self.max_args}")
            if default is not None and not pattern.fullmatch(default):
                raise ValueError(f"the default in {item!r} does not match arg_pattern")
        positional = [m for m in map(PLACEHOLDER.fullmatch, self.argv) if m and not m.group(1)]
        if has_all and positional:
            raise ValueError("argv mixes {args} with numbered placeholders")
        if not has_all and not positional and self.max_args:
            raise ValueError("max_args > 0 but argv has no placeholder to put arguments in")
        return self

    @property
    def min_args(self) -> int:
        required = [
            int(m.group(2))
            for m in map(PLACEHOLDER.fullmatch, self.argv)
            if m and m.group(2) is not None and m.group(3) is None and m.group(4) is None
        ]
        return max(required) + 1 if required else 0

    def render(self, args: list[str]) -> list[str]:
        """The command line for validated ``args``."""
        argv: list[str] = []
        for item in self.argv:
            match = PLACEHOLDER.fullmatch(item)
            if match is None:
                argv.append(item)
                continue
            every, index, optional, default = match.groups()
            if every:
                argv.extend(args)
            elif int(index) < len(args):
                argv.append(args[int(index)])
            elif default is not None:
                argv.append(default)
            elif optional is None:
                raise ValueError(f"argument {index} is required")
        return argv

    def public(self) -> dict[str, Any]:
        """What clients may know: to size their waits, and to say what an operation takes."""
        return {
            "name": self.name,
            "max_args": self.max_args,
            "min_args": self.min_args,
            "timeout": self.timeout,
            "consent": self.consent,
            "description": self.description,
        }


BUILTIN: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation(
            name="git_pull",
            argv=["git", "pull", "--ff-only", "--upload-pack=git-upload-pack", "{0?}", "{1?}"],
            max_args=2,
            description="fast-forward from [remote [branch]]",
        ),
        Operation(
            name="git_push",
            # The branch is argument 0 and the remote argument 1 (default origin), so a
            # lone branch is never taken for a remote.
            argv=["git", "push", "--receive-pack=git-receive-pack", "{1:origin}", "{0}"],
            max_args=2,
            description="push branch [remote]",
        ),
        Operation(
            name="git_fetch",
            argv=["git", "fetch", "--upload-pack=git-upload-pack", "{0?}", "{1?}"],
            max_args=2,
            description="fetch [remote [branch]]",
        ),
        Operation(
            name="git_status",
            argv=["git", "status"],
            timeout=60,
            description="the working tree's status",
        ),
        Operation(
            name="git_rebase",
            argv=["git", "rebase", "{0}"],
            max_args=1,
            description="rebase onto a revision (e.g. origin/main)",
        ),
        Operation(
            name="wandb_sync",
            argv=["wandb", "sync", "{args}"],
            arg_pattern=RELATIVE_PATH,
            max_args=8,
            timeout=3600,
            consent=True,
            description="upload offline Weights & Biases runs (needs a person's consent)",
        ),
    )
}


class SiteConfig(BaseModel):
    """``relay.toml``: extra operations, built-ins to disable, where operations may run."""

    model_config = ConfigDict(extra="forbid")

    operations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    disable: list[str] = Field(default_factory=list)
    roots: list[str] = Field(
        default_factory=list, description="folders besides $HOME where operations may run"
    )
    projects: list[str] | None = Field(
        None, description="if set, operations run only inside these folders"
    )


class Whitelist:
    """The closed set of operations a daemon runs, and where it runs them."""

    def __init__(
        self,
        operations: dict[str, Operation],
        roots: list[Path],
        projects: list[Path] | None,
    ) -> None:
        self.operations = operations
        self.roots = roots
        self.projects = projects

    @classmethod
    def load(cls, path: Path | None, home: Path) -> Whitelist:
        """The built-ins plus the site's file (if any). Raises InvalidArgumentError naming the
        entry at fault."""
        config = SiteConfig()
        if path is not None:
            import tomllib

            try:
                raw = tomllib.loads(path.read_text())
            except OSError as exc:
                raise InvalidArgumentError(f"cannot read relay config {path}: {exc}") from None
            except tomllib.TOMLDecodeError as exc:
                raise InvalidArgumentError(f"relay config {path} is not TOML: {exc}") from None
            try:
                config = SiteConfig.model_validate(raw)
            except ValidationError as exc:
                raise InvalidArgumentError(describe(exc, f"relay config {path}")) from None
        operations = dict(BUILTIN)
        for name in config.disable:
            if name not in operations:
                raise InvalidArgumentError(
                    f"relay config: cannot disable unknown operation {name!r}"
                )
            del operations[name]
        for name, spec in config.operations.items():
            if name in BUILTIN:
                raise InvalidArgumentError(
                    f"relay config: operation {name!r} is built in; disable it and use a new name"
                )
            try:
                operations[name] = Operation.model_validate({**spec, "name": name})
            except ValidationError as exc:
                raise InvalidArgumentError(
                    describe(exc, f"relay config: operation {name!r}")
                ) from None
        roots = [home.resolve()] + [_folder(r, home, "roots") for r in config.roots]
        projects = (
            [_folder(p, home, "projects") for p in config.projects]
            if config.projects is not None
            else None
        )
        return cls(operations, roots, projects)


def _folder(value: str, home: Path, what: str) -> Path:
    path = Path(value.replace("~", str(home), 1) if value.startswith("~") else value)
    if not path.is_absolute():
        raise InvalidArgumentError(f"relay config: {what} entry {value!r} is not an absolute path")
    resolved = path.resolve()
    if not resolved.is_dir():
        raise InvalidArgumentError(f"relay config: {what} entry {value!r} is not a folder")
    return resolved
