"""The files a build's ``file`` steps carry (:class:`~sandlot.api_templates.UploadStep`), as
files on the server for the build engine to copy, held while a build needs them.

Each is written once under ``<state folder>/template-uploads/<sha256>[.x]`` (``.x``: mode
0755), named by its content: the step the engine sees is then the same for the same bytes,
so its layer is reused by the next build, whatever build wrote it. A file is removed when the
last build holding it ends. Paths come from the server, never from a caller.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..api_templates import UploadStep
from ..workspace.templates.model import FileStep

FOLDER = "template-uploads"


class Uploads:
    def __init__(self, home: Path) -> None:
        self.folder = home / FOLDER
        self._held: Counter[Path] = Counter()
        if self.folder.is_dir():  # one server per state folder: what is here, nobody holds
            for left in self.folder.iterdir():
                left.unlink(missing_ok=True)

    @contextmanager
    def hold(self, steps: Sequence[Any]) -> Iterator[list[Any]]:
        """The steps with each upload as a file step of a file written here."""
        held: list[Path] = []
        try:
            out = []
            for step in steps:
                if isinstance(step, UploadStep):
                    path = self._write(step)
                    held.append(path)
                    step = FileStep(src=str(path), dst=step.dst)
                out.append(step)
            yield out
        finally:
            for path in held:
                self._held[path] -= 1
                if self._held[path] <= 0:
                    del self._held[path]
                    path.unlink(missing_ok=True)

    def _write(self, step: UploadStep) -> Path:
        content = step.content
        name = hashlib.sha256(content).hexdigest() + (".x" if step.executable else "")
        path = self.folder / name
        self._held[path] += 1
        if path.exists():
            return path
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=self.folder, prefix=".up-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            os.chmod(staging, 0o755 if step.executable else 0o644)
            os.replace(staging, path)  # whole or not at all
        except BaseException:
            os.unlink(staging)
            raise
        return path
