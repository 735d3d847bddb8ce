"""A TCP proxy whose faults a test switches at any time: pass, blackhole, latency, reset.

``FaultProxy(listen_port, target_host, target_port)`` listens on 127.0.0.1 (port 0 picks a free one, see
``.port``) and forwards every accepted connection to the target, over a connection it opens on accept (a
target that refuses it gets the client reset). It runs an asyncio loop in a daemon thread; the mode setters
are called from the test thread and return once the loop applied the mode:

- ``pass_through()``: bytes flow both ways.
- ``blackhole()``: connections stay open and new ones are accepted, but nothing is forwarded either way, so
  a client hangs until its own timeouts, as behind a partition. The proxy keeps reading and drops what it
  reads: bytes sent while blackholed are lost, never delivered later. That is harsher than a partition, after
  which TCP would retransmit: a connection used during the blackhole resumes with a gap in its stream, so
  the peer may read a corrupt frame (a Kafka broker then closes the connection); clients recover by their
  request timeouts and reconnects, which is what the tests exercise.
- ``latency(ms)``: every chunk waits ``ms`` before it is forwarded, in each direction, in order.
- ``reset()``: every current connection, client and target side, is closed with RST (SO_LINGER 0), and new
  ones are reset as soon as they are accepted, while the mode lasts.
- ``close()``: stops listening and closes everything; the proxy cannot be used again.

``ProxyGroup(routes)`` holds one proxy per (listen port, target port) pair, for instance one per broker from
``Stack.proxy_routes()``, and switches them all together. Both are context managers. Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

Mode = Literal["pass", "blackhole", "latency", "reset"]
HOST = "127.0.0.1"
CHUNK = 65536
QUEUED_CHUNKS = 64  # per direction while delayed: beyond it the proxy stops reading, as a full link would
DRAIN_TIMEOUT_S = 5.0  # for the links being closed to finish; a delayed chunk may hold one for its delay
SWITCH_TIMEOUT_S = DRAIN_TIMEOUT_S + 5.0
T = TypeVar("T")


def rst(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a TCP RST instead of a FIN, at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and the proxy's connection to the target for it."""

    def __init__(self, client: asyncio.StreamWriter, target: asyncio.StreamWriter) -> None:
        self.client = client
        self.target = target

    def abort(self, *, reset: bool) -> None:
        """Close both sockets now; their readers then see EOF, so every pump of the link ends."""
        for writer in (self.client, self.target):
            if reset:
                rst(writer)
            else:
                writer.transport.abort()


class FaultProxy:
    """One listening port forwarded to one target, in the mode last set (pass through at first)."""

    def __init__(self, listen_port: int, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._mode: Mode = "pass"
        self._delay_s = 0.0
        self._closing = False
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"faultproxy-{listen_port}", daemon=True
        )
        self._thread.start()
        try:
            self._server = self._call(
                asyncio.start_server(self._serve, HOST, listen_port, reuse_address=True)
            )
        except BaseException:
            self._stop_loop()
            raise
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def mode(self) -> Mode:
        return self._mode

    def pass_through(self) -> None:
        self._call(self._switch("pass"))

    def blackhole(self) -> None:
        self._call(self._switch("blackhole"))

    def latency(self, ms: float) -> None:
        self._call(self._switch("latency", ms / 1000))

    def reset(self) -> None:
        self._call(self._switch("reset"))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._shutdown())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(SWITCH_TIMEOUT_S)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # --- on the loop's thread ---

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(SWITCH_TIMEOUT_S)

    async def _switch(self, mode: Mode, delay_s: float = 0.0) -> None:
        self._mode, self._delay_s = mode, delay_s
        if mode == "reset":
            await self._drop_links(reset=True)

    async def _drop_links(self, *, reset: bool) -> None:
        """Close every link; a connection still reaching the target closes itself once it sees the mode."""
        for link in list(self._links):
            link.abort(reset=reset)
        if self._tasks:  # each ends once both its sockets are closed
            await asyncio.wait(list(self._tasks), timeout=DRAIN_TIMEOUT_S)

    async def _shutdown(self) -> None:
        self._closing = True
        self._server.close()
        await self._drop_links(reset=False)
        rest = asyncio.all_tasks() - {asyncio.current_task()}
        for task in rest:  # still waiting on a delayed chunk: cancelling closes its sockets
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._forward(client_reader, client)
        finally:
            self._tasks.discard(task)

    def _resetting(self) -> bool:
        return self._mode == "reset"  # a method: the mode changes while a coroutine awaits

    async def _forward(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if self._closing or self._resetting():
            rst(client)
            return
        try:
            target_reader, target = await asyncio.open_connection(*self.target)
        except OSError:
            rst(client)  # the target refused: the client learns it as a reset
            return
        link = _Link(client, target)
        if self._closing or self._resetting():  # switched while we were connecting to the target
            link.abort(reset=self._resetting())
            return
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(client_reader, target, link), self._pump(target_reader, client, link)
            )
        finally:
            self._links.discard(link)
            link.abort(reset=False)  # both directions ended: never leave a transport open

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link) -> None:
        """Read from ``source`` until EOF, queueing each chunk with the time it is due at ``sink``. A socket
        error on either side closes the whole link, as a reset at one end of a real path would."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUED_CHUNKS)
        sender = asyncio.create_task(self._send(queue, sink, link))
        try:
            while chunk := await source.read(CHUNK):
                if self._mode != "blackhole":
                    await queue.put((self._loop.time() + self._delay_s, chunk))
            await queue.put(None)
            await sender
        except (ConnectionError, OSError):
            link.abort(reset=self._resetting())
        finally:
            sender.cancel()  # a no-op once it has ended; else the link is going away

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], sink: asyncio.StreamWriter, link: _Link
    ) -> None:
        while (item := await queue.get()) is not None:
            due, chunk = item
            if (wait := due - self._loop.time()) > 0:
                await asyncio.sleep(wait)
            if self._mode == "blackhole" or sink.is_closing():
                continue  # dropped: a chunk queued before the blackhole began is lost too
            sink.write(chunk)
            try:
                await sink.drain()
            except (ConnectionError, OSError):
                link.abort(reset=self._resetting())  # the pump's source ends; keep taking its chunks
        if not sink.is_closing() and sink.can_write_eof():
            try:
                sink.write_eof()  # pass a half-close on; the other direction may still flow
            except OSError:  # the peer is already gone (ENOTCONN)
                link.abort(reset=self._resetting())


class ProxyGroup:
    """Several proxies switched together: ``routes`` are (listen port, target port) pairs on one host."""

    def __init__(self, routes: Sequence[tuple[int, int]], target_host: str = HOST) -> None:
        self.proxies: list[FaultProxy] = []
        try:
            for listen, target in routes:
                self.proxies.append(FaultProxy(listen, target_host, target))
        except BaseException:
            self.close()
            raise

    @property
    def ports(self) -> list[int]:
        return [proxy.port for proxy in self.proxies]

    def pass_through(self) -> None:
        for proxy in self.proxies:
            proxy.pass_through()

    def blackhole(self) -> None:
        for proxy in self.proxies:
            proxy.blackhole()

    def latency(self, ms: float) -> None:
        for proxy in self.proxies:
            proxy.latency(ms)

    def reset(self) -> None:
        for proxy in self.proxies:
            proxy.reset()

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
