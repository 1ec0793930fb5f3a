"""The air-gapped relay end to end: daemon processes, client processes, real git repositories.

Most tests share one daemon (module scope) serving a queue in a temporary ``$HOME``; tests
that kill, stop or configure a daemon differently start their own. Nothing here touches the
network: remotes are bare repositories on the local filesystem.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandlot.relay import (
    RelayClient,
    RelayCrashed,
    RelayDown,
    RelayRejected,
    RelayTimeout,
    RelayValidationError,
)
from sandlot.relay.queue import Queue, new_id

from .relay_helpers import Daemon, Site, client_answers, client_process, wait_until

pytestmark = pytest.mark.timeout(120)

SITE_OPS = """
[operations.echo]
argv = ["echo", "{0}"]
arg_pattern = "[a-z0-9][a-z0-9-]{0,39}"
max_args = 1
timeout = 30

[operations.say]
argv = ["echo", "{args}"]
arg_pattern = "[a-z0-9][a-z0-9-]{0,39}"
max_args = 4
consent = true
timeout = 30
description = "a harmless operation that needs a person's consent"

[operations.numbers]
argv = ["seq", "{0}"]
arg_pattern = "[0-9]{1,7}"
max_args = 1
timeout = 30

[operations.count_sleep]
argv = ["COUNT_SCRIPT", "{0}"]
arg_pattern = "[0-9]{1,3}"
max_args = 1
timeout = 120
"""

COUNT_SCRIPT = """
import os, sys, time
with open(sys.argv[0] + ".runs", "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(float(sys.argv[1]))
print("slept")
"""


def configure(site: Site, text: str = SITE_OPS) -> Path:
    """The site config (outside $HOME), with the counting script it names."""
    script = site.script("count_sleep.py", COUNT_SCRIPT)
    return site.config(text.replace("COUNT_SCRIPT", str(script)))


def runs(site: Site) -> list[int]:
    """The pids of every run of count_sleep so far."""
    path = site.outside / "count_sleep.py.runs"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(tmp_path_factory.mktemp("relay"))


@pytest.fixture(scope="module")
def daemon(site: Site) -> Iterator[Daemon]:
    server = Daemon(site, "--config", str(configure(site))).wait_ready()
    yield server
    server.stop()


@pytest.fixture
def own_site(tmp_path: Path) -> Site:
    """A site of its own, for a test that needs its own daemon."""
    return Site(tmp_path)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts; killed at its end whatever state they are in."""
    started: list[Daemon] = []
    yield started
    for server in started:
        server.kill()


@dataclass
class Repos:
    bare: Path
    project: Path
    tag: str


@pytest.fixture
def repos(site: Site, daemon: Daemon) -> Repos:
    """A bare remote (outside $HOME) and a clone of it in $HOME: the project."""
    tag = uuid.uuid4().hex[:8]
    bare = site.remote(f"r-{tag}.git")
    project = site.clone(bare, site.home / f"p-{tag}")
    return Repos(bare, project, tag)


@pytest.fixture
def rc(site: Site, repos: Repos) -> RelayClient:
    return RelayClient(repos.project, queue=site.queue)


def push_from_other_clone(site: Site, repos: Repos, name: str = "theirs.txt") -> str:
    """Another clone pushes a commit to the remote; returns it."""
    other = site.outside / f"other-{repos.tag}-{uuid.uuid4().hex[:4]}"
    site.clone(repos.bare, other)
    commit = site.commit(other, name, "theirs\n")
    site.git(other, "push", "-q", "origin", "main")
    return commit


def background(fn: Callable[[], Any]) -> Future[Any]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


def wait_pending(site: Site, args: list[str], timeout: float = 15) -> str:
    """The id of the pending request with ``args``, once the daemon has parked it."""
    found: list[str] = []

    def parked() -> bool:
        found[:] = [row["id"] for row in site.pending() if row["args"] == args]
        return bool(found)

    assert wait_until(parked, timeout, interval=0.1), site.pending()
    return found[0]


# -- git through the relay -------------------------------------------------------------------


def test_status(rc: RelayClient) -> None:
    result = rc.status()
    assert result.status == "ok"
    assert result.returncode == 0
    assert "On branch main" in result.stdout
    assert result.duration_s > 0
    assert not result.truncated


def test_pull_fast_forwards_after_another_clone_pushed(
    site: Site, repos: Repos, rc: RelayClient
) -> None:
    theirs = push_from_other_clone(site, repos)
    assert site.rev(repos.project, "HEAD") != theirs
    result = rc.pull()
    assert result.status == "ok", result.stderr
    assert site.rev(repos.project, "HEAD") == theirs
    assert (repos.project / "theirs.txt").read_text() == "theirs\n"
    theirs2 = push_from_other_clone(site, repos, "more.txt")
    assert rc.pull("origin", "main").returncode == 0
    assert site.rev(repos.project, "HEAD") == theirs2


def test_pull_refuses_to_merge_diverged_history(site: Site, repos: Repos, rc: RelayClient) -> None:
    push_from_other_clone(site, repos)
    mine = site.commit(repos.project, "mine.txt")
    result = rc.pull()
    assert result.status == "failed" and result.returncode != 0  # --ff-only
    assert site.rev(repos.project, "HEAD") == mine


def test_push_a_branch_arrives_in_the_remote(site: Site, repos: Repos, rc: RelayClient) -> None:
    site.git(repos.project, "checkout", "-q", "-b", "feature")
    mine = site.commit(repos.project, "feature.txt")
    result = rc.push(branch="feature")
    assert result.status == "ok", result.stderr
    assert site.rev(repos.bare, "refs/heads/feature") == mine


def test_push_main_never_takes_main_for_a_remote(site: Site, repos: Repos, rc: RelayClient) -> None:
    decoy = site.outside / f"decoy-{repos.tag}.git"
    site.git(site.outside, "init", "-q", "--bare", "-b", "main", str(decoy))
    site.git(repos.project, "remote", "add", "main", str(decoy))  # a remote named "main"
    mine = site.commit(repos.project, "mine.txt")
    result = rc.push(branch="main")
    assert result.status == "ok", result.stderr
    assert site.rev(repos.bare, "refs/heads/main") == mine
    assert site.refs(decoy) == ""  # the remote called "main" got nothing
    # ...and a remote, when named, comes second.
    assert rc.push(branch="main", remote="main").status == "ok"
    assert site.rev(decoy, "refs/heads/main") == mine


def test_fetch(site: Site, repos: Repos, rc: RelayClient) -> None:
    before = site.rev(repos.project, "HEAD")
    theirs = push_from_other_clone(site, repos)
    assert rc.fetch().status == "ok"
    assert site.rev(repos.project, "refs/remotes/origin/main") == theirs
    assert site.rev(repos.project, "HEAD") == before  # fetch only
    theirs2 = push_from_other_clone(site, repos, "more.txt")
    assert rc.fetch("origin", "main").status == "ok"
    assert site.rev(repos.project, "FETCH_HEAD") == theirs2


def test_rebase_onto_the_fetched_remote_then_push(
    site: Site, repos: Repos, rc: RelayClient
) -> None:
    # The daemon's git makes commits here: it needs an identity, which the repository's own
    # config may give (user.* is on the allowlist).
    site.git(repos.project, "config", "user.name", "Project Owner")
    site.git(repos.project, "config", "user.email", "owner@test.invalid")
    theirs = push_from_other_clone(site, repos)
    site.commit(repos.project, "mine.txt", message="mine")
    assert rc.fetch().status == "ok"
    result = rc.rebase(onto="origin/main")
    assert result.status == "ok", result.stderr
    assert site.rev(repos.project, "HEAD~1") == theirs
    assert (repos.project / "theirs.txt").exists() and (repos.project / "mine.txt").exists()
    assert rc.push(branch="main").status == "ok"
    assert site.rev(repos.bare, "refs/heads/main") == site.rev(repos.project, "HEAD")


def test_a_failing_git_command_is_a_result_not_an_exception(rc: RelayClient) -> None:
    result = rc.rebase(onto="no-such-revision")
    assert result.status == "failed"
    assert result.returncode not in (0, None)
    assert result.stderr
    result = rc.pull("no-such-remote")
    assert result.status == "failed" and result.returncode != 0


# -- validation: refused before anything runs -------------------------------------------------


@pytest.mark.parametrize(
    ("op", "args", "rule"),
    [
        ("no_such_op", [], "operation"),
        ("git_push", ["--force"], "arg_pattern"),
        ("git_push", ["-f"], "arg_pattern"),
        ("git_push", ["+main"], "arg_pattern"),
        ("git_push", [":main"], "arg_pattern"),
        ("git_push", ["main:main"], "arg_pattern"),
        ("git_push", ["main", "--force"], "arg_pattern"),
        ("git_push", ["main;touch x"], "arg_pattern"),
        ("git_push", ["main", "origin", "extra"], "args_count"),
        ("git_push", [], "args_count"),
        ("git_status", ["--porcelain"], "args_count"),
        ("git_push", ["m" * 300], "arg_length"),
        ("git_push", ["ma\0in"], "arg_nul"),
    ],
)
def test_validation_refusals_run_nothing(
    site: Site, repos: Repos, rc: RelayClient, op: str, args: list[str], rule: str
) -> None:
    # Diverge, so a forced push or a deletion would show in the remote.
    push_from_other_clone(site, repos)
    site.commit(repos.project, "mine.txt")
    before = site.refs(repos.bare)
    with pytest.raises(RelayValidationError) as caught:
        rc.request(op, args)
    assert caught.value.details["rule"] == rule
    request_id = caught.value.details["request_id"]
    assert site.refs(repos.bare) == before
    events = site.events(request_id)
    assert "refused" in events and "started" not in events
    assert (site.queue / "stale" / f"{request_id}.json").exists()


def push_refused(site: Site, cwd: str | Path, bare: Path) -> RelayValidationError:
    before = site.refs(bare)
    with pytest.raises(RelayValidationError) as caught:
        RelayClient(cwd, queue=site.queue).push(branch="main")
    assert site.refs(bare) == before
    return caught.value


def outside_clone(site: Site, repos: Repos) -> Path:
    clone = site.clone(repos.bare, site.outside / f"out-{repos.tag}")
    site.commit(clone, "outside.txt")
    return clone


def test_cwd_outside_home_is_refused(site: Site, repos: Repos) -> None:
    clone = outside_clone(site, repos)
    assert push_refused(site, clone, repos.bare).details["rule"] == "cwd_outside"


def test_cwd_through_a_symlink_out_of_home_is_refused(site: Site, repos: Repos) -> None:
    clone = outside_clone(site, repos)
    link = site.home / f"link-{repos.tag}"
    link.symlink_to(clone)
    assert push_refused(site, link, repos.bare).details["rule"] == "cwd_outside"
    folder_link = site.home / f"dirlink-{repos.tag}"
    folder_link.symlink_to(site.outside)
    error = push_refused(site, folder_link / clone.name, repos.bare)
    assert error.details["rule"] == "cwd_outside"


def test_cwd_with_dot_dot_out_of_home_is_refused(site: Site, repos: Repos) -> None:
    clone = outside_clone(site, repos)
    sneaky = f"{site.home}/../{clone.relative_to(site.base)}"
    assert push_refused(site, sneaky, repos.bare).details["rule"] == "cwd_outside"


def test_cwd_missing_is_refused(site: Site, repos: Repos) -> None:
    error = push_refused(site, site.home / f"missing-{repos.tag}", repos.bare)
    assert error.details["rule"] == "cwd_not_found"


def raw_request(site: Site, body: dict[str, Any] | str, request_id: str | None = None) -> str:
    """A request file written directly into the inbox (as a hostile client could)."""
    request_id = request_id or f"{time.time_ns():016x}-{uuid.uuid4().hex[:16]}"
    text = body if isinstance(body, str) else json.dumps(body)
    temporary = site.queue / "inbox" / f".tmp-{request_id}"
    temporary.write_text(text)
    os.replace(temporary, site.queue / "inbox" / f"{request_id}.json")
    return request_id


def raw_answer(site: Site, request_id: str, timeout: float = 10) -> dict[str, Any]:
    path = site.queue / "outbox" / f"{request_id}.json"
    assert wait_until(path.exists, timeout), f"no answer to {request_id}"
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"op": "git_status", "args": []}, "cwd_missing"),
        ({"op": "git_status", "args": [], "cwd": 42}, "cwd_missing"),
        ({"op": "git_status", "args": [], "cwd": "relative/path"}, "cwd_invalid"),
        ({"op": "git_push", "args": "main"}, "args_type"),
        ({"op": "git_push", "args": [["main"]]}, "args_type"),
        ({"op": "git_push", "args": [7]}, "args_type"),
        ({"op": ["git_status"], "args": []}, "operation"),
        ({"op": "GIT_STATUS", "args": []}, "operation"),
    ],
)
def test_raw_requests_with_bad_fields_are_refused(
    site: Site, repos: Repos, fields: dict[str, Any], rule: str
) -> None:
    body = {"cwd": str(repos.project), **fields}
    if rule == "cwd_missing" and "cwd" not in fields:
        del body["cwd"]
    request_id = raw_request(site, body)
    answer = raw_answer(site, request_id)
    assert answer["status"] == "validation"
    assert answer["rule"] == rule


