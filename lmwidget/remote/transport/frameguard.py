"""A guard on a ZeroMQ socket's TCP port: it cuts, and counts, a peer whose message is too large."""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import threading
import time

from .zmtp import FrameReader

CHUNK = 1 << 16  # bytes read at once from either side
MAX_LINKS = 256  # connections at once to one port (fewer where few file descriptors are allowed)
GREETING_WITHIN = 10.0  # s: a connection that has not sent its whole greeting by then is cut, and counted
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class _Route:
    """One port: the Unix socket behind it, its limit, and its connections now."""

    def __init__(self, listener: socket.socket, path: str, max_message: int):
        self.listener, self.path, self.max_message = listener, path, max_message
        self.links = 0


class _Link:
    """A peer's connection and the guard's own to the socket behind it, with what each side
    sent that the other has not taken yet (a side is not read while that is waiting)."""

    def __init__(self, route: _Route, peer: socket.socket, inner: socket.socket):
        self.route, self.peer, self.inner = route, peer, inner
        self.reader = FrameReader(route.max_message)
        self.greet_by = time.monotonic() + GREETING_WITHIN
        self.pending = {peer: b"", inner: b""}  # socket -> bytes still to write to it

    def other(self, sock: socket.socket) -> socket.socket:
        return self.inner if sock is self.peer else self.peer


