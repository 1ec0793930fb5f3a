"""A TCP proxy on loopback whose connections a test can cut mid-stream (real sockets)."""

from __future__ import annotations

import asyncio
import threading


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to a target port; :meth:`cut` drops every open connection
    (both sides), as a flaky network would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self.swallow = 0  # connections whose answers are lost (the request still arrives)
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CuttableProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def shut() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shut(), self._loop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        swallow = self.swallow > 0
        self.swallow -= swallow

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, lose: bool) -> None:
            try:
                while data := await src.read(65536):
                    if lose:  # the answer is lost on the way: cut the connection instead
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, swallow))
        self._writers.difference_update((writer, up_writer))

    def cut(self) -> int:
        """Abort every open connection; returns how many were cut."""
        done = threading.Event()
        count = 0

        def abort() -> None:
            nonlocal count
            for writer in list(self._writers):
                transport = writer.transport
                if not transport.is_closing():
                    count += 1
                transport.abort()
            self._writers.clear()
            done.set()

        self._loop.call_soon_threadsafe(abort)
        done.wait(5)
        return count
