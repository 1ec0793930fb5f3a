"""Showing cells' outcomes on a terminal, and the interactive prompt behind ``sandlot repl``.

:class:`Display` prints what a cell produces (streamed output, rich results, the error) and is
shared by ``sandlot run-code`` and ``sandlot repl``. :class:`Repl` reads Python from a
``read_line(prompt)`` callable and runs each complete input as a cell in one code context, so
it works (and is tested) with input from a pipe as well as from a terminal.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ..models import Execution, Result
    from ..sdk import ExecutionHandle, Sandbox

# Formats written to files by --save-results: MIME type -> (extension, base64-encoded).
IMAGE_FORMATS = {
    "image/png": ("png", True),
    "image/jpeg": ("jpg", True),
    "image/svg+xml": ("svg", False),
}
BASE64_FORMATS = {"image/png", "image/jpeg", "image/gif", "application/pdf"}
PROMPT = ">>> "
CONTINUATION = "... "


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def _styled(stream: TextIO) -> bool:
    try:
        return stream.isatty() and not os.environ.get("NO_COLOR")
    except (AttributeError, ValueError):
        return False


class Display:
    """Writes a cell's output, results and error to two text streams.

    ``out``/``err`` are the streaming callbacks (called on the SDK's loop thread);
    ``result`` shows one :class:`Result` as it arrives; ``finish`` shows the cell's end.
    Images are written into ``save_dir`` when it is given.
    """

    def __init__(self, stdout: TextIO, stderr: TextIO, *, save_dir: Path | None = None) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.save_dir = save_dir
        self.broken = False

    # -- raw writes --------------------------------------------------------------------------

    def _write(self, stream: TextIO, text: str) -> None:
        if self.broken or not text:
            return
        try:
            raw = getattr(stream, "buffer", None)
            if raw is not None:
                raw.write(text.encode(getattr(stream, "encoding", None) or "utf-8", "replace"))
                raw.flush()
            else:
                stream.write(text)
                stream.flush()
        except BrokenPipeError:
            self.broken = True  # whoever read us went away: the caller stops the cell
            raise

    def _styled_line(self, stream: TextIO, text: str, style: str) -> None:
        if _styled(stream):
            text = f"\x1b[{style}m{text}\x1b[0m"
        self._write(stream, text + "\n")

    def out(self, text: str) -> None:
        self._write(self.stdout, text)

    def err(self, text: str) -> None:
        self._write(self.stderr, text)

    def note(self, text: str, *, stderr: bool = False) -> None:
        """A dim line (about a result) on stdout, or a yellow one on stderr."""
        if stderr:
            self._styled_line(self.stderr, text, "33")
        else:
            self._styled_line(self.stdout, text, "2")

    def error(self, message: str) -> None:
        """One red ``error:`` line on stderr, as the rest of the CLI prints them."""
        self._styled_line(self.stderr, "error: " + " ".join(message.split()), "31")

    # -- results -----------------------------------------------------------------------------

    def result(self, result: Result) -> None:
        """The result's text (a main result as Python's prompt shows a value), then a note
        for each other format, saving images when asked to."""
        text = result.text
        if text is not None:
            self.out(text if text.endswith("\n") else text + "\n")
        for mime, value in result.data.items():
            if mime == "text/plain":
                continue
            note = f"[{mime}, {_size(self._bytes(mime, value))}]"
            if self.save_dir is not None and mime in IMAGE_FORMATS:
                note += " " + self._save(mime, value)
            self.note(note)
        for mime in result.dropped:
            self.note(f"[{mime} left out: over the size limit]")

    @staticmethod
    def _bytes(mime: str, value: Any) -> int:
        if isinstance(value, str):
            if mime in BASE64_FORMATS:
                return len(value.rstrip("=")) * 3 // 4
            return len(value.encode("utf-8", "replace"))
        import json

        return len(json.dumps(value, default=str))

    def _save(self, mime: str, value: Any) -> str:
        assert self.save_dir is not None
        ext, encoded = IMAGE_FORMATS[mime]
        try:
            if not isinstance(value, str):
                raise ValueError("not text")
            data = base64.b64decode(value, validate=True) if encoded else value.encode("utf-8")
        except (ValueError, binascii.Error):
            return "(not saved: malformed data)"
        try:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            path = self._free_path(ext)
            path.write_bytes(data)
        except OSError as exc:
            return f"(not saved: {exc.strerror or exc})"
        return f"saved to {path}"

    def _free_path(self, ext: str) -> Path:
        assert self.save_dir is not None
        n = 1
        while True:
            path = self.save_dir / f"result-{n}.{ext}"
            try:
                with open(path, "xb"):  # claim the name: never overwrite an earlier result
                    return path
            except FileExistsError:
                n += 1

    # -- the end of a cell -------------------------------------------------------------------

    def finish(self, execution: Execution) -> None:
        """The error's traceback on stderr, and notes on what was lost or left out."""
        error = execution.error
        if error is not None:
            trace = error.traceback or (
                f"{error.name}: {error.value}" if error.value else error.name
            )
            self.err(trace if trace.endswith("\n") else trace + "\n")
        if execution.state_lost and "state was lost" not in (error.value if error else ""):
            self.note(
                "the context's Python was killed or died: its state was lost (it restarted empty)",
                stderr=True,
            )
        for stream, count in sorted(execution.cut.items()):
            if count:
                self.note(f"[{stream}: {_size(count)} left out of the middle]", stderr=True)
        for name, reason in sorted(execution.not_persisted.items()):
            self.note(f"not saved with the context: {name} ({reason})", stderr=True)


