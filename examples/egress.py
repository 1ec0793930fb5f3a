"""Controlled egress, end to end on this machine: an allowlist, a refusal in the log, a policy
changed while the sandbox runs, a callback bridge that adds a credential the sandbox never
sees, and a secret masked in the output.

The "internet" here is a small HTTP server on this host's loopback, reached by the name
``files.test``: the policy pins the name to 127.0.0.1 for the proxy's resolver, and names
that address in a rule (loopback is refused unless a rule names it).

    python examples/egress.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sandlot


class Upstream(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        authorized = self.headers.get("Authorization") == "Bearer s3cr3t-example"
        body = json.dumps({"path": self.path, "authorized": authorized}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


FETCH = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=10).read().decode())"


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    # A secret, stored as a user would (the value on standard input, never an argument).
    subprocess.run(
        [sys.executable, "-m", "sandlot.cli", "secrets", "set", "example-token"],
        input=b"Bearer s3cr3t-example", check=True,
    )  # fmt: skip

    network = {"allow": ["files.test", "127.0.0.1"], "resolve": {"files.test": "127.0.0.1"}}
    bridge = {
        "target": f"http://127.0.0.1:{port}/api",
        "headers": {"Authorization": {"secret": "example-token"}},
        "routes": [["GET", "/status"]],
    }
    with sandlot.Sandbox.create(network=network, bridge=bridge) as sb:
        url = f"http://files.test:{port}/hello"
        print("allowed: ", sb.commands.run(["python3", "-c", FETCH, url]).stdout.strip())

        refused = sb.commands.run(["python3", "-c", FETCH, f"http://evil.test:{port}/"])
        print("refused: ", refused.stderr.strip().splitlines()[-1])

        sb.set_network(allow=[])  # from now on, nothing
        later = sb.commands.run(["python3", "-c", FETCH, url])
        print("after set_network(allow=[]):", later.stderr.strip().splitlines()[-1])

        call = (
            "import os, urllib.request as u\n"
            "r = u.Request(os.environ['SANDLOT_BRIDGE_URL'] + '/status',\n"
            "    headers={'Authorization': 'Bearer ' + os.environ['SANDLOT_BRIDGE_TOKEN']})\n"
            "print(u.urlopen(r, timeout=10).read().decode())"
        )
        print("bridge:  ", sb.commands.run(["python3", "-c", call]).stdout.strip())

        for event in sb.network_events():
            where = event.get("host") or event.get("path")
            outcome = event.get("verdict") or event["status"]
            print(f"  event: {event['kind']:6} {where} -> {outcome}")

    with sandlot.Sandbox.create(env={"TOKEN": {"secret": "example-token"}}) as sb:
        print("masked:  ", sb.commands.run('echo "the token is $TOKEN"').stdout.strip())
    server.shutdown()


if __name__ == "__main__":
    main()
