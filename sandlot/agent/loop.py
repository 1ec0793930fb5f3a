"""A minimal single-threaded event loop over epoll, timers and "ready" callbacks.

asyncio costs the agent ~45 ms of start-up; this is all it needs. Handlers never block: file
descriptors are non-blocking, and work on regular files (which epoll cannot watch) is split
into small steps run from the ready set between polls.
"""

import select
import time

MAX_WAIT = 3600.0  # seconds; the loop wakes at least this often


class Loop:
    def __init__(self):
        self._epoll = select.epoll()
        self._handlers = {}  # fd -> callable(events)
        self._timers = []  # [when, callback]; few at a time, so a list beats a heap
        self._ready = []  # callables run once on the next turn
        self.running = True

    def watch(self, fd, mask, handler):
        if fd in self._handlers:
            self._epoll.modify(fd, mask)
        else:
            self._epoll.register(fd, mask)
        self._handlers[fd] = handler

    def unwatch(self, fd):
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass

    def call_at(self, when, callback):
        timer = [when, callback]
        self._timers.append(timer)
        return timer

    def cancel(self, timer):
        if timer in self._timers:
            self._timers.remove(timer)

    def call_soon(self, callback):
        self._ready.append(callback)

    def run(self):
        while self.running:
            if self._ready:
                timeout = 0
            elif self._timers:
                # Capped: epoll takes milliseconds in a C int (a 30-day deadline overflows it).
                timeout = max(0.0, min(t[0] for t in self._timers) - time.monotonic())
                timeout = min(timeout, MAX_WAIT)
            else:
                timeout = -1
            for fd, events in self._epoll.poll(timeout):
                handler = self._handlers.get(fd)
                if handler is not None:
                    handler(events)
            if self._timers:
                now = time.monotonic()
                due = [t for t in self._timers if t[0] <= now]
                for timer in due:
                    self._timers.remove(timer)
                    timer[1]()
            if self._ready:
                ready, self._ready = self._ready, []
                for callback in ready:
                    callback()
