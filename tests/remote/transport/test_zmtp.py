"""ZMTP 3 read for sizes: messages up to the limit pass in any split; larger ones, floods and other protocols do not."""

from lmwidget.remote.transport.zmtp import COMMAND, FRAME_COST, MAX_COMMANDS, MAX_FRAMES, MORE, FrameReader

LIMIT = 1000  # bytes: the limit these tests read under


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
