"""The exposed-port SDK tests, run again in remote mode: ``sb.expose`` asks the server, and
HTTP and WebSocket go through its proxy. Tests of raw TCP are left out below, each with the
reason: the server proxies HTTP and WebSocket only."""

from integration.test_ports import *  # noqa: F403

# Raw TCP both ways: the server's URL is an HTTP path, not a port of its own.
del test_bytes_flow_both_ways_at_once  # noqa: F821
# A raw TCP connection to the server reaches the server, not the sandbox's port.
del test_a_port_nothing_listens_on_closes_a_raw_connection  # noqa: F821
# Connects raw TCP to the URL's host port, which is the server's own (still listening);
# a killed sandbox's URL is tested in test_ports_server.py (410 sandbox_closed).
del test_kill_releases_the_port  # noqa: F821
