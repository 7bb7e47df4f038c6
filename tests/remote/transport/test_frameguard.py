"""The frame guard: too large messages cut and counted, real ZeroMQ behind it, what it does when pressed."""

import collections
import socket
import time

import psutil
import pytest
import zmq

from lmwidget.remote.transport import frameguard
from lmwidget.remote.transport.frameguard import FrameGuard
from lmwidget.remote.transport.zmtp import FRAME_COST
from tests.conftest import wait_for
from tests.remote.transport.test_zmtp import LIMIT, greeting


@pytest.fixture
def guarded(tmp_path):
    """A ZeroMQ ROUTER behind a guard on 127.0.0.1, and what the guard cut."""
    cuts = collections.Counter()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    path = str(tmp_path / "control")
    router.bind(f"ipc://{path}")
    guard = FrameGuard("127.0.0.1", [(0, path, LIMIT)], lambda why: cuts.update([why]))
    yield router, guard.ports[0], cuts
    router.close()
    ctx.term()
    guard.close()


def dealer(port):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def test_messages_pass_both_ways_and_a_peer_sending_a_larger_one_is_cut_counted_and_may_come_back(guarded):
    router, port, cuts = guarded
    sock = dealer(port)
    try:
        most = LIMIT - 1 - 2 * FRAME_COST  # two frames: the first of 1 byte
        sock.send_multipart([b"a", b"x" * most])
        assert router.poll(5000)
        peer, *frames = router.recv_multipart()
        assert frames == [b"a", b"x" * most]
        router.send_multipart([peer, b"answer"])
        assert sock.poll(5000) and sock.recv_multipart() == [b"answer"]
        sock.send_multipart([b"b", b"x" * (most + 1)])
        wait_for(lambda: cuts["too large"] == 1, timeout=10)
        assert not router.poll(200)  # not a frame of it reached the socket behind
        sock.send_multipart([b"c"])  # the DEALER connects again
        assert router.poll(10_000) and router.recv_multipart()[1:] == [b"c"]
        assert dict(cuts) == {"too large": 1}
    finally:
        sock.close()


def test_a_peer_streaming_a_huge_frame_is_cut_on_its_size_without_the_guard_holding_it(guarded):
    router, port, cuts = guarded
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(greeting())
    raw.recv(64)  # the ROUTER's greeting, passed back
    raw.sendall(b"\x02" + (2 << 30).to_bytes(8, "big"))  # a 2 GiB frame begins
    sent, chunk = 0, bytes(1 << 20)
    deadline = time.monotonic() + 30
    with pytest.raises(OSError):  # reset or broken pipe: the guard closed it
        while time.monotonic() < deadline:
            sent += raw.send(chunk)
    raw.close()
    assert sent < 64 << 20 and dict(cuts) == {"too large": 1}  # what the socket buffers took


def test_a_connection_beyond_the_limit_is_refused_and_counted(guarded, monkeypatch):
    router, port, cuts = guarded
    monkeypatch.setattr(frameguard, "MAX_LINKS", 2)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    extra = socket.create_connection(("127.0.0.1", port))
    try:
        extra.settimeout(10)
        assert extra.recv(1) == b""  # closed at once
        assert dict(cuts) == {"too many connections": 1}
        held.pop().close()
        sock = dealer(port)  # room again
        sock.send_multipart([b"after"])
        assert router.poll(10_000) and router.recv_multipart()[1:] == [b"after"]
        sock.close()
    finally:
        for s in held + [extra]:
            s.close()


def test_a_port_in_use_is_refused_and_nothing_is_left_listening(tmp_path):
    taken = socket.create_server(("127.0.0.1", 0))
    before = listening()
    try:
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1 port {taken.getsockname()[1]}: "
                                          r"Address already in use.*; give an address of this machine"):
            FrameGuard("127.0.0.1", [(0, str(tmp_path / "a"), LIMIT),
                                     (taken.getsockname()[1], str(tmp_path / "b"), LIMIT)], print)
        assert listening() == before  # the first port, taken before the second failed, let go
    finally:
        taken.close()


def listening():
    return sorted(c.laddr for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN)


def test_a_connection_that_sends_no_greeting_in_time_is_cut_and_counted(guarded, monkeypatch):
    router, port, cuts = guarded
    monkeypatch.setattr(frameguard, "GREETING_WITHIN", 0.3)
    silent = socket.create_connection(("127.0.0.1", port))
    slow = socket.create_connection(("127.0.0.1", port))
    try:
        slow.sendall(greeting()[:20])  # most of a greeting: no more
        for sock in (silent, slow):
            sock.settimeout(10)
            assert sock.recv(100).startswith(b"\xff") and sock.recv(100) == b""  # ZeroMQ's greeting, then cut
        assert dict(cuts) == {"unsigned or malformed": 2}
    finally:
        silent.close()
        slow.close()


def test_out_of_file_descriptors_the_guard_refuses_that_connection_and_goes_on(guarded, monkeypatch):
    router, port, cuts = guarded
    real = socket.socket
    calls = []

    class Sockets:  # the guard's view of the socket module: its next new socket fails as with no fd left
        def __getattr__(self, name):
            return getattr(socket, name)

        def socket(self, *args):
            calls.append(args)
            if len(calls) == 1:
                raise OSError(24, "Too many open files")
            return real(*args)

    monkeypatch.setattr(frameguard, "socket", Sockets())
    refused = socket.create_connection(("127.0.0.1", port))
    try:
        refused.settimeout(10)
        assert refused.recv(1) == b""
        sock = dealer(port)
        sock.send_multipart([b"after"])
        assert router.poll(10_000) and router.recv_multipart()[1:] == [b"after"]
        sock.close()
        assert len(calls) == 2
    finally:
        refused.close()


def test_what_the_guard_passes_on_to_a_client_is_not_held_back_for_coalescing(tmp_path):
    """TCP_NODELAY, as ZeroMQ sets on its own connections: without it a second reply waits
    for the client's delayed ACK (40 ms)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"ipc://{tmp_path / 'control'}")
    guard = FrameGuard("127.0.0.1", [(0, str(tmp_path / "control"), LIMIT)], print)
    sock = dealer(guard.ports[0])
    try:
        sock.send(b"hello")
        assert router.poll(5000) and router.recv_multipart()
        peers = {link.peer for link in guard._links.values()}
        assert len(peers) == 1 and peers.pop().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()
        router.close()
        ctx.term()
        guard.close()


def test_where_few_files_may_be_open_fewer_connections_are_taken():
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4096:
        pytest.skip(f"the soft limit is already {soft}")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # Linux's usual default
        assert frameguard.links_allowed() == 64  # 2 ports x 64 x 3 descriptors: 3/8 of 1024
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
        assert frameguard.links_allowed() == frameguard.MAX_LINKS == 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