# -- the prompt -------------------------------------------------------------------------------


class _HeldInterrupt:
    """Holds SIGINT back while a cell starts, so that its handle is never lost; a second
    Ctrl-C during the start raises at once."""

    def __init__(self) -> None:
        self.pending = False
        self.saved: Any = None
        self.installed = False

    def __enter__(self) -> _HeldInterrupt:
        try:
            self.saved = signal.signal(signal.SIGINT, self._hold)
            self.installed = True
        except (ValueError, OSError):  # not the main thread
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.saved)

    def _hold(self, _signum: int, _frame: Any) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True


class Repl:
    """Python read from ``read_line`` and run, input by input, in one code context.

    ``read_line(prompt)`` returns a line without its newline, raises EOFError at the end of
    input and KeyboardInterrupt on Ctrl-C (the current input is then discarded). An input
    is complete when :func:`codeop.compile_command` says so (a block ends with a blank line);
    one that does not compile is sent anyway, so that the sandbox's Python reports the error.
    ``before_cell`` runs before each cell (``sandlot repl`` extends a fresh sandbox's life).
    """

    def __init__(
        self,
        sandbox: Sandbox,
        display: Display,
        read_line: Callable[[str], str],
        *,
        context: str | None = None,
        prompts: bool = True,
        before_cell: Callable[[], None] | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.display = display
        self.read_line = read_line
        self.context = context
        self.prompts = prompts
        self.before_cell = before_cell

    def run(self) -> None:
        """Read and run inputs until the end of input."""
        import codeop

        lines: list[str] = []
        while True:
            prompt = (CONTINUATION if lines else PROMPT) if self.prompts else ""
            try:
                line = self.read_line(prompt)
            except EOFError:
                if self.prompts:
                    self.display.out("\n")
                if any(x.strip() for x in lines):  # piped input may end inside a block
                    self.run_cell("\n".join(lines) + "\n")
                return
            except KeyboardInterrupt:
                self.display.err("\nKeyboardInterrupt\n")
                lines = []
                continue
            lines.append(line)
            source = "\n".join(lines)
            if not source.strip():
                lines = []
                continue
            try:
                complete = codeop.compile_command(source, "<repl>", "single") is not None
            except (SyntaxError, OverflowError, ValueError):
                complete = True  # sent as is: the sandbox shows the error
            if complete:
                lines = []
                self.run_cell(source + "\n")

    def run_cell(self, source: str) -> Execution | None:
        """Run one input and show its outcome; None if it could not start (reported)."""
        from ..errors import CodeError, CodeTimeoutError, InvalidArgumentError, NotFoundError

        if self.before_cell is not None:
            self.before_cell()
        display = self.display
        try:
            with _HeldInterrupt() as held:
                handle = self.sandbox.run_code(
                    source,
                    context=self.context,
                    timeout=None,  # Ctrl-C is the limit at a prompt
                    background=True,
                    on_stdout=display.out,
                    on_stderr=display.err,
                    on_result=display.result,
                )
        except (CodeError, InvalidArgumentError, NotFoundError) as exc:
            display.error(str(exc))  # e.g. the context is busy or was removed: keep going
            return None
        interrupted = held.pending and self._interrupt(handle)
        while True:
            try:
                execution = handle.wait()
                break
            except KeyboardInterrupt:
                # The first Ctrl-C interrupts the cell; later ones keep waiting for it to end
                # (code that ignores the interrupt is killed after the agent's grace).
                if not interrupted:
                    interrupted = self._interrupt(handle)
            except CodeTimeoutError as exc:  # only with a timeout, kept for completeness
                execution = exc.execution
                break
        display.finish(execution)
        return execution

    def _interrupt(self, handle: ExecutionHandle) -> bool:
        from ..errors import SandlotError

        try:
            handle.interrupt()
        except KeyboardInterrupt:
            return False  # interrupted while interrupting: the next Ctrl-C tries again
        except SandlotError as exc:
            self.display.error(f"could not interrupt the cell: {exc}")
            return False
        return True


def stdin_reader(stream: TextIO) -> Callable[[str], str]:
    """``read_line`` for a non-terminal stdin: no prompt, no line editing."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    raw = getattr(stream, "buffer", None)

    def read_line(_prompt: str) -> str:
        if raw is not None:
            data = raw.readline()
            line = decoder.decode(data, final=not data)
        else:
            line = stream.readline()
        if not line:
            raise EOFError
        return line[:-1] if line.endswith("\n") else line

    return read_line


class History:
    """readline's history in ``path`` (best effort: any failure just means no history)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.readline: Any = None

    def __enter__(self) -> History:
        try:
            import readline
        except ImportError:
            return self
        self.readline = readline
        try:
            readline.set_history_length(1000)
            readline.read_history_file(self.path)
        except OSError:
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self.readline is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(self.path)
        except OSError:
            pass
