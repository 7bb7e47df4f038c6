"""ZMTP 3 as a client sends it, read for sizes only: what a guard needs to cut a message too large."""

from __future__ import annotations

GREETING = 64  # bytes of a ZMTP 3 greeting: signature (10), version (2), mechanism, as-server, filler
MORE, LONG, COMMAND = 0x01, 0x02, 0x04  # a frame's flags: more frames follow; 8-byte size; a command
MAX_FRAMES = 256  # frames in one message (lmwidget's have 2)
MAX_COMMANDS = 64  # commands in one read (a client sends a few, seconds apart)
FRAME_COST = 64  # bytes ZeroMQ holds for a frame besides its body: counted in a message's size


class FrameReader:
    """Follows what a peer sends, as it arrives, from its ZMTP 3 greeting on through the size
    of each frame, without keeping any frame's body. ZeroMQ's own limit (ZMQ_MAXMSGSIZE, on
    each frame) closes such a peer's connection as if it had left; this says why, before the
    frame is passed on, and also limits a message of many frames as a whole."""

    def __init__(self, max_message: int):
        self.max_message = max_message
        self.greeted = False
        self._head = bytearray()  # the greeting, then each frame's flags and size, until whole
        self._body = 0  # bytes of the current frame still to pass
        self._message = self._frames = 0  # the message so far: its size (with FRAME_COST a frame), frames
        self._commands = 0  # in this read

    def feed(self, data: bytes) -> str | None:
        """None when `data` may pass on; else why the connection is cut: "unsigned or malformed"
        (a greeting that is not ZMTP 3's, which every ZeroMQ since 4.0 sends, or a flood of
        commands) or "too large" (a message over the limit, or of over MAX_FRAMES frames)."""
        i, n = 0, len(data)
        self._commands = 0
        while i < n:
            if self._body:
                step = min(self._body, n - i)
                self._body -= step
                i += step
                continue
            part = data[i:i + self._wanted() - len(self._head)]
            self._head += part
            i += len(part)
            why = self._greeting() if not self.greeted else self._frame()
            if why is not None:
                return why
        return None

    def _wanted(self) -> int:
        if not self.greeted:
            return GREETING
        if not self._head:
            return 1
        return 9 if self._head[0] & LONG else 2

    def _greeting(self) -> str | None:
        head = self._head
        if head[0] != 0xFF or (len(head) > 9 and not head[9] & 0x01) or (len(head) > 10 and head[10] < 3):
            return "unsigned or malformed"
        if len(head) == GREETING:
            self.greeted = True
            head.clear()
        return None

    def _frame(self) -> str | None:
        head = self._head
        if len(head) < self._wanted():
            return None
        flags, size = head[0], int.from_bytes(head[1:], "big")
        if flags & COMMAND:  # a frame of its own, which ZeroMQ acts on at once
            self._commands += 1
            if self._commands > MAX_COMMANDS:
                return "unsigned or malformed"
            total = size
        else:  # ZeroMQ holds a message's frames until its last has come
            total = self._message = self._message + size + FRAME_COST
            self._frames += 1
            if self._frames > MAX_FRAMES:
                return "too large"
            if not flags & MORE:
                self._message = self._frames = 0
        if total > self.max_message:
            return "too large"
        self._body = size
        head.clear()
        return None
