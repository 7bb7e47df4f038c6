"""CURVE encryption for a job reached over the network: its keys, and the sockets that use them."""

from __future__ import annotations

import hmac
import ipaddress

import zmq
from zmq.auth.thread import ThreadAuthenticator

KEYS = ("serverkey", "publickey", "secretkey")  # a connection file's "curve": what a client needs


def loopback(ip: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False  # 0.0.0.0's kin, a host or an interface name: reachable from elsewhere


def check_available(ip: str) -> None:
    if not zmq.has("curve"):
        raise RuntimeError(
            f"the channel of a job bound to {ip} is encrypted with ZeroMQ's CURVE, but this pyzmq "
            f"(libzmq {zmq.zmq_version()}) was built without CURVE: install a pyzmq wheel "
            f"(pip install --force-reinstall pyzmq), or bind 127.0.0.1 (the default) and forward "
            f"the ports (ssh -L)")


class CurveServer:
    """The job's side: its sockets encrypt, and a connection completes only for a client that
    knows the job's public key and holds the one client key pair the job made (both in the
    connection file); a ZAP handler thread checks the client's key at each handshake."""

    def __init__(self, context: zmq.Context, ip: str, on_refused):
        """`on_refused()` is called (on the handler's thread) for each client key refused."""
        check_available(ip)
        self.serverkey, self._server_secret = zmq.curve_keypair()
        self._client_public, self._client_secret = zmq.curve_keypair()
        self._on_refused = on_refused
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback("*", self)

    def callback(self, domain: str, key: bytes) -> bool:
        """The ZAP handler's question: may this client key connect?"""
        ok = hmac.compare_digest(key, self._client_public)
        if not ok:
            self._on_refused()
        return ok

    def secure(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server (before it binds)."""
        sock.curve_secretkey = self._server_secret
        sock.curve_publickey = self.serverkey
        sock.curve_server = True

    def client_keys(self) -> dict:
        """What a client needs, as text for the connection file."""
        return {"serverkey": self.serverkey.decode(), "publickey": self._client_public.decode(),
                "secretkey": self._client_secret.decode()}

    def close(self) -> None:
        self._auth.stop()


def secure_client(sock: zmq.Socket, keys: dict, ip: str) -> None:
    """Make `sock` a CURVE client with a connection file's keys (before it connects)."""
    check_available(ip)
    sock.curve_serverkey = keys["serverkey"].encode()
    sock.curve_publickey = keys["publickey"].encode()
    sock.curve_secretkey = keys["secretkey"].encode()
