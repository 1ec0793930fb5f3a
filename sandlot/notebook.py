"""Jupyter magics: run notebook cells in a sandbox, shown as if they ran locally.

    %load_ext sandlot

    %%sandlot [--session NAME] [--timeout S]
    import matplotlib.pyplot as plt
    plt.plot([1, 3, 2])

    %sandlot_reset [--session NAME]
    %sandlot_install [--session NAME] PACKAGE_OR_WHEEL ...

Without ``--session``, the kernel has one sandbox, made on first use and killed when the
kernel exits. ``--session NAME`` uses the durable session whose metadata says
``{"sandlot.notebook": NAME}`` (found, else created) with a persistent code context, so its
namespace and /workspace outlive the kernel; the sandbox is detached (checkpointed, then
destroyed) at exit.

Output reaches the notebook in the order the cell produced it. The SDK's callbacks run on its
own thread, and ipykernel ties output to a cell through the thread that executes it, so the
callbacks only queue what arrives and the kernel's thread shows it.
"""

from __future__ import annotations

import atexit
import functools
import os
import queue
import shlex
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic import cell_magic as _cell_magic
from IPython.display import display

from .errors import CodeContextNotFoundError, CodeTimeoutError, SandlotError
from .models import Execution, Result
from .safe_html import safe_bundle
from .sdk import Sandbox, Session

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .models import CodeContext

SESSION_KEY = "sandlot.notebook"
# The kernel's own sandbox: killed at kernel exit; these bound it if the kernel dies without
# running its exit handlers, and let a notebook sit unused for an hour.
KERNEL_SANDBOX_LIFETIME = 24 * 3600.0
KERNEL_SANDBOX_IDLE = 3600.0
CONTEXT_NAME = "notebook"
DEFAULT_TIMEOUT = 300.0
# Where host files given to %sandlot_install are uploaded first.
UPLOAD_DIR = "/tmp/sandlot-install"
_UPLOADABLE = (".whl", ".tar.gz", ".zip")
# A remote traceback shows at most this many lines from each end, each cut to _MAX_LINE.
_KEEP_LINES = 500
_MAX_LINE = 10_000


class RemoteError(Exception):
    """A cell's exception, raised in the kernel so IPython shows it as an error. Subclasses
    take the remote class's name (``ename``); ``_render_traceback_`` makes IPython print the
    sandbox's traceback instead of the host's frames."""

    def __init__(self, value: str, traceback: str) -> None:
        super().__init__(value)
        self.remote_traceback = traceback

    def _render_traceback_(self) -> list[str]:
        lines = [line[:_MAX_LINE] for line in self.remote_traceback.rstrip("\n").splitlines()]
        if len(lines) > 2 * _KEEP_LINES:  # the sandbox's text: bounded before the browser
            cut = len(lines) - 2 * _KEEP_LINES
            lines = [*lines[:_KEEP_LINES], f"[... {cut} lines ...]", *lines[-_KEEP_LINES:]]
        last = f"{type(self).__name__}: {self}" if str(self) else type(self).__name__
        if not lines or lines[-1] != last:
            lines.append(last)
        return lines


def _remote_error(name: str, value: str, traceback: str) -> RemoteError:
    # The name is the sandbox's, untrusted: keep it an identifier, bounded.
    safe = name if name.isidentifier() and len(name) <= 100 else "RemoteError"
    cls = type(safe, (RemoteError,), {"__module__": "sandlot.remote_cell"})
    return cls(value, traceback)


_F = TypeVar("_F", bound=Callable[..., Any])


def _plain_errors(method: _F) -> _F:
    """sandlot's own errors (no sandbox, a failed install, ...) shown as one line with the
    reason, not as the host's stack through the SDK."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except SandlotError as exc:
            raise _remote_error(type(exc).__name__, str(exc), "") from None

    return wrapper  # type: ignore[return-value]


def _timeout(options: dict[str, str]) -> float:
    try:
        value = float(options.get("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        raise UsageError(
            f"--timeout must be a number of seconds, not {options['timeout']!r}"
        ) from None
    if not value > 0:
        raise UsageError("--timeout must be positive")
    return value


class _Bundle:
    """A cell's main result, returned by the magic so IPython shows it as ``Out[n]``."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return self.data

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", ""))