def test_a_request_file_named_not_as_an_id_is_discarded(site: Site, daemon: Daemon) -> None:
    name = f"not-an-id-{uuid.uuid4().hex[:6]}"
    raw_request(site, {"op": "git_status", "cwd": str(site.home)}, request_id=name)
    assert wait_until(lambda: not (site.queue / "inbox" / f"{name}.json").exists(), 10)
    assert any(e["event"] == "discarded" for e in site.log())
    assert not (site.queue / "outbox" / f"{name}.json").exists()


# -- the repository's own config cannot make the daemon's git run a program -------------------


EVIL = """
import sys
from pathlib import Path
Path(MARKER).write_text(" ".join(sys.argv))
sys.stdout.write(sys.stdin.read() if not sys.stdin.isatty() else "")
"""


def evil_script(site: Site, tag: str) -> tuple[Path, Path]:
    """A program that leaves a marker file when it runs; the marker (not yet there)."""
    marker = site.outside / f"ran-{tag}"
    script = site.script(f"evil-{tag}.py", EVIL.replace("MARKER", repr(str(marker))))
    return script, marker


def _hooks_folder(site: Site, repos: Repos, script: Path) -> str:
    hooks = site.outside / f"hooks-{repos.tag}"
    hooks.mkdir()
    for name in ("post-merge", "pre-push", "post-checkout", "reference-transaction"):
        (hooks / name).symlink_to(script)
    return str(hooks)


