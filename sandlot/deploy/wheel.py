"""A wheel of the running sandlot, built in memory, to install on the host."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ProvisionError


@dataclass(frozen=True)
class Wheel:
    """A wheel of the sandlot this process runs, and the digest that names its contents."""

    filename: str
    data: bytes
    version: str
    digest: str


_SKIP_NAMES = re.compile(r"(^\.|~$|\.py[co]$|\.swp$)")


def build_wheel() -> Wheel:
    """A wheel of the running sandlot, built in memory without a build backend (none may be
    installed here, and pip's isolated build would need an index): the package files as they
    are, metadata from the source tree's pyproject.toml when there is one (an editable install)
    and from the installed distribution otherwise. Deterministic: the same tree gives the same
    digest, which is how ``up`` knows the host already has this code."""
    import sandlot

    package = Path(sandlot.__file__).resolve().parent
    pyproject = package.parent / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") != "sandlot":
            raise ProvisionError(f"{pyproject} is not sandlot's")
        version = str(project["version"])
        metadata, entry_points = _metadata_from_pyproject(project)
    else:
        version, metadata, entry_points = _metadata_installed(package)

    files: list[tuple[str, bytes]] = []
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package.parent)
        if path.is_dir() or any(
            part == "__pycache__" or _SKIP_NAMES.search(part) for part in relative.parts
        ):
            continue
        files.append((relative.as_posix(), path.read_bytes()))
    info = f"sandlot-{version}.dist-info"
    files.append((f"{info}/METADATA", metadata.encode()))
    files.append((f"{info}/WHEEL", _WHEEL_FILE.encode()))
    if entry_points:
        files.append((f"{info}/entry_points.txt", entry_points.encode()))
    record = io.StringIO()
    for name, data in files:
        hashed = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.write(f"{name},sha256={hashed},{len(data)}\n")
    record.write(f"{info}/RECORD,,\n")
    files.append((f"{info}/RECORD", record.getvalue().encode()))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    data = buffer.getvalue()
    return Wheel(
        filename=f"sandlot-{version}-py3-none-any.whl",
        data=data,
        version=version,
        digest=hashlib.sha256(data).hexdigest(),
    )


_WHEEL_FILE = "Wheel-Version: 1.0\nGenerator: sandlot remote up\nRoot-Is-Purelib: true\n" + (
    "Tag: py3-none-any\n"
)


def _metadata_from_pyproject(project: dict[str, Any]) -> tuple[str, str]:
    """Core metadata (2.1) and entry_points.txt from a PEP 621 ``[project]`` table."""
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
    ]
    if project.get("description"):
        lines.append(f"Summary: {project['description']}")
    licence = project.get("license")
    if isinstance(licence, dict) and licence.get("text"):
        lines.append(f"License: {licence['text']}")
    if project.get("requires-python"):
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {req}" for req in project.get("dependencies", [])]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        for req in requirements:
            spec, _, marker = req.partition(";")
            condition = f'extra == "{extra}"'
            if marker.strip():
                condition = f"({marker.strip()}) and {condition}"
            lines.append(f"Requires-Dist: {spec.strip()}; {condition}")
    groups: dict[str, dict[str, str]] = {}
    if project.get("scripts"):
        groups["console_scripts"] = project["scripts"]
    groups.update(project.get("entry-points", {}))
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) + "\n"
        for group, items in groups.items()
    )
    return "\n".join(lines) + "\n", entry_points


def _metadata_installed(package: Path) -> tuple[str, str, str]:
    """Version, METADATA and entry_points.txt of the installed distribution that owns
    ``package``."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("sandlot")
    except PackageNotFoundError:
        raise ProvisionError(
            f"cannot build a wheel: {package} has no pyproject.toml beside it and no installed "
            "metadata (install sandlot with pip)"
        ) from None
    metadata = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
    if not metadata:
        raise ProvisionError("cannot build a wheel: the installed sandlot has no METADATA")
    return dist.version, metadata, dist.read_text("entry_points.txt") or ""
