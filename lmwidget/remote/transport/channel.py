"""Signed ZeroMQ messages between a training job and a notebook: metrics out, control in."""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import uuid

import zmq

from .connfile import SCHEME, read_connection_file, write_connection_file  # noqa: F401 (their first home)
from .encryption import CurveServer, loopback, secure_client
from .frameguard import FrameGuard
from .replay_protection import ReplayWindow

# what a signature is for: each purpose signs with a key of its own, derived from the
# connection file's, so that a published record or a reply sent back to the job can never
# pass for a request
REQUEST, REPLY, PUBLISH = "request", "reply", "publish"
MAX_AGE = 60.0  # s: a control message older than this (or from the future) is refused
MAX_SEEN = 100_000  # request ids remembered at once (all of the last MAX_AGE s; about 25 MB)
MAX_ID = 64  # characters in a request's id (a fresh one has 32)
MAX_MESSAGE = 1 << 20  # bytes: a larger control message is refused, and counted
# bytes: a connection that sends a larger message (or frame) is cut, and counted, before ZeroMQ
# holds it
MAX_FRAME = 4 * MAX_MESSAGE
MAX_SUBSCRIPTION = 4096  # bytes: the same for a message sent to the metrics port (a subscription)
# the ports are a FrameGuard's, in front of Unix sockets; without those (Windows) ZeroMQ listens
# itself, and drops a frame over its limit as if the client had left, uncounted
GUARDED = hasattr(socket, "AF_UNIX") and zmq.has("ipc")
PER_CALL = 256  # messages read per requests() call: a flood cannot keep the job from its work


def new_key() -> str:
    return secrets.token_hex(32)


class Signer:
    """HMAC-SHA256 over a message's payload, with a key of its own for each purpose (request,
    reply, publish); compared in constant time."""

    def __init__(self, key: str):
        if not key:
            raise ValueError("an empty key would sign nothing: pass the connection file's key")
        self._keys = {purpose: hmac.new(key.encode(), f"lmwidget {purpose}".encode(), hashlib.sha256).digest()
                      for purpose in (REQUEST, REPLY, PUBLISH)}

    def sign(self, purpose: str, payload: bytes) -> bytes:
        return hmac.new(self._keys[purpose], payload, hashlib.sha256).hexdigest().encode()

    def verify(self, purpose: str, signature: bytes, payload: bytes) -> bool:
        return hmac.compare_digest(self.sign(purpose, payload), signature)


def _message(kind: str, body, re: str | None = None) -> tuple[str, bytes]:
    """(id, payload): JSON with a fresh id and a timestamp; `re` names the request answered."""
    ident = uuid.uuid4().hex
    message = {"id": ident, "time": time.time(), "kind": kind, "body": body}
    if re is not None:
        message["re"] = re
    return ident, json.dumps(message, separators=(",", ":")).encode()


