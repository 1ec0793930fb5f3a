"""A process's output log: the bytes it wrote, addressed by offset, the newest ``limit`` kept.

Offsets count stdout and stderr bytes together in arrival order from 0, so a reader that
knows how far it got (its offset) resumes exactly there: nothing lost and nothing repeated
while the log still holds that byte; when it does not, the reader is told how many bytes
went (the gap). Chunks are kept as the immutable ``bytes`` the pipe gave, so a reader is
handed views, never copies (a chunk cut by the limit keeps its whole buffer alive: a log may
hold one read, 1 MiB, more than it counts); small chunks of one stream are joined (a process
printing a line at a time would otherwise cost a Python object per line).
"""

import bisect

JOIN_BELOW = 4096  # a chunk smaller than this takes the next one of the same stream
CHUNK_COST = 96  # what one chunk costs beyond its bytes (object header, list entries)


class OutLog:
    def __init__(self, limit, budget=None):
        self.limit = limit  # bytes held at most
        self.budget = budget  # a shared [held bytes] over all logs of the agent, or None
        self._offsets = []  # absolute offset of each chunk, ascending
        self._chunks = []  # (stream, bytes)
        self._head = 0  # index of the oldest chunk still held (dropped ones are compacted)
        self.start = 0  # offset of the oldest byte held
        self.end = 0  # offset of the next byte to come
        self.held = 0  # bytes held (end - start) plus what the chunks cost

    @property
    def size(self):
        return self.end - self.start

    def append(self, stream, data):
        if not data:
            return
        n = len(data)
        last = len(self._chunks) - 1
        if last >= self._head:
            last_stream, last_data = self._chunks[last]
            if last_stream == stream and len(last_data) + n <= JOIN_BELOW:
                self._chunks[last] = (stream, b"".join((last_data, data)))
                self.end += n
                self._count(n)
                self.trim(self.end - self.limit)
                return
        self._offsets.append(self.end)
        self._chunks.append((stream, data))
        self.end += n
        self._count(n + CHUNK_COST)
        self.trim(self.end - self.limit)

    def _count(self, amount):
        self.held += amount
        if self.budget is not None:
            self.budget[0] += amount

    def trim(self, offset):
        """Drop every byte before ``offset`` (no more than the log holds)."""
        offset = min(offset, self.end)
        if offset <= self.start:
            return
        chunks, offsets = self._chunks, self._offsets
        freed = 0
        while self._head < len(chunks):
            first = offsets[self._head]
            stream, data = chunks[self._head]
            if first + len(data) <= offset:
                chunks[self._head] = None
                self._head += 1
                freed += len(data) + CHUNK_COST
                self.start = first + len(data)
                continue
            if first < offset:  # cut the first chunk: keep its tail (a view: no copying)
                cut = offset - first
                chunks[self._head] = (stream, memoryview(data)[cut:])
                offsets[self._head] = offset
                freed += offset - self.start
            self.start = offset
            break
        self.start = max(self.start, offset)
        self._count(-freed)
        if self._head > 64 and self._head * 2 > len(chunks):
            del chunks[: self._head]
            del offsets[: self._head]
            self._head = 0

    def clear(self):
        """Drop everything held (the log is forgotten; offsets stay where they were)."""
        self.trim(self.end)

    def gap(self, offset):
        """Bytes between ``offset`` and the oldest byte still held (0 if none were lost)."""
        return max(0, self.start - offset)

    def read(self, offset, size):
        """Up to ``size`` bytes from ``offset`` on (at least ``start``): [(stream, bytes)],
        one entry per chunk touched, each no longer than the chunk."""
        offset = max(offset, self.start)
        if offset >= self.end or size <= 0:
            return []
        i = bisect.bisect_right(self._offsets, offset, self._head) - 1
        pieces = []
        while size > 0 and i < len(self._chunks):
            stream, data = self._chunks[i]
            skip = offset - self._offsets[i]
            take = min(len(data) - skip, size)
            if skip == 0 and take == len(data):
                pieces.append((stream, data))
            else:
                pieces.append((stream, memoryview(data)[skip : skip + take]))
            offset += take
            size -= take
            i += 1
        return pieces