PLANTED: dict[str, tuple[Callable[[Site, Repos, Path], list[tuple[str, str]]], str]] = {
    "core.pager": (lambda s, r, x: [("core.pager", str(x))], "status"),
    "core.hooksPath": (lambda s, r, x: [("core.hooksPath", _hooks_folder(s, r, x))], "pull"),
    "filter": (
        lambda s, r, x: [("filter.evil.smudge", str(x)), ("filter.evil.clean", str(x))],
        "pull",
    ),
    "alias": (lambda s, r, x: [("alias.st", f"!{x}"), ("alias.pull", f"!{x}")], "pull"),
    "core.sshCommand": (lambda s, r, x: [("core.sshCommand", str(x))], "fetch"),
    "core.fsmonitor": (lambda s, r, x: [("core.fsmonitor", str(x))], "status"),
    "credential.helper": (lambda s, r, x: [("credential.helper", f"!{x}")], "fetch"),
    "ext:: url": (lambda s, r, x: [("remote.origin.url", f"ext::{x} %S")], "fetch"),
    "ext:: pushurl": (lambda s, r, x: [("remote.origin.pushurl", f"ext::{x} %S")], "push"),
    "uploadpack": (lambda s, r, x: [("remote.origin.uploadpack", str(x))], "fetch"),
    "include.path": (lambda s, r, x: [("include.path", str(s.outside / "nothing"))], "status"),
}


