"""The frame guard: ZMTP 3 frames followed by size, too large ones cut and counted, real ZeroMQ behind it."""

import collections
import socket
import time

import psutil
import pytest
import zmq

from lmwidget import frameguard
from lmwidget.frameguard import COMMAND, FRAME_COST, MAX_COMMANDS, MAX_FRAMES, MORE, FrameGuard, FrameReader
from tests.conftest import wait_for

LIMIT = 1000


def greeting(major=3, minor=1, mechanism=b"NULL"):
    """What a ZeroMQ 4 peer sends first: signature, version, mechanism, as-server, filler."""
    return b"\xff" + bytes(8) + b"\x7f" + bytes([major, minor]) + mechanism.ljust(20, b"\0") + bytes(32)


def frame(body: bytes, flags=0) -> bytes:
    if len(body) > 255:
        return bytes([flags | 0x02]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def test_messages_up_to_the_limit_pass_in_any_split_and_the_first_larger_one_is_refused():
    body = LIMIT - FRAME_COST  # what ZeroMQ holds for a frame: its body, and FRAME_COST besides
    stream = (greeting() + frame(b"\x05READY", COMMAND) + frame(b"a" * 200, MORE)
              + frame(b"b" * (body - 200 - FRAME_COST)) + frame(b"c" * LIMIT, COMMAND)  # a command stands alone
              + frame(b"d" * body))
    for chunk in (1, 7, 64, 65, len(stream)):  # byte by byte, across every boundary, and whole
        reader = FrameReader(LIMIT)
        assert all(reader.feed(stream[i:i + chunk]) is None for i in range(0, len(stream), chunk))
    assert reader.feed(frame(b"e" * (body + 1))[:9]) == "too large"  # on its size, before its body
    many = FrameReader(LIMIT)  # a message of many frames, each under the limit
    assert many.feed(greeting() + frame(b"f" * 600, MORE)) is None
    assert many.feed(frame(b"g" * (body - 600 - FRAME_COST + 1))[:9]) == "too large"
    empty = FrameReader(10 * LIMIT * FRAME_COST)  # empty frames: each costs ZeroMQ a frame all the same
    assert empty.feed(greeting() + frame(b"", MORE) * MAX_FRAMES) is None
    assert empty.feed(frame(b"", MORE)) == "too large"
    commands = FrameReader(LIMIT)  # a read of more commands than a client ever sends at once
    assert commands.feed(greeting() + frame(b"\x04PING", COMMAND) * MAX_COMMANDS) is None
    assert commands.feed(frame(b"\x04PING", COMMAND) * MAX_COMMANDS) is None  # the next read: anew
    assert commands.feed(frame(b"\x04PING", COMMAND) * (MAX_COMMANDS + 1)) == "unsigned or malformed"
    short = FrameReader(300 + FRAME_COST)
    assert short.feed(greeting() + bytes([0, 255])) is None  # 255 in one byte
    assert FrameReader(254 + FRAME_COST).feed(greeting() + bytes([0, 255])) == "too large"
    huge = FrameReader(LIMIT)
    assert huge.feed(greeting() + b"\x02" + (1 << 62).to_bytes(8, "big")) == "too large"


def test_anything_but_zmtp_3_is_refused_as_soon_as_it_shows():
    assert FrameReader(LIMIT).feed(b"GET / HTTP/1.1\r\n") == "unsigned or malformed"
    assert FrameReader(LIMIT).feed(greeting()[:9] + b"\x00") == "unsigned or malformed"  # ZMTP 1.0
    assert FrameReader(LIMIT).feed(greeting(major=1)[:11]) == "unsigned or malformed"  # ZMTP 2.0
    assert FrameReader(LIMIT).feed(greeting(major=3, minor=0)) is None
    assert FrameReader(LIMIT).feed(greeting(mechanism=b"CURVE")) is None


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
