"""The fault proxy against a tiny local echo server: each mode does what it says, and switching is immediate.

Plain unit tests (loopback only, no broker): they run with ``make unit``, unlike the test_chaos_* modules.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import faultproxy
import pytest
from faultproxy import FaultProxy, ProxyGroup

pytestmark = pytest.mark.timeout(60)
QUIET_S = 0.5  # how long "nothing arrives" is watched for


class EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte back and keeps what it received, so a test can tell what crossed the proxy."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.received = bytearray()
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class EchoHandler(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                with self.server.lock:
                    self.server.received += data
                self.request.sendall(data)
        except OSError:
            pass  # the proxy reset us: the connection is over


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(0, "127.0.0.1", echo.port) as proxy:
        yield proxy


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := sock.recv(size - len(data))):
        data += chunk
    return data


def silent(sock: socket.socket) -> bool:
    """True when nothing arrives for QUIET_S, and the connection is still open."""
    sock.settimeout(QUIET_S)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5)
    return False  # a byte arrived, or the connection closed


def assert_reset_at_connect(port: int) -> None:
    """The RST comes right after the handshake: connect() or the first recv() sees it, whichever is later."""
    with pytest.raises(ConnectionResetError), connect(port) as sock:
        sock.recv(1)


def round_trip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return receive(sock, len(data))


def test_pass_through_forwards_both_ways(proxy: FaultProxy, echo: EchoServer) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB: several chunks each way
    with connect(proxy.port) as sock:
        assert round_trip(sock, b"hello") == b"hello"
        assert round_trip(sock, payload) == payload
    assert bytes(echo.received) == b"hello" + payload


def test_blackhole_forwards_nothing_and_drops_what_was_sent(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy.port) as before:
        assert round_trip(before, b"ping") == b"ping"
        proxy.blackhole()
        before.sendall(b"lost")
        assert silent(before)
        with connect(proxy.port) as during:  # accepted, then silent too
            during.sendall(b"also lost")
            assert silent(during)
        proxy.pass_through()
        assert round_trip(before, b"back") == b"back"  # the same connection stayed open
        assert silent(before)  # and the blackholed bytes never arrive later
    assert bytes(echo.received) == b"pingback"


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    with connect(proxy.port) as sock:
        proxy.latency(150)
        started = time.monotonic()
        assert round_trip(sock, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.3  # 150 ms there and 150 ms back
        proxy.pass_through()
        started = time.monotonic()
        assert round_trip(sock, b"fast") == b"fast"
        assert time.monotonic() - started < 0.3


def test_reset_sends_rst_to_current_and_new_connections(proxy: FaultProxy) -> None:
    with connect(proxy.port) as sock:
        assert round_trip(sock, b"ping") == b"ping"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    assert_reset_at_connect(proxy.port)
    proxy.pass_through()
    with connect(proxy.port) as sock:
        assert round_trip(sock, b"again") == b"again"


@pytest.fixture
def slow_target_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy's connection to the target takes 300 ms, so a test can switch modes while it is pending."""
    connect_now = asyncio.open_connection

    async def slowly(*args: Any, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await asyncio.sleep(0.3)
        return await connect_now(*args, **kwargs)

    monkeypatch.setattr(faultproxy.asyncio, "open_connection", slowly)


@pytest.mark.usefixtures("slow_target_connect")
def test_reset_also_resets_a_connection_still_reaching_the_target(proxy: FaultProxy) -> None:
    with connect(proxy.port) as sock:
        time.sleep(0.1)  # accepted, its target connection pending
        proxy.reset()  # returns once that connection too was reset
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"ping")
            sock.recv(1)


@pytest.mark.usefixtures("slow_target_connect")
def test_close_does_not_wait_for_a_connection_still_reaching_the_target(echo: EchoServer) -> None:
    proxy = FaultProxy(0, "127.0.0.1", echo.port)
    with connect(proxy.port) as sock:
        time.sleep(0.1)
        started = time.monotonic()
        proxy.close()
        assert time.monotonic() - started < 2
        assert sock.recv(1) == b""


def test_close_during_a_storm_of_connects_leaves_no_socket_open(echo: EchoServer) -> None:
    # As librdkafka reconnecting to every broker: some connections are accepted as the proxy closes.
    proxy = FaultProxy(0, "127.0.0.1", echo.port)
    stop = threading.Event()

    def storm() -> None:
        deadline = time.monotonic() + 5
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
            except OSError:
                return  # refused: the proxy has closed

    threads = [threading.Thread(target=storm) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    proxy.close()
    stop.set()
    for thread in threads:
        thread.join(10)
    gc.collect()  # a socket left open would warn here, and warnings are errors


def test_a_refused_target_resets_the_client() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with FaultProxy(0, "127.0.0.1", free) as proxy:
        assert_reset_at_connect(proxy.port)


def test_close_stops_listening(echo: EchoServer) -> None:
    proxy = FaultProxy(0, "127.0.0.1", echo.port)
    with connect(proxy.port) as sock:
        assert round_trip(sock, b"ping") == b"ping"
        proxy.close()
        assert sock.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
    proxy.close()  # twice is harmless


def test_group_proxies_every_route_and_switches_them_together() -> None:
    servers = [EchoServer(), EchoServer()]
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in servers
    ]
    for thread in threads:
        thread.start()
    try:
        with ProxyGroup([(0, s.port) for s in servers]) as group:
            socks = [connect(port) for port in group.ports]
            try:
                assert [round_trip(s, b"one") for s in socks] == [b"one", b"one"]
                group.blackhole()
                for sock in socks:
                    sock.sendall(b"lost")
                assert all(silent(s) for s in socks)
                group.pass_through()
                assert [round_trip(s, b"two") for s in socks] == [b"two", b"two"]
            finally:
                for sock in socks:
                    sock.close()
        assert [bytes(s.received) for s in servers] == [b"onetwo", b"onetwo"]
    finally:
        for server, thread in zip(servers, threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join(5)