@pytest.mark.parametrize("what", sorted(PLANTED))
def test_a_repository_config_that_could_run_a_program_is_refused(
    site: Site, repos: Repos, rc: RelayClient, what: str
) -> None:
    script, marker = evil_script(site, repos.tag)
    # Something to pull, with attributes that would send it through a filter.
    other = site.clone(repos.bare, site.outside / f"attr-{repos.tag}")
    (other / ".gitattributes").write_text("*.txt filter=evil\n")
    site.commit(other, "a.txt")
    site.git(other, "push", "-q", "origin", "main")
    plant, op = PLANTED[what]
    for key, value in plant(site, repos, script):
        site.git(repos.project, "config", "--local", key, value)
    before = site.refs(repos.bare)
    with pytest.raises(RelayValidationError) as caught:
        if op == "push":
            rc.push(branch="main")
        else:
            getattr(rc, op)()
    assert caught.value.details["rule"] == "git_config"
    assert not marker.exists()
    assert site.refs(repos.bare) == before


@pytest.mark.parametrize("where", ["home", "file-url-home", "localhost", "loopback-scp"])
def test_a_remote_this_node_would_run_hooks_for_is_refused(
    site: Site, repos: Repos, rc: RelayClient, where: str
) -> None:
    """A local remote in $HOME (the compute node writes it) or a remote on this very node
    would run its own hooks here."""
    script, marker = evil_script(site, repos.tag)
    inside = site.home / f"remote-in-home-{repos.tag}.git"
    site.git(site.home, "clone", "-q", "--bare", str(repos.bare), str(inside))
    (inside / "hooks" / "pre-receive").symlink_to(script)
    url = {
        "home": str(inside),
        "file-url-home": f"file://{inside}",
        "localhost": "ssh://localhost/srv/x.git",
        "loopback-scp": "git@127.0.0.1:x.git",
    }[where]
    site.git(repos.project, "remote", "set-url", "origin", url)
    site.commit(repos.project, "mine.txt")
    for call in (lambda: rc.push(branch="main"), rc.fetch):
        with pytest.raises(RelayValidationError) as caught:
            call()
        assert caught.value.details["rule"] == "git_remote"
    assert not marker.exists()


def test_hooks_in_the_repository_never_run(site: Site, repos: Repos, rc: RelayClient) -> None:
    script, marker = evil_script(site, repos.tag)
    push_from_other_clone(site, repos)
    site.git(repos.project, "checkout", "-q", "-b", "feature")
    feature = site.commit(repos.project, "feature.txt")
    site.git(repos.project, "checkout", "-q", "main")
    hooks = repos.project / ".git" / "hooks"
    for name in ("post-merge", "pre-push", "post-checkout", "reference-transaction", "pre-rebase"):
        (hooks / name).symlink_to(script)
    assert rc.pull().status == "ok"
    assert rc.push(branch="feature").status == "ok"
    assert site.rev(repos.bare, "refs/heads/feature") == feature
    assert not marker.exists()
    # The control: the same hooks do run when git is not hardened.
    site.git(repos.project, "push", "-q", "origin", "feature:control")
    assert marker.exists()


@pytest.mark.parametrize("where", [".gitconfig", ".config/git/config"])
def test_a_global_git_config_in_the_shared_home_cannot_run_a_program(
    own_site: Site, daemons: list[Daemon], where: str
) -> None:
    """The compute node can write $HOME, so $HOME's git config is as hostile as
    .git/config: a filter defined there must not run when the daemon pulls."""
    site = own_site
    tag = uuid.uuid4().hex[:8]
    bare = site.remote(f"g-{tag}.git")
    project = site.clone(bare, site.home / f"p-{tag}")
    other = site.clone(bare, site.outside / f"other-{tag}")
    script, marker = evil_script(site, tag)
    config = site.home / where
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[filter "evil"]\n\tsmudge = {script}\n\tclean = {script}\n')
    daemons.append(Daemon(site).wait_ready())
    rc = RelayClient(project, queue=site.queue)
    # First the attributes, then a file they send through the filter.
    site.commit(other, ".gitattributes", "*.txt filter=evil\n")
    site.git(other, "push", "-q", "origin", "main")
    assert rc.pull().status == "ok"
    site.commit(other, "a.txt", "hello\n")
    site.git(other, "push", "-q", "origin", "main")
    try:
        rc.pull()
    except RelayValidationError:
        pass  # refusing the pull is fine; running the filter is not
    assert not marker.exists(), f"the daemon's git ran {marker.read_text()!r} from ~/{where}"
    # The control: git that reads this config does run the filter on that checkout.
    (project / "a.txt").unlink(missing_ok=True)
    site.git(project, "checkout", "--", "a.txt", extra_env={"GIT_CONFIG_GLOBAL": str(config)})
    assert marker.exists()