@dataclass
class _Target:
    """Where a name's cells run: a sandbox and its code context."""

    sandbox: Sandbox
    context: CodeContext | None = None
    session: Session | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _parse(line: str) -> tuple[dict[str, str], list[str]]:
    """``--session NAME``, ``--timeout S`` (also ``--opt=value``) and ``--trust``, then the
    rest."""
    options: dict[str, str] = {}
    rest: list[str] = []
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot parse {line!r}: {exc}") from None
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--trust":
            options["trust"] = "yes"
        elif word.startswith("--") and word[2:].split("=", 1)[0] in ("session", "timeout"):
            key, eq, value = word[2:].partition("=")
            if not eq:
                i += 1
                if i >= len(words):
                    raise UsageError(f"--{key} needs a value")
                value = words[i]
            options[key] = value
        else:
            rest.append(word)
        i += 1
    return options, rest


@magics_class
class SandlotMagics(Magics):
    """``%%sandlot``, ``%sandlot_reset`` and ``%sandlot_install``."""

    def __init__(self, shell: InteractiveShell) -> None:
        super().__init__(shell)
        self._targets: dict[str | None, _Target] = {}
        self._guard = threading.Lock()
        atexit.register(self.close)

    # -- targets ----------------------------------------------------------------------------

    def _target(self, name: str | None) -> _Target:
        """The sandbox for ``name``; a new one if its last one ended (idle or hard timeout,
        killed elsewhere), said on stderr since the namespace starts over."""
        with self._guard:
            target = self._targets.get(name)
            if target is not None and not target.sandbox.is_running():
                label = f"session {name!r}" if name else "this kernel"
                print(
                    f"sandlot: the sandbox of {label} had ended; starting a new one "
                    + ("(restored from the last checkpoint)" if name else "(empty namespace)"),
                    file=sys.stderr,
                )
                self._drop(target)
                target = None
            if target is None:
                target = self._open(name)
                self._targets[name] = target
            return target

    def _open(self, name: str | None) -> _Target:
        if name is None:
            sandbox = Sandbox.create(
                metadata={SESSION_KEY: f"kernel-{os.getpid()}"},
                timeout=KERNEL_SANDBOX_LIFETIME,
                idle_timeout=KERNEL_SANDBOX_IDLE,
            )
            return _Target(sandbox)
        session = Session.find_or_create({SESSION_KEY: name})
        sandbox = session.sandbox(reuse=True)
        try:
            context = sandbox.get_code_context(CONTEXT_NAME)
        except CodeContextNotFoundError:
            context = sandbox.create_code_context(name=CONTEXT_NAME, persist=True)
        return _Target(sandbox, context, session)

    def close(self) -> None:
        """Kill the kernel's sandbox and detach the sessions' (checkpoint, then destroy)."""
        with self._guard:
            targets, self._targets = list(self._targets.values()), {}
        for target in targets:
            self._drop(target)

    @staticmethod
    def _drop(target: _Target) -> None:
        try:
            if target.session is not None:
                target.session.detach(target.sandbox)
            else:
                target.sandbox.kill()
        except SandlotError:
            pass  # already gone: nothing left to clean

    # -- magics -----------------------------------------------------------------------------

    @_cell_magic
    @_plain_errors
    def sandlot(self, line: str, cell: str) -> _Bundle | None:
        """Run the cell in a sandbox: ``%%sandlot [--session NAME] [--timeout S] [--trust]``.
        ``--trust`` shows its results as sent (scripts included) instead of cleaned."""
        options, rest = _parse(line)
        if rest:
            raise UsageError(f"%%sandlot: unexpected arguments {rest!r}")
        timeout = _timeout(options)
        target = self._target(options.get("session"))
        with target.lock:
            execution, main = _run(target, cell, timeout, "trust" in options)
        if execution.error is not None:
            err = execution.error
            raise _remote_error(err.name, err.value, err.traceback) from None
        return main  # IPython shows it as Out[n], like a local cell's trailing value

    @line_magic
    @_plain_errors
    def sandlot_reset(self, line: str) -> None:
        """Empty the cell namespace (a session's saved state too): ``%sandlot_reset
        [--session NAME]``."""
        options, rest = _parse(line)
        if rest:
            raise UsageError(f"%sandlot_reset: unexpected arguments {rest!r}")
        target = self._target(options.get("session"))
        with target.lock:
            target.sandbox.restart_code_context(target.context, forget_state=True)
        print("sandlot: code context reset")

    @line_magic
    @_plain_errors
    def sandlot_install(self, line: str) -> None:
        """``pip install`` in the sandbox: ``%sandlot_install [--session NAME] PKG ...``.
        A wheel or sdist that exists on this machine is uploaded first."""
        options, packages = _parse(line)
        if not packages:
            raise UsageError("%sandlot_install: name at least one package")
        target = self._target(options.get("session"))
        with target.lock:
            packages = [_upload(target.sandbox, p) for p in packages]
            timeout = _timeout(options)
            out = _Stream()
            failure: list[BaseException] = []

            def install() -> None:
                try:
                    target.sandbox.install(
                        packages, on_stdout=out.stdout, on_stderr=out.stderr, timeout=timeout
                    )
                except BaseException as exc:  # shown on the kernel's thread
                    failure.append(exc)

            worker = threading.Thread(target=install, name="sandlot-install", daemon=True)
            worker.start()
            out.pump(lambda: not worker.is_alive())
            worker.join()
            out.flush()
            if failure:
                raise failure[0]


