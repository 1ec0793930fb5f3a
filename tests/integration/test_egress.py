"""Controlled egress from inside real sandboxes: the allowlist proxy, the callback bridge and
secrets, end to end. Upstreams are real HTTP servers on this host's loopback (IPv4 and IPv6);
names reach them through the policy's ``resolve`` map, which is the proxy's resolver, not the
sandbox's. Loopback is refused unless a rule names the address, so the tests that reach an
upstream name it.

Written against the public SDK and the default provider, so the docker and ssh suites run
these same tests on their providers.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator

import pytest

import sandlot
from sandlot.errors import InvalidArgumentError, SecretNotFoundError

from .egress_helpers import CONNECT, Upstream, fetch, put_secret

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream("127.0.0.1")
    yield server
    server.close()


@pytest.fixture(scope="module")
def upstream6() -> Iterator[Upstream]:
    server = Upstream("::1")
    yield server
    server.close()


def _policy(*allow: str, **resolve: str) -> dict:
    return {"allow": list(allow), "resolve": {k.replace("_", "."): v for k, v in resolve.items()}}


FILES = _policy("files.test", "127.0.0.1", files_test="127.0.0.1")


@pytest.fixture(scope="module")
def allowed() -> Iterator[sandlot.Sandbox]:
    """One sandbox with FILES as its policy, shared by the read-only tests."""
    with sandlot.Sandbox.create(network=FILES) as box:
        yield box


def _events(sb: sandlot.Sandbox, host: str) -> list[dict]:
    return [e for e in sb.network_events() if e.get("host") == host]


# -- the allowlist ------------------------------------------------------------------------------


def test_an_allowed_name_is_reached_through_the_proxy(
    allowed: sandlot.Sandbox, upstream: Upstream
) -> None:
    answer = fetch(allowed, "GET", f"http://files.test:{upstream.port}/hello")
    assert answer["status"] == 200
    assert answer["body"] == "hello from upstream /hello"
    event = _events(allowed, "files.test")[-1]
    assert event["verdict"] == "allowed" and event["port"] == upstream.port
    assert event["bytes_down"] > 0 and event["address"] == "127.0.0.1"
    # Where the agent's socket is on this machine it hands the connection over; over SSH
    # the bytes ride the channel.
    assert event["via"] == ("channel" if allowed.provider == "ssh" else "handoff")


def test_connect_tunnels_reach_an_allowed_name(
    allowed: sandlot.Sandbox, upstream: Upstream
) -> None:
    allowed.files.write("/tmp/connect.py", CONNECT)
    out = allowed.commands.run(["python3", "/tmp/connect.py", f"files.test:{upstream.port}"])
    assert out.stdout.splitlines() == ["200", "hello from upstream /tunnel"]


def test_a_host_no_rule_allows_is_refused_and_logged(
    allowed: sandlot.Sandbox, upstream: Upstream
) -> None:
    answer = fetch(allowed, "GET", f"http://evil.test:{upstream.port}/")
    assert answer["status"] == 403
    assert "evil.test" in answer["body"]
    event = _events(allowed, "evil.test")[-1]
    assert event["verdict"] == "refused" and "no rule" in event["reason"]
    allowed.files.write("/tmp/connect.py", CONNECT)
    out = allowed.commands.run(["python3", "/tmp/connect.py", f"evil.test:{upstream.port}"])
    assert out.stdout.split() == ["403"]


def test_an_ip_literal_no_rule_names_is_refused(
    allowed: sandlot.Sandbox, upstream: Upstream
) -> None:
    answer = fetch(allowed, "GET", f"http://127.0.0.2:{upstream.port}/")
    assert answer["status"] == 403
    assert _events(allowed, "127.0.0.2")[-1]["verdict"] == "refused"


def test_the_cloud_metadata_address_is_refused(allowed: sandlot.Sandbox) -> None:
    answer = fetch(allowed, "GET", "http://169.254.169.254/latest/meta-data/")
    assert answer["status"] == 403
    assert _events(allowed, "169.254.169.254")[-1]["verdict"] == "refused"


def test_without_the_proxy_variables_nothing_is_reachable(
    allowed: sandlot.Sandbox, upstream: Upstream
) -> None:
    probe = (
        "import socket, sys\n"
        f"for host, port in [('127.0.0.1', {upstream.port}), ('10.0.0.1', 80), ('1.1.1.1', 443)]:\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2)\n"
        "        print('reached', host)\n"
        "    except OSError as e:\n"
        "        print('refused', host)\n"
    )
    allowed.files.write("/tmp/probe.py", probe)
    before = len(upstream.seen)
    out = allowed.commands.run(
        "env -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy -u ALL_PROXY "
        "-u all_proxy python3 /tmp/probe.py"
    )
    assert out.stdout.split() == [
        "refused", "127.0.0.1", "refused", "10.0.0.1", "refused", "1.1.1.1",
    ]  # fmt: skip
    assert len(upstream.seen) == before  # nothing arrived by another way


def test_an_allowed_name_that_resolves_to_a_private_address_is_refused() -> None:
    policy = _policy("inside.test", inside_test="10.1.2.3")
    with sandlot.Sandbox.create(network=policy) as sb:
        answer = fetch(sb, "GET", "http://inside.test/")
        assert answer["status"] == 403
        event = _events(sb, "inside.test")[-1]
        assert event["verdict"] == "refused" and "10.1.2.3" in event["reason"]


def test_ipv6_upstreams_are_reached_by_name(upstream6: Upstream) -> None:
    policy = _policy("v6.test", "::1", v6_test="::1")
    with sandlot.Sandbox.create(network=policy) as sb:
        answer = fetch(sb, "GET", f"http://v6.test:{upstream6.port}/six")
        assert answer["status"] == 200, answer
        assert answer["body"] == "hello from upstream /six"
        assert _events(sb, "v6.test")[-1]["address"] == "::1"


def test_the_policy_changes_while_the_sandbox_runs(upstream: Upstream) -> None:
    url = f"http://files.test:{upstream.port}/"
    with sandlot.Sandbox.create(network=FILES) as sb:
        assert fetch(sb, "GET", url)["status"] == 200
        sb.set_network(allow=[])
        assert fetch(sb, "GET", url)["status"] == 403
        sb.set_network(FILES)
        assert fetch(sb, "GET", url)["status"] == 200
        sb.set_network("none")
        assert fetch(sb, "GET", url)["status"] == 403
        verdicts = [e["verdict"] for e in _events(sb, "files.test")]
        assert verdicts == ["allowed", "refused", "allowed", "refused"]


def test_a_sandbox_without_a_network_gets_its_proxy_when_a_policy_is_set(
    upstream: Upstream,
) -> None:
    with sandlot.Sandbox.create() as sb:
        assert "HTTP_PROXY" not in sb.commands.run("env").stdout
        sb.set_network(FILES)
        answer = fetch(sb, "GET", f"http://files.test:{upstream.port}/late")
        assert answer["status"] == 200


def test_bad_policies_are_refused_with_the_rule_named() -> None:
    for bad in (["*"], ["*.com"], ["https://x.example"], ["a.example:99999"], ["a b"]):
        with pytest.raises(InvalidArgumentError) as caught:
            sandlot.Sandbox.create(network={"allow": bad})
        assert bad[0] in str(caught.value)
    with pytest.raises(InvalidArgumentError):
        sandlot.Sandbox.create(network="everything")


# -- secrets --------------------------------------------------------------------------------


def test_a_secret_variable_is_masked_in_output_and_absent_from_records() -> None:
    name = "token-" + uuid.uuid4().hex[:8]
    value = "s3cr3t-" + secrets.token_hex(12)
    put_secret(name, value)
    seen: list[str] = []
    with sandlot.Sandbox.create(env={"TOKEN": {"secret": name}}) as sb:
        out = sb.commands.run('echo "token=$TOKEN"; echo "$TOKEN" >&2', on_stdout=seen.append)
        assert out.stdout == "token=********\n" and out.stderr == "********\n"
        assert value not in "".join(seen)
        # The value is in the sandbox's environment (that is the point), but the records keep
        # the reference only.
        length = sb.commands.run('printf %s "$TOKEN" | wc -c').stdout.strip()
        assert length == str(len(value))
        # Searched by another process: opening and closing a SQLite file here would drop
        # this process's locks on it (POSIX locks are per process), under its open store.
        # Capped workspaces' images are left out (10 GiB of sparse zeros each, read in full
        # by grep): a live workspace is searched through its mount.
        found = subprocess.run(
            ["grep", "-rlaF", "--exclude=*.ext4", "--", value, os.environ["SANDLOT_HOME"]],
            capture_output=True,
            text=True,
        )
        assert found.returncode == 1 and found.stdout == "", found.stdout


def test_a_command_secret_variable_is_masked_too() -> None:
    name = "cmd-" + uuid.uuid4().hex[:8]
    value = "cmd-" + secrets.token_hex(12)
    put_secret(name, value)
    with sandlot.Sandbox.create() as sb:
        out = sb.commands.run("echo $X; echo $X | rev", env={"X": {"secret": name}})
        assert out.stdout.splitlines() == ["********", value[::-1]]


def test_a_missing_secret_is_a_clear_error() -> None:
    with pytest.raises(SecretNotFoundError) as caught:
        sandlot.Sandbox.create(env={"X": {"secret": "no-such-secret"}})
    assert "no-such-secret" in str(caught.value)
    with sandlot.Sandbox.create() as sb, pytest.raises(SecretNotFoundError):
        sb.commands.run("true", env={"X": {"secret": "no-such-secret"}})


# -- the callback bridge ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bridged(upstream: Upstream) -> Iterator[tuple[sandlot.Sandbox, str]]:
    token = "control-" + secrets.token_hex(16)
    name = "control-" + uuid.uuid4().hex[:8]
    put_secret(name, token)
    bridge = {
        "target": upstream.url + "/api",
        "headers": {"Authorization": {"secret": name}},
        "routes": [["POST", "/runs/*/events"], ["GET", "/runs/*"]],
        "body_limit": 1024,
    }
    with sandlot.Sandbox.create(bridge=bridge) as box:
        yield box, token


def _bridge(sb: sandlot.Sandbox, method: str, path: str, body: str | None = None, **kw) -> dict:
    env = sb.commands.run("echo $SANDLOT_BRIDGE_URL $SANDLOT_BRIDGE_TOKEN").stdout.split()
    headers = {"Authorization": f"Bearer {env[1]}", "Content-Type": "application/json"}
    headers.update(kw.pop("headers", {}))
    return fetch(sb, method, env[0] + path, body, headers)


def test_the_bridge_forwards_allowed_routes_with_the_host_credentials(
    bridged: tuple[sandlot.Sandbox, str], upstream: Upstream
) -> None:
    sb, token = bridged
    answer = _bridge(sb, "POST", "/runs/7/events", '{"ok": true}')
    assert answer["status"] == 200 and answer["body"] == '{"got": "{\\"ok\\": true}"}'
    headers = {k.lower(): v for k, v in answer["headers"].items()}
    assert "x-internal" not in headers and headers["etag"] == '"v1"'
    got = upstream.seen[-1]
    assert got["path"] == "/api/runs/7/events" and got["headers"]["Authorization"] == token
    assert got["headers"]["X-Sandlot-Sandbox"] == sb.id
    assert _bridge(sb, "GET", "/runs/7")["status"] == 200
    events = [e for e in sb.network_events() if e["kind"] == "bridge"]
    assert [(e["method"], e["status"]) for e in events[-2:]] == [("POST", 200), ("GET", 200)]
    assert token not in str(sb.network_events())


def test_the_bridge_refuses_what_its_policy_does_not_allow(
    bridged: tuple[sandlot.Sandbox, str],
) -> None:
    sb, _ = bridged
    url = sb.commands.run("echo $SANDLOT_BRIDGE_URL").stdout.strip()
    assert fetch(sb, "GET", url + "/runs/7")["status"] == 401  # no token
    wrong = {"Authorization": "Bearer nope"}
    assert fetch(sb, "GET", url + "/runs/7", headers=wrong)["status"] == 401
    assert _bridge(sb, "DELETE", "/runs/7")["status"] == 403
    assert _bridge(sb, "GET", "/admin")["status"] == 403
    assert _bridge(sb, "GET", "/runs/7/../../admin")["status"] in (400, 403)
    assert _bridge(sb, "POST", "/runs/7/events", '{"x": "' + "a" * 2000 + '"}')["status"] == 413
    plain = {"Content-Type": "text/plain"}
    assert _bridge(sb, "POST", "/runs/7/events", "hi", headers=plain)["status"] == 415
    refused = _bridge(sb, "DELETE", "/runs/7")
    assert "route" in refused["body"]


def test_the_bridge_credentials_never_enter_the_sandbox(
    bridged: tuple[sandlot.Sandbox, str],
) -> None:
    sb, token = bridged
    _bridge(sb, "GET", "/runs/1")
    probe = sb.commands.run(
        "env; cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; ps aux; "
        "grep -rs . /workspace /tmp 2>/dev/null | head -1000",
        timeout=60,
    )
    assert token not in probe.stdout


def test_the_process_provider_cannot_take_an_allowlist() -> None:
    with pytest.raises(sandlot.EgressError, match="without isolation"):
        sandlot.Sandbox.create("process", network={"allow": ["a.test"]})


def test_code_cells_mask_the_sandbox_secrets_too() -> None:
    name = "cell-" + uuid.uuid4().hex[:8]
    value = "cell-" + secrets.token_hex(12)
    put_secret(name, value)
    with sandlot.Sandbox.create(env={"CELL_TOKEN": {"secret": name}}) as sb:
        execution = sb.run_code("import os\nprint(os.environ['CELL_TOKEN'])")
        assert execution.logs.stdout == ["********\n"]
        with pytest.raises(InvalidArgumentError, match="plain strings"):
            sb.create_code_context(env={"X": {"secret": name}})


def test_a_bridged_sandbox_gets_its_proxy_when_a_policy_is_set(upstream: Upstream) -> None:
    bridge = {"target": upstream.url, "routes": [["GET", "/x"]]}
    with sandlot.Sandbox.create(bridge=bridge) as sb:
        assert "HTTP_PROXY" not in sb.commands.run("env").stdout
        sb.set_network(FILES)
        answer = fetch(sb, "GET", f"http://files.test:{upstream.port}/both")
        assert answer["status"] == 200