def test_the_git_identity_is_read_from_home_once_at_start(
    own_site: Site, daemons: list[Daemon]
) -> None:
    site = own_site
    (site.home / ".gitconfig").write_text(
        "[user]\n\tname = Login Node Owner\n\temail = owner@login.invalid\n"
    )
    daemons.append(Daemon(site).wait_ready())
    (site.home / ".gitconfig").write_text("[user]\n\tname = Changed Later\n")
    bare = site.remote("identity.git")
    project = site.clone(bare, site.home / "project")
    other = site.clone(bare, site.outside / "other")
    site.commit(other, "theirs.txt")
    site.git(other, "push", "-q", "origin", "main")
    site.commit(project, "mine.txt")
    rc = RelayClient(project, queue=site.queue)
    assert rc.fetch().status == "ok"
    result = rc.rebase(onto="origin/main")
    assert result.status == "ok", result.stderr
    committer = site.git(project, "log", "-1", "--format=%cn <%ce>").stdout.strip()
    assert committer == "Login Node Owner <owner@login.invalid>"


def test_a_site_config_in_the_shared_home_needs_trust(
    own_site: Site, daemons: list[Daemon]
) -> None:
    site = own_site
    shared = site.home / "relay.toml"
    shared.write_text('[operations.hello]\nargv = ["echo", "hello"]\n')
    refused = Daemon(site, "--config", str(shared))
    try:
        assert refused.wait_exit() != 0
        assert "compute node can write" in refused.stderr()
    finally:
        refused.kill()
    assert not (site.queue / "heartbeat").exists()
    daemons.append(Daemon(site, "--config", str(shared), "--trust-shared-config").wait_ready())
    result = RelayClient(site.home, queue=site.queue).request("hello")
    assert result.stdout == "hello\n"


# -- consent ---------------------------------------------------------------------------------


def test_consent_approve(site: Site, daemon: Daemon, repos: Repos, rc: RelayClient) -> None:
    answer = background(lambda: rc.request("say", ["hello", repos.tag]))
    request_id = wait_pending(site, ["hello", repos.tag])
    rows = {row["id"]: row for row in site.pending()}
    assert rows[request_id]["op"] == "say"
    assert rows[request_id]["cwd"] == str(repos.project)
    listing = site.cli("pending", "--queue", str(site.queue))
    assert request_id in listing.stdout and "say hello" in listing.stdout
    time.sleep(0.3)
    assert not answer.done()  # it waits for a person, not for the default timeout
    code = daemon.consent_code(request_id)
    done = site.cli("approve", request_id, "--code", code, "--queue", str(site.queue))
    assert done.returncode == 0, done.stderr
    result = answer.result(timeout=30)
    assert result.status == "ok"
    assert result.stdout == f"hello {repos.tag}\n"
    assert all(row["id"] != request_id for row in site.pending())
    events = site.events(request_id)
    assert events[:2] == ["awaiting_consent", "approved"]
    assert "started" in events and "finished" in events


def test_consent_reject(site: Site, repos: Repos, rc: RelayClient) -> None:
    answer = background(lambda: rc.request("say", ["reject", repos.tag]))
    request_id = wait_pending(site, ["reject", repos.tag])
    done = site.cli("reject", request_id, "--queue", str(site.queue))
    assert done.returncode == 0, done.stderr
    with pytest.raises(RelayRejected):
        answer.result(timeout=30)
    events = site.events(request_id)
    assert "rejected" in events and "started" not in events


def test_a_client_that_gives_up_withdraws_its_pending_request(
    site: Site, repos: Repos, rc: RelayClient
) -> None:
    """Nobody waits for the answer any more: the request must not run later, unobserved."""
    with pytest.raises(RelayTimeout):
        rc.request("say", ["abandoned", repos.tag], timeout=1.5)
    assert not [p for p in (site.queue / "pending").iterdir() if repos.tag in p.read_text()], (
        "the abandoned request still awaits consent"
    )


def test_consent_reject_wins_over_approve(
    site: Site, daemon: Daemon, repos: Repos, rc: RelayClient
) -> None:
    answer = background(lambda: rc.request("say", ["both", repos.tag]))
    request_id = wait_pending(site, ["both", repos.tag])
    code = daemon.consent_code(request_id)
    daemon.signal(signal.SIGSTOP)  # both markers are there before it looks again
    try:
        approve = site.cli("approve", request_id, "--code", code, "--queue", str(site.queue))
        assert approve.returncode == 0
        assert site.cli("reject", request_id, "--queue", str(site.queue)).returncode == 0
    finally:
        daemon.signal(signal.SIGCONT)
    with pytest.raises(RelayRejected):
        answer.result(timeout=30)
    events = site.events(request_id)
    assert "rejected" in events and "started" not in events and "approved" not in events


@pytest.mark.parametrize("code", [None, "00000000", ""])
def test_an_approval_without_the_right_code_is_a_rejection(
    site: Site, daemon: Daemon, repos: Repos, rc: RelayClient, code: str | None
) -> None:
    """The code is printed only in the daemon's terminal: whoever can merely write the queue
    (the compute node, the agent) cannot approve its own request."""
    arg = f"code-{len(code) if code is not None else 'none'}-{repos.tag}"
    answer = background(lambda: rc.request("say", [arg]))
    request_id = wait_pending(site, [arg])
    assert daemon.consent_code(request_id) != code
    given = ["--code", code] if code is not None else []
    done = site.cli("approve", request_id, *given, "--queue", str(site.queue))
    assert done.returncode == 0, done.stderr
    with pytest.raises(RelayRejected):
        answer.result(timeout=30)
    events = site.events(request_id)
    assert "rejected" in events and "started" not in events