class JobEndpoint:
    """The job's side: publishes metrics, takes signed control requests of the `kinds` it
    knows. Listens on 127.0.0.1 unless another address is asked for; on any other address both
    sockets are encrypted with CURVE, their keys in the connection file. Both ports are a
    FrameGuard's: the ZeroMQ sockets behind it are bound to Unix sockets in a directory of the
    user's own, so a frame too large to take is counted before ZeroMQ would drop it unseen."""

    def __init__(self, key: str, kinds, ip: str = "127.0.0.1", metrics_port: int = 0, control_port: int = 0):
        self.signer = Signer(key)
        self.kinds = frozenset(kinds)
        self.ip = ip
        self._rejected = collections.Counter()  # why -> count of what was dropped unread or unanswered
        self._count_lock = threading.Lock()  # counted from the CURVE handler's thread too
        self._window = ReplayWindow(MAX_AGE, MAX_SEEN)
        self._context = zmq.Context()
        self._curve = None if loopback(ip) else CurveServer(
            self._context, ip, lambda: self._reject("unknown CURVE key"))
        self._pub = self._context.socket(zmq.PUB)
        self._router = self._context.socket(zmq.ROUTER)
        # ZeroMQ sockets are not thread-safe: one lock per socket
        self._pub_lock, self._router_lock = threading.Lock(), threading.Lock()
        self._pub.setsockopt(zmq.LINGER, 1000)  # the last records still go out as the job ends
        self._router.setsockopt(zmq.LINGER, 0)
        self._pub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION)  # the guard's limits, should a
        self._router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)     # frame come another way
        self._dir = self._guard = None
        try:
            if self._curve is not None:
                self._curve.secure(self._pub)
                self._curve.secure(self._router)
            if GUARDED:
                self._guard = self._guarded(ip, metrics_port, control_port)
                self.metrics_port, self.control_port = self._guard.ports
            else:
                self.metrics_port = self._bind(self._pub, metrics_port)
                self.control_port = self._bind(self._router, control_port)
        except BaseException:
            self.close()  # no socket, thread or directory left behind (a port in use)
            raise

    def _guarded(self, ip: str, metrics_port: int, control_port: int) -> FrameGuard:
        """Bind the sockets to Unix sockets in a new directory of mode 0700 (only this user
        reaches them; a short path: not under a long TMPDIR), and listen on the ports through
        a FrameGuard."""
        self._dir = tempfile.mkdtemp(prefix="lmwidget-", dir=None if len(tempfile.gettempdir()) < 80 else "/tmp")
        routes = []
        for sock, port, name, limit in ((self._pub, metrics_port, "metrics", MAX_SUBSCRIPTION),
                                        (self._router, control_port, "control", MAX_FRAME)):
            path = os.path.join(self._dir, name)
            sock.bind(f"ipc://{path}")
            routes.append((port, path, limit))
        return FrameGuard(ip, routes, self._reject)

    def _bind(self, sock, port: int) -> int:
        if port:
            sock.bind(f"tcp://{self.ip}:{port}")
            return port
        return sock.bind_to_random_port(f"tcp://{self.ip}")

    @property
    def rejected(self) -> collections.Counter:
        """Why -> how many messages sent to the job (or connections, or CURVE clients) were
        dropped, never acted on."""
        with self._count_lock:
            return collections.Counter(self._rejected)

    def _reject(self, why: str) -> None:
        with self._count_lock:
            self._rejected[why] += 1

    def connection_info(self, key: str) -> dict:
        info = {"transport": "tcp", "ip": self.ip, "metrics_port": self.metrics_port,
                "control_port": self.control_port, "key": key, "signature_scheme": SCHEME}
        if self._curve is not None:
            info["curve"] = self._curve.client_keys()
        return info

    def publish(self, kind: str, body) -> None:
        _, payload = _message(kind, body)
        with self._pub_lock:
            self._pub.send_multipart([self.signer.sign(PUBLISH, payload), payload])

    def requests(self, timeout: float = 0.0) -> list[tuple[bytes, dict]]:
        """Verified control requests that arrived, as (peer, message); waits up to `timeout` s
        for the first. Unsigned, wrongly signed, malformed, too large, stale and replayed
        messages, and requests of a kind not taken, are dropped unanswered and counted in
        `rejected`, never returned."""
        out = []
        with self._router_lock:
            if not self._router.poll(int(timeout * 1000)):
                return out
            for _ in range(PER_CALL):
                if not self._router.poll(0):
                    break
                frames = self._router.recv_multipart()
                why, message = self._check(frames)
                if why is None:
                    out.append((frames[0], message))
                else:
                    self._reject(why)
        return out

    def _check(self, frames: list[bytes]) -> tuple[str | None, dict | None]:
        """(None, the request), or (why it is refused, ...)."""
        if sum(len(f) for f in frames[1:]) > MAX_MESSAGE:
            return "too large", None
        if len(frames) != 3:
            return "unsigned or malformed", None
        _, signature, payload = frames
        if not self.signer.verify(REQUEST, signature, payload):
            return "bad signature", None
        try:
            message = json.loads(payload)
            stamp, ident, kind = message["time"], message["id"], message["kind"]
        except (ValueError, KeyError, TypeError):
            return "unsigned or malformed", None
        if not (isinstance(ident, str) and 0 < len(ident) <= MAX_ID and isinstance(kind, str)
                and isinstance(stamp, (int, float)) and not isinstance(stamp, bool)):
            return "unsigned or malformed", None
        if kind not in self.kinds:
            return "unknown kind", None
        return self._window.check(ident, float(stamp), time.time()), message

    def reply(self, peer: bytes, request: dict, body) -> None:
        """Answer `request` (a message from requests()) with a signed `body`."""
        _, payload = _message("reply", body, re=request["id"])
        with self._router_lock:
            self._router.send_multipart([peer, self.signer.sign(REPLY, payload), payload])

    def close(self) -> None:
        with self._pub_lock, self._router_lock:
            self._pub.close()
            self._router.close()
            if self._curve is not None:
                self._curve.close()
            self._context.term()  # the PUB's last records go out to the guard as it lingers
        if self._guard is not None:
            self._guard.close()  # ... and on from it
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