def _upload(sandbox: Sandbox, package: str) -> str:
    if not package.endswith(_UPLOADABLE) or not os.path.isfile(package):
        return package
    with open(package, "rb") as f:
        data = f.read()
    path = f"{UPLOAD_DIR}/{os.path.basename(package)}"
    sandbox.files.write(path, data)
    return path


class _Stream:
    """Output queued by the SDK's thread, shown by the kernel's (see the module's doc)."""

    def __init__(self, trust: bool = False) -> None:
        self.trust = trust
        self.items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def stdout(self, text: str) -> None:
        self.items.put(("stdout", text))

    def stderr(self, text: str) -> None:
        self.items.put(("stderr", text))

    def result(self, result: Result) -> None:
        self.items.put(("result", result))

    def show(self, kind: str, item: Any) -> _Bundle | None:
        if kind == "stdout":
            sys.stdout.write(item)
            sys.stdout.flush()
        elif kind == "stderr":
            sys.stderr.write(item)
            sys.stderr.flush()
        else:
            data = dict(item.data) if self.trust else safe_bundle(item.data)
            if item.is_main_result:
                return _Bundle(data)
            display(data, raw=True)
        return None

    def pump(self, done: Callable[[], bool]) -> _Bundle | None:
        """Show output as it comes until ``done()``; the main result, if one came."""
        main = None
        while not done():
            try:
                kind, item = self.items.get(timeout=0.05)
            except queue.Empty:
                continue
            main = self.show(kind, item) or main
        return main

    def flush(self) -> _Bundle | None:
        """Show what is queued; the main result, if it was among it."""
        main = None
        while True:
            try:
                kind, item = self.items.get_nowait()
            except queue.Empty:
                return main
            main = self.show(kind, item) or main


def _run(
    target: _Target, cell: str, timeout: float, trust: bool
) -> tuple[Execution, _Bundle | None]:
    """Run ``cell`` in the background, showing its output as it comes; Ctrl-C (the kernel's
    interrupt) interrupts the remote cell and keeps its state."""
    stream = _Stream(trust)
    handle = target.sandbox.run_code(
        cell,
        context=target.context,
        timeout=timeout,
        background=True,
        on_stdout=stream.stdout,
        on_stderr=stream.stderr,
        on_result=stream.result,
    )
    main: _Bundle | None = None
    try:
        main = stream.pump(handle.done)
    except KeyboardInterrupt:
        handle.interrupt()
    try:
        execution = handle.wait()
    except CodeTimeoutError as exc:
        stream.flush()
        raise _remote_error("CodeTimeoutError", str(exc), "") from None
    return execution, stream.flush() or main


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext sandlot``."""
    ipython.register_magics(SandlotMagics)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """``%unload_ext sandlot``: end the kernel's sandboxes now rather than at exit."""
    manager = ipython.magics_manager
    magics = manager.registry.get("SandlotMagics") if manager is not None else None
    if isinstance(magics, SandlotMagics):
        magics.close()
