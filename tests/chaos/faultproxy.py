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
ACCEPT_BATCH = 64  # connections taken per readiness of the listener
LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and drops unsent data
T = TypeVar("T")


def rst(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a TCP RST instead of a FIN, at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    writer.transport.abort()


def rst_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    sock.close()


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

    async def closed(self) -> None:
        """Once both sockets are really closed: their transports close them in a later callback."""
        await asyncio.gather(self.client.wait_closed(), self.target.wait_closed(), return_exceptions=True)


class FaultProxy:
    """One listening port forwarded to one target, in the mode last set (pass through at first).

    It accepts on its own socket from a reader callback rather than with ``asyncio.start_server`` or
    ``loop.sock_accept``, so that every accepted socket is the proxy's from the start. In Python 3.11 both
    drop a socket unclosed when accepting races with closing (an assertion in ``Server._attach``, a
    cancelled accept future), where no one can reach it; removing a reader cannot race. At ``close()`` the
    proxy closes every socket it holds before its loop stops."""

    def __init__(self, listen_port: int, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._mode: Mode = "pass"
        self._delay_s = 0.0
        self._closing = False
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepted: set[socket.socket] = set()  # from accept until its connection is over
        self._listener = socket.create_server((HOST, listen_port))  # SO_REUSEADDR on POSIX
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"faultproxy-{self.port}", daemon=True
        )
        self._thread.start()
        self._call(self._start_accepting())

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
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(SWITCH_TIMEOUT_S)
            self._loop.close()
            self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # --- on the loop's thread ---

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(SWITCH_TIMEOUT_S)

    def _resetting(self) -> bool:
        return self._mode == "reset"  # a method: the mode changes while a coroutine awaits

    async def _start_accepting(self) -> None:
        if not self._closing:
            self._loop.add_reader(self._listener, self._accept)

    def _accept(self) -> None:
        """The listener's reader callback: take every pending connection, hand each to its own task."""
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, say: pause rather than spin on a ready listener
                self._loop.remove_reader(self._listener)
                self._loop.call_later(0.05, lambda: self._loop.create_task(self._start_accepting()))
                return
            conn.setblocking(False)
            if self._resetting():
                rst_socket(conn)
                continue
            self._accepted.add(conn)
            task = self._loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        """Close every socket before the loop stops, so that none is left to the garbage collector."""
        self._closing = True
        self._loop.remove_reader(self._listener)  # also cancels a callback already queued
        await self._drop_links(reset=False)
        for task in list(self._tasks):  # still waiting on the target or a delayed chunk
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self._accepted):  # its task was cancelled before it ran
            conn.close()
        await asyncio.sleep(0)  # transports aborted by cancelled tasks finish closing in queued callbacks

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._forward(conn)
        finally:
            self._accepted.discard(conn)
            conn.close()  # a no-op when its transport closed it

    async def _forward(self, conn: socket.socket) -> None:
        if self._closing or self._resetting():
            rst_socket(conn)
            return
        client_reader, client = await asyncio.open_connection(sock=conn)
        try:
            target_reader, target = await asyncio.open_connection(*self.target)
        except OSError:
            rst(client)  # the target refused: the client learns it as a reset
            await client.wait_closed()
            return
        except asyncio.CancelledError:
            client.transport.abort()
            raise
        link = _Link(client, target)
        try:
            if self._closing or self._resetting():  # switched while we were connecting to the target
                link.abort(reset=self._resetting())
                return
            self._links.add(link)
            await asyncio.gather(
                self._pump(client_reader, target, link), self._pump(target_reader, client, link)
            )
        finally:
            self._links.discard(link)
            link.abort(reset=False)  # both directions ended: never leave a transport open
            await link.closed()

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
