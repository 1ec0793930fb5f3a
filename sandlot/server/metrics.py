"""Prometheus metrics of one server, in a registry of its own (several apps per process in
tests must not share counters)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..supervisor import Supervisor
from ..transcript.eventlog import Event
from ..transcript.hub import OUTPUT, HubHealth

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sandboxes = Gauge(
            "sandlot_sandboxes", "Sandboxes this server runs, by state", ["state"], registry=r
        )
        self.sandboxes_created = Counter(
            "sandlot_sandboxes_created", "Sandboxes created", registry=r
        )
        self.sandboxes_ended = Counter("sandlot_sandboxes_ended", "Sandboxes ended", registry=r)
        self.executions_started = Counter(
            "sandlot_executions_started", "Commands and code cells started", ["kind"], registry=r
        )
        self.executions_finished = Counter(
            "sandlot_executions_finished", "Commands and code cells ended", ["kind"], registry=r
        )
        self.stream_bytes = Counter(
            "sandlot_stream_bytes", "Output bytes logged, by stream", ["stream"], registry=r
        )
        self.events = Counter("sandlot_events", "Events appended to the log", registry=r)
        self.commit_seconds = Histogram(
            "sandlot_event_commit_seconds",
            "Time to commit one batch of a session's events to the log",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )
        self.latency = Histogram(
            "sandlot_request_seconds",
            "HTTP request latency until the response starts",
            ["method"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )

        self.events_waiting = Gauge(
            "sandlot_events_waiting", "Events queued for the log, not yet committed", registry=r
        )
        self.event_lag = Gauge(
            "sandlot_event_lag_seconds",
            "How long the oldest event not yet committed has waited",
            registry=r,
        )
        self.event_memory = Gauge(
            "sandlot_event_memory_bytes",
            "Event bytes held in memory, by use (pending: not yet committed; recent: kept for "
            "followers)",
            ["use"],
            registry=r,
        )
        self.loops = Gauge(
            "sandlot_background_loops",
            "Supervised background loops, by name and state (running, failed)",
            ["name", "state"],
            registry=r,
        )
        self.restarts = Gauge(
            "sandlot_background_restarts",
            "Restarts of supervised background loops since the server started, by name",
            ["name"],
            registry=r,
        )
        self.work_failures = Gauge(
            "sandlot_background_work_failures",
            "One-off background work that failed (each logged with its traceback)",
            registry=r,
        )

    def count_commit(self, events: list[Event], seconds: float) -> None:
        self.events.inc(len(events))
        self.commit_seconds.observe(seconds)
        for event in events:
            if event.kind in OUTPUT:
                self.stream_bytes.labels(event.kind).inc(len(event.data))

    def render(self, by_state: dict[str, int], hub: HubHealth, supervisor: Supervisor) -> bytes:
        for state in ("running", "ended", *by_state):
            self.sandboxes.labels(state).set(by_state.get(state, 0))
        self.events_waiting.set(hub.pending_events)
        self.event_lag.set(hub.oldest_pending_seconds)
        self.event_memory.labels("pending").set(hub.pending_bytes)
        self.event_memory.labels("recent").set(hub.recent_bytes)
        self.loops.clear()
        for loop in supervisor.loops:
            state = "running" if loop.alive else "failed"
            self.loops.labels(loop.name, state).inc()
        for name, count in supervisor.restart_counts.items():
            self.restarts.labels(name).set(count)
        self.work_failures.set(supervisor.spawn_failures)
        return generate_latest(self.registry)

    @property
    def Timing(self) -> type:
        """ASGI middleware timing every HTTP request until its response starts."""
        histogram = self.latency

        class Timing:
            def __init__(self, app: ASGIApp) -> None:
                self.app = app

            async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
                if scope["type"] != "http":
                    return await self.app(scope, receive, send)
                started = time.perf_counter()
                observed = False

                async def send_timed(message: Any) -> None:
                    nonlocal observed
                    if not observed and message["type"] == "http.response.start":
                        observed = True
                        histogram.labels(scope["method"]).observe(time.perf_counter() - started)
                    await send(message)

                return await self.app(scope, receive, send_timed)

        return Timing