class FrameGuard:
    """Listens on TCP ports of `ip` (one thread for all) and passes each connection's bytes
    both ways to a ZeroMQ socket bound to a Unix socket path that only this user can reach.
    A connection whose peer sends a message over that port's limit, or whose greeting is not
    ZMTP 3's (or not whole within GREETING_WITHIN s), is cut before the rest goes on, and
    `on_cut(why)` is called (on the guard's thread); so is a connection beyond MAX_LINKS to
    one port. CURVE's handshake and messages pass through unchanged: the guard reads only the
    frames' sizes (under CURVE, each frame's, encrypted: a little larger)."""

    def __init__(self, ip: str, routes, on_cut):
        """`routes`: (port or 0, the Unix socket's path, the largest message taken) for each port."""
        self._on_cut = on_cut
        self._selector = selectors.DefaultSelector()
        self._links: dict[socket.socket, _Link] = {}
        self._events: dict[socket.socket, int] = {}
        self._wake, self._waker = socket.socketpair()
        self._selector.register(self._wake, READ, None)
        self._closed = False
        self.ports = []
        try:
            for port, path, max_message in routes:
                listener = _listen(ip, port)
                listener.setblocking(False)
                self._selector.register(listener, READ, _Route(listener, path, max_message))
                self.ports.append(listener.getsockname()[1])
        except BaseException:
            self._close_all()
            raise
        self._thread = threading.Thread(target=self._serve, name="lmwidget-frame-guard", daemon=True)
        self._thread.start()

    def close(self, drain: float = 1.0) -> None:
        """Stop listening; pass on what the sockets behind still send until they have closed
        (call after closing them: a PUB's last messages go out as it lingers), for at most
        `drain` s; then let every connection go. Once is enough: again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._drain = drain
        self._waker.send(b"x")
        self._thread.join(drain + 5)
        self._close_all()

    def _stop_listening(self) -> None:
        for key in list(self._selector.get_map().values()):
            if key.data is not None or key.fileobj is self._wake:
                self._selector.unregister(key.fileobj)
                key.fileobj.close()

    def _close_all(self) -> None:
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        for link in list(self._links.values()):
            link.peer.close()
            link.inner.close()
        self._links.clear()
        self._selector.close()
        self._waker.close()

    def _serve(self) -> None:
        deadline = None  # once closing: when to stop passing on what is left
        while deadline is None or (self._links and time.monotonic() < deadline):
            try:
                greet_by = self._cut_silent()
            except Exception:  # never the guard's end (the job's channel with it)
                greet_by = time.monotonic() + 1.0
            timeout = greet_by if deadline is None else deadline
            timeout = None if timeout is None else max(timeout - time.monotonic(), 0)
            for key, mask in self._selector.select(timeout):
                if key.fileobj is self._wake:
                    deadline = time.monotonic() + self._drain
                    self._stop_listening()
                    break  # the rest of these events come again, the listeners' gone
                try:
                    self._handle(key, mask)
                except Exception:  # never the guard's end (the job's channel with it): that link's
                    link = self._links.get(key.fileobj)
                    if link is not None:
                        with contextlib.suppress(Exception):
                            self._cut(link)

    def _handle(self, key, mask: int) -> None:
        if key.data is not None:
            self._accept(key.data)
            return
        link = self._links.get(key.fileobj)
        if link is not None and mask & WRITE:
            self._write(link, key.fileobj)
        link = self._links.get(key.fileobj)  # the write may have cut it
        if link is not None and mask & READ:
            self._read(link, key.fileobj)

    def _cut_silent(self) -> float | None:
        """Cut the connections whose greeting is not whole in time; when the next one is due."""
        now, due = time.monotonic(), None
        for link in {link for link in self._links.values() if not link.reader.greeted}:
            if link.greet_by <= now:
                self._on_cut("unsigned or malformed")
                self._cut(link)
            else:
                due = link.greet_by if due is None else min(due, link.greet_by)
        return due

    def _accept(self, route: _Route) -> None:
        try:
            peer, _ = route.listener.accept()
        except BlockingIOError:
            return
        except OSError as e:  # out of file descriptors: wait rather than spin on the listener
            if e.errno in (errno.EMFILE, errno.ENFILE):
                time.sleep(0.02)
            return
        if route.links >= links_allowed():
            self._on_cut("too many connections")  # counted before the peer can see it
            peer.close()
            return
        try:
            inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:  # out of file descriptors
            peer.close()
            return
        try:
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as ZeroMQ's own sockets
            inner.settimeout(0.2)
            inner.connect(route.path)
            for sock in (peer, inner):
                sock.setblocking(False)
        except OSError:  # the socket behind is closing, or its backlog full
            inner.close()
            peer.close()
            return
        link = _Link(route, peer, inner)
        route.links += 1
        for sock in (peer, inner):
            self._links[sock] = link
        try:
            self._watch(peer, READ)
            self._watch(inner, READ)
        except (OSError, ValueError, KeyError):
            self._cut(link)

    def _read(self, link: _Link, sock: socket.socket) -> None:
        try:
            data = sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # one side left: so does the other
            self._cut(link)
            return
        if sock is link.peer:
            why = link.reader.feed(data)
            if why is not None:
                self._on_cut(why)
                self._cut(link)
                return
        other = link.other(sock)
        link.pending[other] = data
        self._write(link, other)

    def _write(self, link: _Link, sock: socket.socket) -> None:
        data = link.pending[sock]
        if data:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._cut(link)
                return
            link.pending[sock] = data = data[sent:]
        # write while bytes wait for this side; read the other side only once they are gone
        self._watch(sock, READ * (not link.pending[link.other(sock)]) | WRITE * bool(data))
        other = link.other(sock)
        self._watch(other, READ * (not data) | WRITE * bool(link.pending[other]))

    def _watch(self, sock: socket.socket, events: int) -> None:
        now = self._events.get(sock, 0)
        if events == now:
            return
        if not events:
            self._selector.unregister(sock)
        elif not now:
            self._selector.register(sock, events, None)
        else:
            self._selector.modify(sock, events, None)
        self._events[sock] = events

    def _cut(self, link: _Link) -> None:
        if self._links.get(link.peer) is not link:
            return  # already
        link.route.links -= 1
        for sock in (link.peer, link.inner):
            if self._events.pop(sock, 0):
                try:
                    self._selector.unregister(sock)
                except (KeyError, ValueError, OSError):
                    pass
            self._links.pop(sock, None)
            sock.close()


def links_allowed() -> int:
    """Connections at once to one port: MAX_LINKS, or fewer where this process may open few
    files (a connection takes 3: the client's, the guard's to ZeroMQ, ZeroMQ's own; both ports'
    take at most 3/8 of the limit, and the job keeps the rest)."""
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no such limit here
        return MAX_LINKS
    return MAX_LINKS if soft == resource.RLIM_INFINITY else min(MAX_LINKS, max(4, soft // 16))


def _listen(ip: str, port: int) -> socket.socket:
    host = "" if ip == "*" else ip  # ZeroMQ's name for every interface
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in ip else socket.AF_INET,
                                    backlog=128)
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {ip} port {port}: {e.strerror or e}; give an address "
                               f"of this machine (127.0.0.1, 0.0.0.0 or an interface's) and a free port "
                               f"(or 0: any)") from None
