"""Controlled egress: the allowlist proxy and the callback bridge, both served on the host
for connections the agent accepts inside the sandbox and carries over its channel."""