def test_without_consent_codes_a_plain_approval_runs(own_site: Site, daemons: list[Daemon]) -> None:
    site = own_site
    server = Daemon(site, "--config", str(configure(site)), "--no-consent-codes").wait_ready()
    daemons.append(server)
    rc = RelayClient(site.home, queue=site.queue)
    answer = background(lambda: rc.request("say", ["plain"]))
    request_id = wait_pending(site, ["plain"])
    assert site.cli("approve", request_id, "--queue", str(site.queue)).returncode == 0
    assert answer.result(timeout=30).stdout == "plain\n"


def test_consent_codes_do_not_survive_a_restart(own_site: Site, daemons: list[Daemon]) -> None:
    site = own_site
    config = str(configure(site))
    first = Daemon(site, "--config", config).wait_ready()
    daemons.append(first)
    # A request written straight into the inbox: a waiting RelayClient would give up
    # (RelayDown) and withdraw it when the first daemon stops.
    queue = Queue(site.queue)
    request_id = new_id()
    queue.write(
        queue.inbox / f"{request_id}.json",
        {
            "id": request_id,
            "op": "say",
            "args": ["restart"],
            "cwd": str(site.home),
            "created": time.time(),
        },
    )
    wait_pending(site, ["restart"])
    old_code = first.consent_code(request_id)
    first.stop()
    second = Daemon(site, "--config", config).wait_ready()
    daemons.append(second)
    new_code = second.consent_code(request_id)  # asked again, with a new code
    assert new_code != old_code
    done = site.cli("approve", request_id, "--code", old_code, "--queue", str(site.queue))
    assert done.returncode == 0
    assert wait_until(lambda: "rejected" in site.events(request_id), 10)
    assert "started" not in site.events(request_id)


@pytest.mark.parametrize("bad_id", ["0123456789abcdef", "../../etc/passwd", "deadbeef/../../x"])
def test_approve_needs_a_pending_request(site: Site, daemon: Daemon, bad_id: str) -> None:
    done = site.cli("approve", bad_id, "--queue", str(site.queue))
    assert done.returncode != 0
    assert not (site.queue / "approved" / bad_id).exists()


def test_consent_expires(own_site: Site, daemons: list[Daemon]) -> None:
    site = own_site
    daemons.append(
        Daemon(site, "--config", str(configure(site)), "--consent-expiry", "1").wait_ready()
    )
    rc = RelayClient(site.home, queue=site.queue)
    started = time.monotonic()
    with pytest.raises(RelayRejected) as caught:
        rc.request("say", ["nobody", "decides"])
    assert 0.9 < time.monotonic() - started < 15
    request_id = caught.value.details["request_id"]
    assert "expired" in site.events(request_id)
    assert "started" not in site.events(request_id)
    assert (site.queue / "stale" / f"{request_id}.json").exists()
    assert site.pending() == []


# -- crashes and liveness ----------------------------------------------------------------------


