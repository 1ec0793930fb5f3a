"""What each build step runs, and what it may reach: the command lines of apt, pip and run
steps, the hosts their network policy allows (read from the host's pip configuration and the
template's apt sources at build time; no host is ever written down here), and the file step,
which needs no sandbox at all.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import shlex
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ...errors import InvalidArgumentError
from . import layers as L
from .model import AptStep, FileStep, PipStep, RunStep

MAX_FILE_BYTES = 4 << 30  # a file step copies at most this much
PIP_MOUNTS = "/mnt/.sandlot-pip"  # local pip sources appear beneath it (removed afterwards)
PIP_CERT_INSIDE = "/tmp/.sandlot-pip-cert.pem"
MAX_CERT = 4 << 20


# --------------------------------------------------------------------------------------------
# network


def host_port(url: str) -> str | None:
    """``host:port`` of an http(s) URL (the scheme's port if none is given), else None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return f"{parts.hostname}:{port or (443 if parts.scheme == 'https' else 80)}"


def network_policy(hosts: list[str]) -> dict[str, Any]:
    """A NetworkPolicy (as data) allowing each ``host:port``, and the addresses the host
    resolves it to now, pinned. The hosts come from the host's own configuration, so what
    they resolve to on the host is what the operator means, even a private mirror (which a
    name rule alone would not reach); pinned, a later answer cannot change it."""
    allow: list[str] = []
    resolve: dict[str, list[str]] = {}
    for item in hosts:
        name, _, port = item.rpartition(":")
        allow.append(item)
        try:
            infos = socket.getaddrinfo(name, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            continue  # unresolvable now: the name rule stays, the step will say so
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            rule = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            if rule not in allow:
                allow.append(rule)
        if addresses and not _is_address(name):
            resolve[name] = addresses
    return {"allow": allow, "resolve": resolve}


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# pip


@dataclass
class PipSettings:
    """The host's pip configuration as a build sandbox gets it."""

    env: dict[str, str] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    binds: list[tuple[str, str]] = field(default_factory=list)  # (host folder, inside)
    cert: bytes | None = None


def _pip_files() -> list[Path]:
    """pip's own order: global, user, then $PIP_CONFIG_FILE (later ones win)."""
    files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf")]
    home = Path.home()
    files += [home / ".pip" / "pip.conf", home / ".config" / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return files


def host_pip_config(environ: dict[str, str] | None = None) -> dict[str, str]:
    """index-url, extra-index-url, find-links, trusted-host, cert: from the host's pip
    configuration files ([global], then [install]) and then ``PIP_*`` variables."""
    environ = dict(os.environ) if environ is None else environ
    keys = ("index-url", "extra-index-url", "find-links", "trusted-host", "cert")
    found: dict[str, str] = {}
    for path in _pip_files():
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        for section in ("global", "install"):
            for key in keys:
                if parser.has_option(section, key):
                    found[key] = parser.get(section, key)
    for key in keys:
        value = environ.get("PIP_" + key.upper().replace("-", "_"))
        if value:
            found[key] = value
    return found


def _default_index() -> tuple[str, str]:
    """pip's own default index and file host, asked of the pip installed here."""
    try:
        from pip._internal.models.index import PyPI  # type: ignore[import-not-found,unused-ignore]

        return PyPI.simple_url, PyPI.file_storage_domain
    except Exception:
        return "", ""


def pip_settings(environ: dict[str, str] | None = None) -> PipSettings:
    """The env, allowed hosts, read-only binds and certificate of a pip step."""
    config = host_pip_config(environ)
    settings = PipSettings()
    local = 0

    def place(value: str) -> str:
        """A URL stays (its host allowed); a local folder is bound read-only inside."""
        nonlocal local
        parts = urlsplit(value)
        host = host_port(value)
        if host is not None:
            if host not in settings.hosts:
                settings.hosts.append(host)
            return value
        path = parts.path if parts.scheme == "file" else value
        if not path.startswith("/") or not os.path.isdir(path):
            return ""
        real = os.path.realpath(path)
        tail = ""
        if parts.scheme == "file" and os.path.basename(real) == "simple":
            # A PEP 503 tree links its files relatively (../../files/x.whl): bind its top.
            real, tail = os.path.dirname(real), "/simple"
        inside = f"{PIP_MOUNTS}/{local}"
        local += 1
        settings.binds.append((real, inside))
        return f"file://{inside}{tail}" if parts.scheme == "file" else inside

    index = config.get("index-url")
    if not index:
        index, files = _default_index()
        if files:
            settings.hosts.append(f"{files}:443")
    if index:
        settings.env["PIP_INDEX_URL"] = place(index) or index
    for key in ("extra-index-url", "find-links"):
        values = [place(v) for v in config.get(key, "").split()]
        if any(values):
            settings.env["PIP_" + key.upper().replace("-", "_")] = " ".join(v for v in values if v)
    if config.get("trusted-host"):
        settings.env["PIP_TRUSTED_HOST"] = config["trusted-host"]
    cert = config.get("cert")
    if cert and os.path.isfile(cert) and os.path.getsize(cert) <= MAX_CERT:
        settings.cert = Path(cert).read_bytes()
        settings.env["PIP_CERT"] = PIP_CERT_INSIDE
    settings.env |= {
        "PIP_BREAK_SYSTEM_PACKAGES": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PIP_ROOT_USER_ACTION": "ignore",
    }
    return settings


def pip_command(step: PipStep, python: str) -> list[str]:
    return [python, "-m", "pip", "install", "--", *step.packages]


# --------------------------------------------------------------------------------------------
# apt


def apt_hosts(views: list[Path]) -> list[str]:
    """The hosts of the template's apt sources (one-line ``.list`` and deb822 ``.sources``),
    read from its merged view (topmost first), never following a symlink out of it."""
    hosts: list[str] = []
    files = ["/etc/apt/sources.list"]
    for view in views:
        hit = L.merged_lookup([view], "/etc/apt/sources.list.d")
        if hit is not None and stat.S_ISDIR(hit[1].st_mode):
            files += [
                f"/etc/apt/sources.list.d/{name}"
                for name in sorted(os.listdir(hit[0]))
                if name.endswith((".list", ".sources"))
            ]
    for rel in dict.fromkeys(files):
        hit = L.merged_lookup(views, rel)
        if hit is None or not stat.S_ISREG(hit[1].st_mode) or hit[1].st_size > 1 << 20:
            continue
        with open(hit[0], "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as fh:
            text = fh.read(1 << 20).decode("utf-8", "replace")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            words = line.split()
            if line.startswith("URIs:"):
                urls = words[1:]
            elif words[:1] in (["deb"], ["deb-src"]):
                urls = [w for w in words[1:] if "://" in w][:1]
            else:
                continue
            for url in urls:
                host = host_port(url)
                if host is not None and host not in hosts:
                    hosts.append(host)
    return hosts


APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def apt_command(step: AptStep) -> list[str]:
    # apt drops to the _apt user to download; in a build sandbox that user cannot write
    # the (overlay) lists folder, so it stays root: the sandbox is the boundary.
    opts = "-o APT::Sandbox::User=root -o Dpkg::Use-Pty=0"
    packages = " ".join(shlex.quote(p) for p in step.packages)
    script = (
        f"set -e; apt-get {opts} -q update; "
        f"apt-get {opts} -q install -y --no-install-recommends {packages}; "
        "apt-get clean; rm -rf /var/lib/apt/lists/*"
    )
    return ["/bin/sh", "-c", script]


# --------------------------------------------------------------------------------------------
# run


def run_command(step: RunStep, workdir: str | None) -> list[str]:
    script = step.command
    if workdir:
        quoted = shlex.quote(workdir)
        script = f"mkdir -p {quoted} && cd {quoted} && {script}"
    return ["/bin/sh", "-c", script]


# --------------------------------------------------------------------------------------------
# file


def input_digest(step: FileStep) -> str:
    """The hash of a file step's input (a file, or a folder's tree): part of its cache key."""
    src = Path(step.src)
    try:
        st = os.lstat(src)
    except OSError as exc:
        raise InvalidArgumentError(f"--file {step.src}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        return L.tree_digest(src)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgumentError(f"--file {step.src}: not a regular file or folder")
    if st.st_size > MAX_FILE_BYTES:
        raise InvalidArgumentError(f"--file {step.src}: larger than {MAX_FILE_BYTES} bytes")
    import hashlib

    h = hashlib.sha256()
    L._hash_file(str(src), h)
    return h.hexdigest()


def resolve_in_view(views: list[Path], path: str, hops: int = 16) -> str:
    """``path`` with symlinked folders on the way resolved within the merged view (so a file
    step writing /bin/x on a root where /bin -> usr/bin writes /usr/bin/x, and never
    replaces the symlink by a folder)."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    while parts:
        part = parts.pop(0)
        current = "/" + "/".join([*done, part])
        hit = L.merged_lookup(views, current) if parts else None
        if hit is not None and stat.S_ISLNK(hit[1].st_mode):
            hops -= 1
            if hops < 0:
                raise InvalidArgumentError(f"--file destination {path}: too many symlinks")
            target = os.readlink(hit[0])
            base = "/" if target.startswith("/") else "/" + "/".join(done)
            resolved = os.path.normpath(os.path.join(base, target))
            parts = [p for p in resolved.split("/") if p] + parts
            done = []
            continue
        done.append(part)
    return "/" + "/".join(done)


def copy_into(step: FileStep, views: list[Path], upper: Path) -> None:
    """Copy a file step's input into ``upper`` (a new layer) at its destination."""
    dst = step.dst
    src = Path(step.src)
    if dst.endswith("/"):
        dst += src.name
    dst = resolve_in_view(views, dst)
    rel = dst.lstrip("/")
    target = upper / rel
    # Parent folders made here are plain 0755 folders; an existing one below shows through.
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        L.copy_tree(src, target)
    else:
        L.copy_file(str(src), str(target), stat.S_IMODE(st.st_mode), MAX_FILE_BYTES)