class ClientEndpoint:
    """The notebook's side: receives the job's metrics, sends it signed control requests.
    Messages the job did not sign with the shared key are dropped and counted."""

    def __init__(self, info: dict, subscribe: bool = True):
        """`subscribe=False`: requests only (no metrics socket)."""
        self.signer = Signer(info["key"])
        self._context = zmq.Context()
        self._sub = None
        if subscribe:
            self._sub = self._context.socket(zmq.SUB)
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            self._sub.setsockopt(zmq.LINGER, 0)
            self._connect(self._sub, info, info["metrics_port"])
        self._dealer = self._context.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.LINGER, 0)
        self._connect(self._dealer, info, info["control_port"])
        self.rejected = 0
        self._lock = threading.Lock()

    def _connect(self, sock, info: dict, port: int) -> None:
        if info.get("curve") is not None:
            secure_client(sock, info["curve"], info["ip"])
        sock.connect(f"tcp://{info['ip']}:{port}")

    def _verified(self, purpose: str, frames: list[bytes]) -> dict | None:
        if len(frames) != 2 or not self.signer.verify(purpose, frames[0], frames[1]):
            self.rejected += 1
            return None
        return json.loads(frames[1])

    def metrics(self, timeout: float = 0.0) -> list[dict]:
        """The signed messages the job published since the last call (waits up to `timeout` s
        for the first)."""
        out = []
        if not self._sub.poll(int(timeout * 1000)):
            return out
        while self._sub.poll(0):
            message = self._verified(PUBLISH, self._sub.recv_multipart())
            if message is not None:
                out.append(message)
        return out

    def request(self, kind: str, body=None, timeout: float = 5.0) -> dict:
        """Send a signed control request and return the job's signed reply."""
        ident, payload = _message(kind, body)
        with self._lock:
            deadline = time.monotonic() + timeout
            self._dealer.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
            try:  # blocks while no connection stands (a CURVE handshake refused)
                self._dealer.send_multipart([self.signer.sign(REQUEST, payload), payload])
            except zmq.Again:
                raise TimeoutError(f"could not send {kind!r} within {timeout} s: no connection to the "
                                   f"job; is it running, and are the connection file's keys its keys?") from None
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self._dealer.poll(int(left * 1000)):
                    raise TimeoutError(f"no signed reply to {kind!r} within {timeout} s: is the "
                                       f"job running, and is the connection file's key its key?")
                reply = self._verified(REPLY, self._dealer.recv_multipart())
                if reply is not None and reply.get("re") == ident:  # not a late answer to another
                    return reply

    def close(self) -> None:
        """Close the sockets (call once no other thread reads metrics)."""
        with self._lock:  # not while a request waits for its reply
            if self._sub is not None:
                self._sub.close()
            self._dealer.close()
            self._context.term()