def test_sigkill_mid_operation_then_restart(own_site: Site, daemons: list[Daemon]) -> None:
    site = own_site
    config = str(configure(site))
    first = Daemon(site, "--config", config).wait_ready()
    daemons.append(first)
    client = client_process(site, site.home, [{"op": "count_sleep", "args": ["30"]}])
    try:
        assert wait_until(lambda: len(runs(site)) == 1, 20), "the operation never started"
        in_processing = list((site.queue / "processing").glob("*.json"))
        assert len(in_processing) == 1
        first.signal(signal.SIGKILL)
        first.wait_exit()
        second = Daemon(site, "--config", config).wait_ready()  # the lock died with the first
        daemons.append(second)
        [answer] = client_answers(client, timeout=30)
        assert answer.get("error") == RelayCrashed.__name__, answer
        request_id = answer["details"]["request_id"]
        assert in_processing[0].name == f"{request_id}.json"
        assert (site.queue / "stale" / f"{request_id}.json").exists()
        assert list((site.queue / "processing").iterdir()) == []
        assert "crashed" in site.events(request_id)
        time.sleep(0.5)  # several polls of the new daemon
        assert len(runs(site)) == 1  # never run twice
        # The new daemon serves new requests.
        result = RelayClient(site.home, queue=site.queue).request("echo", ["after"])
        assert result.stdout == "after\n"
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        for pid in runs(site):  # the operation outlives a SIGKILLed daemon
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_heartbeat_missing_raises_relay_down_at_once(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    queue.create()
    for root in (queue.root, tmp_path / "no-queue-at-all"):
        started = time.monotonic()
        with pytest.raises(RelayDown):
            RelayClient(tmp_path, queue=root).status()
        assert time.monotonic() - started < 0.5
    assert list(queue.inbox.iterdir()) == []  # nothing was queued


@pytest.mark.parametrize("heartbeat", ["old", "garbage", "symlink"])
def test_heartbeat_stale_raises_relay_down_at_once(tmp_path: Path, heartbeat: str) -> None:
    queue = Queue(tmp_path / "q")
    queue.create()
    if heartbeat == "old":
        queue.write(queue.heartbeat, {"pid": os.getpid(), "time": time.time() - 120})
    elif heartbeat == "garbage":
        queue.heartbeat.write_text("{not json")
    else:
        fresh = tmp_path / "fresh"
        fresh.write_text(json.dumps({"pid": 1, "time": time.time()}))
        queue.heartbeat.symlink_to(fresh)
    started = time.monotonic()
    with pytest.raises(RelayDown):
        RelayClient(tmp_path, queue=queue.root).status()
    assert time.monotonic() - started < 0.5
    assert list(queue.inbox.iterdir()) == []


def test_a_daemon_that_stops_while_a_client_waits(own_site: Site, daemons: list[Daemon]) -> None:
    site = own_site
    server = Daemon(site, "--config", str(configure(site))).wait_ready()
    daemons.append(server)
    rc = RelayClient(site.home, queue=site.queue)
    answer = background(lambda: rc.request("say", ["waiting"]))
    wait_pending(site, ["waiting"])
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    stopped = time.monotonic()
    with pytest.raises(RelayDown):
        answer.result(timeout=10)
    assert time.monotonic() - stopped < 5
    assert not (site.queue / "heartbeat").exists()


def test_a_daemon_killed_while_a_client_waits(own_site: Site, daemons: list[Daemon]) -> None:
    """SIGKILL leaves a fresh heartbeat behind: the client notices once it is older than its
    limit (here 6 s, just above the 5 s beat), not at the end of a day-long consent wait."""
    site = own_site
    server = Daemon(site, "--config", str(configure(site))).wait_ready()
    daemons.append(server)
    rc = RelayClient(site.home, queue=site.queue, stale_after=6.0)
    answer = background(lambda: rc.request("say", ["killed"]))
    wait_pending(site, ["killed"])
    server.signal(signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(RelayDown):
        answer.result(timeout=20)
    assert time.monotonic() - killed < 9


def test_a_second_daemon_on_the_same_queue_refuses(
    site: Site, daemon: Daemon, rc: RelayClient
) -> None:
    second = Daemon(site)
    try:
        assert second.wait_exit() != 0
        assert "another relay daemon" in second.stderr()
    finally:
        second.kill()
    assert daemon.process.poll() is None
    assert rc.status().status == "ok"  # the first still serves


@pytest.mark.parametrize("folder", ["", "inbox", "outbox"])
def test_a_queue_writable_by_others_is_refused(own_site: Site, folder: str) -> None:
    queue = Queue(own_site.queue)
    queue.create()
    target = queue.root / folder if folder else queue.root
    target.chmod(0o777 if folder == "inbox" else 0o770)
    server = Daemon(own_site)
    try:
        assert server.wait_exit() != 0
        assert "writable by group or others" in server.stderr()
    finally:
        server.kill()
    assert not queue.heartbeat.exists()


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ('[operations.tidy]\nargv = ["echo"]\ncolour = "red"\n', ["tidy", "colour"]),
        (
            '[operations.grep_it]\nargv = ["echo", "{0}"]\nmax_args = 1\narg_pattern = "(["\n',
            ["grep_it", "arg_pattern"],
        ),
        ('[operations.far]\nargv = ["echo", "{3}"]\nmax_args = 2\n', ["far", "{3}"]),
        ('[operations.git_pull]\nargv = ["echo"]\n', ["git_pull", "built in"]),
        ('[operations.shout]\nargv = ["{0}"]\nmax_args = 1\n', ["shout", "argv[0]"]),
        ('disable = ["git_teleport"]\n', ["git_teleport"]),
        ('roots = ["relative/folder"]\n', ["relative/folder"]),
        ("operations = [", ["not TOML"]),
    ],
)
def test_a_bad_site_config_stops_the_daemon(own_site: Site, config: str, names: list[str]) -> None:
    path = own_site.config(config)
    server = Daemon(own_site, "--config", str(path))
    try:
        assert server.wait_exit() != 0
        message = server.stderr()
        for name in names:
            assert name in message, message
        assert "Traceback" not in message
    finally:
        server.kill()
    assert not (own_site.queue / "heartbeat").exists()


def test_a_missing_named_config_stops_the_daemon(own_site: Site) -> None:
    server = Daemon(own_site, "--config", str(own_site.outside / "absent.toml"))
    try:
        assert server.wait_exit() != 0
        assert "absent.toml" in server.stderr()
    finally:
        server.kill()


# -- load, output, retention, withdrawal -------------------------------------------------------


def test_fifty_concurrent_clients_each_get_their_own_answer(
    site: Site, daemon: Daemon, repos: Repos
) -> None:
    processes = [
        client_process(
            site,
            repos.project,
            [{"op": "echo", "args": [f"c{p}-t{t}-{repos.tag}"]} for t in range(5)],
        )
        for p in range(8)
    ]
    rc = RelayClient(repos.project, queue=site.queue)
    in_process = ThreadPoolExecutor(max_workers=10)
    local = {
        arg: in_process.submit(rc.request, "echo", [arg])
        for arg in (f"local-{i}-{repos.tag}" for i in range(10))
    }
    seen: list[str] = []
    for p, process in enumerate(processes):
        answers = client_answers(process, timeout=90)
        for t, answer in enumerate(answers):
            arg = f"c{p}-t{t}-{repos.tag}"
            assert answer.get("stdout") == f"{arg}\n", (arg, answer)
            seen.append(answer["id"])
    for arg, future in local.items():
        result = future.result(timeout=90)
        assert result.stdout == f"{arg}\n"
        seen.append(result.id)
    in_process.shutdown()
    assert len(set(seen)) == 50
    for request_id in seen:  # every answer was taken by its requester
        assert not (site.queue / "outbox" / f"{request_id}.json").exists()


def test_output_over_the_cap_is_truncated_with_a_marker(rc: RelayClient) -> None:
    result = rc.request("numbers", ["300000"])  # about 1.9 MB on stdout
    assert result.status == "ok"
    assert result.truncated is True
    assert "bytes cut here" in result.stdout
    assert result.stdout.startswith("1\n2\n3\n")
    assert result.stdout.endswith("299999\n300000\n")
    assert len(result.stdout.encode()) < 1024 * 1024 + 200
    small = rc.request("numbers", ["1000"])
    assert small.truncated is False
    assert small.stdout == "".join(f"{i}\n" for i in range(1, 1001))


def test_retention_removes_old_files_at_start(own_site: Site, daemons: list[Daemon]) -> None:
    site = own_site
    queue = Queue(site.queue)
    queue.create()
    eight_days = time.time() - 8 * 24 * 3600
    old: list[Path] = []
    fresh: list[Path] = []
    for folder in ("outbox", "log", "approved", "rejected", "stale"):
        for age, bucket in (("old", old), ("fresh", fresh)):
            path = queue.root / folder / f"{age}-{folder}.json"
            path.write_text("{}")
            if age == "old":
                os.utime(path, (eight_days, eight_days))
            bucket.append(path)
    two_hours = time.time() - 2 * 3600
    old_temporary = queue.inbox / ".tmp-crashed-writer"
    old_temporary.write_text("{")
    os.utime(old_temporary, (two_hours, two_hours))
    old.append(old_temporary)
    fresh_temporary = queue.inbox / ".tmp-being-written"
    fresh_temporary.write_text("{")
    fresh.append(fresh_temporary)
    daemons.append(Daemon(site).wait_ready())
    assert wait_until(lambda: not any(p.exists() for p in old), 10), [p for p in old if p.exists()]
    assert all(p.exists() for p in fresh)


def test_a_client_withdraws_its_request_when_it_gives_up(
    site: Site, daemon: Daemon, rc: RelayClient
) -> None:
    def started() -> int:
        return sum(1 for e in site.log() if e["event"] == "started")

    before = started()
    daemon.signal(signal.SIGSTOP)
    try:
        with pytest.raises(RelayTimeout):
            rc.request("git_status", timeout=0.5)
        assert [p for p in (site.queue / "inbox").iterdir() if p.suffix == ".json"] == []
    finally:
        daemon.signal(signal.SIGCONT)
    time.sleep(0.5)
    assert started() == before
    assert rc.status().status == "ok"  # and the daemon carries on


# -- hostile files in the queue: the daemon must survive them ------------------------------------


def _deep(inbox: Path, name: str) -> None:
    (inbox / name).write_text("[" * 200_000 + "]" * 200_000)


def _surrogate(inbox: Path, name: str) -> None:
    (inbox / name).write_text('{"op": "git_status", "args": [], "cwd": "/tmp\\ud800"}')


def _directory(inbox: Path, name: str) -> None:
    (inbox / name).mkdir()


def _fifo(inbox: Path, name: str) -> None:
    os.mkfifo(inbox / name)


def _huge(inbox: Path, name: str) -> None:
    (inbox / name).write_text(" " * (9 * 1024 * 1024) + "{}")


def _symlink(inbox: Path, name: str) -> None:
    target = inbox.parent.parent / "request-elsewhere.json"
    target.write_text(json.dumps({"op": "git_status", "cwd": str(inbox.parent.parent)}))
    (inbox / name).symlink_to(target)


def _not_json(inbox: Path, name: str) -> None:
    (inbox / name).write_bytes(b"\xff\xfe not json")


HOSTILE = {
    "deeply nested JSON": _deep,
    "lone surrogate in cwd": _surrogate,
    "a directory": _directory,
    "a FIFO": _fifo,
    "over 8 MiB": _huge,
    "a symlink": _symlink,
    "not JSON": _not_json,
}


@pytest.mark.parametrize("what", list(HOSTILE))
def test_a_hostile_request_file_does_not_stop_the_daemon(
    own_site: Site, daemons: list[Daemon], what: str
) -> None:
    site = own_site
    project = site.home / "project"
    site.git(site.home, "init", "-q", str(project))
    server = Daemon(site).wait_ready()
    daemons.append(server)
    request_id = f"{time.time_ns():016x}-{uuid.uuid4().hex[:16]}"
    HOSTILE[what](site.queue / "inbox", f"{request_id}.json")
    time.sleep(0.5)
    assert server.process.poll() is None, f"the daemon died: {server.stderr()}"
    try:
        result = RelayClient(project, queue=site.queue).request("git_status", timeout=5)
    except RelayTimeout:
        pytest.fail("the daemon stopped serving after a hostile request file")
    except RelayDown:
        pytest.fail(f"the daemon went down after a hostile request file: {server.stderr()}")
    assert result.status == "ok"
    assert "started" not in site.events(request_id)


def test_answers_and_queue_files_are_private(site: Site, daemon: Daemon) -> None:
    for name in ("inbox", "processing", "pending", "outbox", "log", "stale"):
        mode = stat.S_IMODE((site.queue / name).stat().st_mode)
        assert mode & 0o077 == 0, (name, oct(mode))
    for path in (site.queue / "log").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
