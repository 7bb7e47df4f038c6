"""The job-notebook channel: signed metrics and control over ZeroMQ on 127.0.0.1."""

import json
import os
import socket
import stat
import threading
import time

import psutil
import pytest
import zmq

from lmwidget.remote.transport import channel
from lmwidget.remote.transport import frameguard
from lmwidget.remote.transport.channel import (MAX_MESSAGE, PUBLISH, REPLY, REQUEST, ClientEndpoint, JobEndpoint, Signer, new_key,
                              read_connection_file, write_connection_file)
from tests.conftest import wait_for

KINDS = ("pause", "stop", "lr")


@pytest.fixture
def job():
    key = new_key()
    endpoint = JobEndpoint(key, KINDS)
    yield endpoint, key
    endpoint.close()


def client_for(job_endpoint, key):
    return ClientEndpoint(job_endpoint.connection_info(key))


def answer_once(job_endpoint, timeout=5.0):
    """The job's side of one exchange: take requests, reply to each; return them."""
    got = job_endpoint.requests(timeout)
    for peer, message in got:
        job_endpoint.reply(peer, message, {"ok": True, "kind": message["kind"]})
    return [m for _, m in got]


def test_the_connection_file_is_its_owners_only_and_read_back(tmp_path, job):
    endpoint, key = job
    path = write_connection_file(tmp_path / "run" / "connection.json", endpoint.connection_info(key))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    info = read_connection_file(path)
    assert info["ip"] == "127.0.0.1" and info["key"] == key and info["signature_scheme"] == "hmac-sha256-purpose"
    assert [p.name for p in path.parent.iterdir()] == ["connection.json"]  # no temporary left
    (tmp_path / "bad.json").write_text(json.dumps({**info, "signature_scheme": "none"}))
    with pytest.raises(ValueError, match="asks for signature scheme 'none'; supported: 'hmac-sha256-purpose'"):
        read_connection_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="cannot read connection file"):
        read_connection_file(tmp_path / "missing.json")
    (tmp_path / "curve.json").write_text(json.dumps({**info, "curve": {"serverkey": "short"}}))
    with pytest.raises(ValueError, match=r"has a malformed curve entry \{'serverkey': 'short'\}: expected "
                                         r"serverkey, publickey, secretkey, 40 characters of Z85 each"):
        read_connection_file(tmp_path / "curve.json")


GOOD = {"transport": "tcp", "ip": "127.0.0.1", "metrics_port": 5001, "control_port": 5002, "key": "ab" * 32,
        "signature_scheme": "hmac-sha256-purpose", "run_dir": "/tmp/run", "pid": 7}
MALFORMED_CONNECTION = {
    "a string": '"connection"', "a number": "42", "a list": "[1]", "null": "null", "empty": "",
    "nested 30000 deep": "[" * 30_000 + "]" * 30_000, "nested objects": '{"a":' * 10_000 + "1" + "}" * 10_000,
    "over 64 KiB": json.dumps({**GOOD, "pad": "x" * 70_000}), "not UTF-8": b'{"ip": "\xff"}',
    "an integer of 5000 digits": '{"pid": ' + "9" * 5000 + "}", "cut short": '{"ip": "127',
    "no key": {k: v for k, v in GOOD.items() if k != "key"}, "no ports": {"ip": "x", "key": "k", "signature_scheme": "s"},
    "port a string": {**GOOD, "control_port": "5002"}, "port 0": {**GOOD, "metrics_port": 0},
    "port 70000": {**GOOD, "control_port": 70_000}, "port true": {**GOOD, "control_port": True},
    "port a float": {**GOOD, "control_port": 5002.0}, "ip a list": {**GOOD, "ip": ["127.0.0.1"]},
    "ip empty": {**GOOD, "ip": ""}, "key a number": {**GOOD, "key": 12}, "key empty": {**GOOD, "key": ""},
    "scheme null": {**GOOD, "signature_scheme": None}, "run_dir a number": {**GOOD, "run_dir": 3},
    "pid a string": {**GOOD, "pid": "7"}, "ended a string": {**GOOD, "ended": "yes"},
    "curve a list": {**GOOD, "curve": [1]},
}


@pytest.mark.parametrize("variant", MALFORMED_CONNECTION, ids=list(MALFORMED_CONNECTION))
def test_a_malformed_connection_file_is_refused_naming_it_and_left_as_it_was(tmp_path, variant):
    content = MALFORMED_CONNECTION[variant]
    path = tmp_path / "connection.json"
    path.write_bytes(content if isinstance(content, bytes) else
                     (content if isinstance(content, str) else json.dumps(content)).encode())
    before = path.read_bytes()
    with pytest.raises(ValueError) as info:
        read_connection_file(path)
    assert f"connection file {path}" in str(info.value) and len(str(info.value)) < 600, str(info.value)
    assert path.read_bytes() == before


def test_a_connection_file_over_64_kib_is_refused_unread(tmp_path):
    path = tmp_path / "connection.json"
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # sparse: a gibibyte that is never read
    with pytest.raises(ValueError, match=r"has 1,073,741,824 bytes, more than the 64 KiB such a file can need: it "
                                         r"was not read; expected the JSON object a job writes"):
        read_connection_file(path)
    os.mkfifo(tmp_path / "fifo")  # a named pipe: refused without waiting for a writer
    with pytest.raises(ValueError, match="is not a regular file"):
        read_connection_file(tmp_path / "fifo")
    path.write_text(json.dumps(GOOD))
    assert read_connection_file(path) == GOOD


def listening(port):
    """The addresses this process listens on at `port`."""
    return {c.laddr.ip for c in psutil.Process().net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_it_binds_127_0_0_1_unless_asked_and_its_zeromq_sockets_only_this_user_can_reach(job):
    endpoint, _ = job
    assert listening(endpoint.metrics_port) == listening(endpoint.control_port) == {"127.0.0.1"}
    for sock in (endpoint._pub, endpoint._router):  # behind the guard: Unix sockets in a 0700 directory
        path = sock.getsockopt(zmq.LAST_ENDPOINT).decode().removeprefix("ipc://")
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    other = JobEndpoint(new_key(), KINDS, ip="0.0.0.0")
    path = other._router.getsockopt(zmq.LAST_ENDPOINT).decode().removeprefix("ipc://")
    try:
        assert listening(other.control_port) == {"0.0.0.0"} and os.path.exists(path)
    finally:
        other.close()
    assert not os.path.exists(os.path.dirname(path)) and listening(other.control_port) == set()


def test_a_signed_request_is_answered_and_metrics_flow(job):
    endpoint, key = job
    client = client_for(endpoint, key)
    try:
        server = threading.Thread(target=answer_once, args=(endpoint,))
        server.start()
        reply = client.request("pause", None)
        server.join(5)
        assert reply["kind"] == "reply" and reply["body"] == {"ok": True, "kind": "pause"}
        got = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:  # a SUB joins a moment after connecting
            endpoint.publish("metrics", {"step": 1, "loss": 4.2})
            got = client.metrics(0.1)
        assert got and got[0]["body"] == {"step": 1, "loss": 4.2}
        assert dict(endpoint.rejected) == {} and client.rejected == 0
    finally:
        client.close()


def test_what_the_job_publishes_as_it_closes_still_reaches_a_subscriber():
    key = new_key()
    endpoint = JobEndpoint(key, KINDS)
    client = ClientEndpoint(endpoint.connection_info(key))
    try:
        got = []
        while not got:  # a SUB joins a moment after connecting
            endpoint.publish("metrics", {"step": -1})
            got = client.metrics(0.05)
        for step in range(200):
            endpoint.publish("metrics", {"step": step, "text": "x" * 1000})
        endpoint.close()  # at once: through ZeroMQ's linger and the guard
        while got[-1]["body"]["step"] != 199 and (more := client.metrics(2.0)):
            got += more
        assert [m["body"]["step"] for m in got if m["body"]["step"] >= 0] == list(range(200))
    finally:
        client.close()


def raw_dealer(endpoint):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{endpoint.control_port}")
    return sock


def test_unsigned_wrongly_signed_tampered_stale_and_replayed_requests_are_dropped_and_counted(job):
    endpoint, key = job
    sock = raw_dealer(endpoint)
    good, wrong = Signer(key), Signer(new_key())
    try:
        _, pause = channel._message("pause", None)
        sock.send_multipart([pause])                                  # unsigned
        sock.send_multipart([wrong.sign(REQUEST, pause), pause])      # another key
        tampered = pause.replace(b'"pause"', b'"stop"')
        sock.send_multipart([good.sign(REQUEST, pause), tampered])    # edited after signing
        old = json.dumps({"id": "x1", "time": time.time() - 3600, "kind": "stop", "body": None}).encode()
        sock.send_multipart([good.sign(REQUEST, old), old])           # signed, an hour old
        sock.send_multipart([good.sign(REQUEST, pause), pause])       # the one good message
        sock.send_multipart([good.sign(REQUEST, pause), pause])       # ... replayed
        got = []
        deadline = time.monotonic() + 5
        while sum(endpoint.rejected.values()) + len(got) < 6 and time.monotonic() < deadline:
            got += [m for _, m in endpoint.requests(0.2)]
        assert [m["kind"] for m in got] == ["pause"]
        assert dict(endpoint.rejected) == {"unsigned or malformed": 1, "bad signature": 2,
                                           "stale": 1, "replayed": 1}
    finally:
        sock.close()


def test_a_client_with_the_wrong_key_gets_no_answer_and_changes_nothing(job):
    endpoint, key = job
    intruder = ClientEndpoint({**endpoint.connection_info(key), "key": new_key()})
    try:
        with pytest.raises(TimeoutError, match="no signed reply to 'stop'"):
            intruder.request("stop", None, timeout=0.5)
        assert endpoint.requests(0.5) == []
        assert endpoint.rejected["bad signature"] == 1
        endpoint.publish("metrics", {"step": 2})
        time.sleep(0.2)
        assert intruder.metrics(0.5) == []  # the job's metrics fail the intruder's key
        assert intruder.rejected >= 1
    finally:
        intruder.close()


def test_an_empty_key_is_refused():
    with pytest.raises(ValueError, match="an empty key would sign nothing"):
        Signer("")


def signed(key, **fields) -> list[bytes]:
    """A request's frames, signed as the notebook signs them; `fields` replace its id, kind..."""
    payload = json.dumps({"id": os.urandom(16).hex(), "time": time.time(), "kind": "pause", "body": None,
                          **fields}).encode()
    return [Signer(key).sign(REQUEST, payload), payload]


def take(endpoint, n):
    """What the endpoint takes and refuses of the next `n` messages (bound by work, not time)."""
    got = []
    deadline = time.monotonic() + 30
    while sum(endpoint.rejected.values()) + len(got) < n and time.monotonic() < deadline:
        got += endpoint.requests(0.2)
    return got


def stop_is_answered(endpoint, sock, key, n):
    """Send a signed stop from `sock`: the job takes it (`n`: what it has refused in all, and
    this stop), and its answer reaches `sock`."""
    sock.send_multipart(signed(key, kind="stop"))
    ((peer, request),) = take(endpoint, n)
    assert request["kind"] == "stop"
    endpoint.reply(peer, request, {"ok": True})
    assert sock.poll(5000) and json.loads(sock.recv_multipart()[1])["re"] == request["id"]


def test_a_published_record_or_a_reply_sent_back_to_the_job_is_not_a_request(job):
    endpoint, key = job
    listener = zmq.Context.instance().socket(zmq.SUB)  # anyone on this machine, without the key
    listener.setsockopt(zmq.SUBSCRIBE, b"")
    listener.setsockopt(zmq.LINGER, 0)
    listener.connect(f"tcp://127.0.0.1:{endpoint.metrics_port}")
    sock = raw_dealer(endpoint)
    try:
        while not listener.poll(50):  # a SUB joins a moment after connecting
            endpoint.publish("record", {"seq": 0, "type": "status", "body": {}})
        published = listener.recv_multipart()
        sock.send_multipart(signed(key))  # the notebook's request, and the job's signed reply
        ((peer, request),) = take(endpoint, 1)
        endpoint.reply(peer, request, {"ok": True})
        assert sock.poll(5000)
        reply = sock.recv_multipart()
        assert Signer(key).verify(REPLY, *reply) and Signer(key).verify(PUBLISH, *published)
        for _ in range(3):
            sock.send_multipart(published)
            sock.send_multipart(reply)
        assert take(endpoint, 6) == [] and dict(endpoint.rejected) == {"bad signature": 6}
        sock.send_multipart(signed(key))  # answered after the six: none of them was answered
        ((peer, request),) = take(endpoint, 7)
        endpoint.reply(peer, request, {"ok": True, "last": True})
        assert sock.poll(5000) and json.loads(sock.recv_multipart()[1])["body"] == {"ok": True, "last": True}
    finally:
        listener.close()
        sock.close()


def test_unknown_kinds_ids_that_are_not_strings_and_oversized_messages_are_dropped_unanswered_and_counted(job):
    endpoint, key = job
    sock = raw_dealer(endpoint)
    try:
        for frames in (signed(key, kind="reply"), signed(key, kind="shutdown"),  # kinds it does not take
                       signed(key, id=12345), signed(key, id=["a"]), signed(key, id="x" * 65), signed(key, kind=7),
                       signed(key, body="x" * MAX_MESSAGE),                     # over 1 MiB, signed
                       [*signed(key), b"x" * MAX_MESSAGE]):                     # ... in an extra frame
            sock.send_multipart(frames)
        sock.send_multipart(signed(key, kind="stop"))
        got = take(endpoint, 9)
        assert [m["kind"] for _, m in got] == ["stop"]
        assert dict(endpoint.rejected) == {"unknown kind": 2, "unsigned or malformed": 4, "too large": 2}
        endpoint.reply(*got[0], {"ok": True})
        assert sock.poll(5000) and json.loads(sock.recv_multipart()[1])["re"] == got[0][1]["id"]
        assert not sock.poll(100)  # the one answer
    finally:
        sock.close()


@pytest.mark.parametrize("ip", ["127.0.0.1", "0.0.0.0"])  # plain, and encrypted with CURVE
def test_a_frame_zeromq_would_drop_unseen_is_counted_on_either_port_and_the_client_comes_back(ip):
    key = new_key()
    endpoint = JobEndpoint(key, KINDS, ip=ip)
    info = {**endpoint.connection_info(key), "ip": "127.0.0.1"}
    ctx = zmq.Context.instance()
    sock, sub = ctx.socket(zmq.DEALER), ctx.socket(zmq.SUB)
    for s, port in ((sock, info["control_port"]), (sub, info["metrics_port"])):
        s.setsockopt(zmq.LINGER, 0)
        if ip != "127.0.0.1":
            channel.secure_client(s, info["curve"], ip)
        s.connect(f"tcp://127.0.0.1:{port}")
    try:
        sock.send_multipart(signed(key, body="x" * (channel.MAX_FRAME + 1)))  # over 4 MiB in one frame
        sub.setsockopt(zmq.SUBSCRIBE, b"x" * channel.MAX_SUBSCRIPTION)  # a subscription over 4 KiB
        wait_for(lambda: endpoint.rejected["too large"] == 2, timeout=20)
        stop_is_answered(endpoint, sock, key, 3)  # the DEALER connects again
        assert dict(endpoint.rejected) == {"too large": 2}
    finally:
        sock.close()
        sub.close()
        endpoint.close()


def test_a_message_of_many_frames_each_under_the_limit_is_cut_as_a_whole_before_zeromq_holds_it(job):
    endpoint, key = job
    sock = raw_dealer(endpoint)
    try:
        sock.send_multipart([*signed(key), *[b"x" * channel.MAX_MESSAGE] * 40])  # 40 MiB in 1 MiB frames
        wait_for(lambda: endpoint.rejected["too large"] == 1, timeout=20)  # cut: the job read none of it
        stop_is_answered(endpoint, sock, key, 2)
        sock.send_multipart([*signed(key), *[b""] * 100_000])  # empty frames: ZeroMQ holds each all the same
        wait_for(lambda: endpoint.rejected["too large"] == 2, timeout=20)
        stop_is_answered(endpoint, sock, key, 3)
        assert dict(endpoint.rejected) == {"too large": 2}
    finally:
        sock.close()


def test_connections_held_open_on_the_metrics_port_leave_the_control_port_free(monkeypatch):
    monkeypatch.setattr(frameguard, "MAX_LINKS", 2)
    key = new_key()
    endpoint = JobEndpoint(key, KINDS)
    held = [socket.create_connection(("127.0.0.1", endpoint.metrics_port)) for _ in range(3)]
    client = ClientEndpoint(endpoint.connection_info(key), subscribe=False)
    try:
        server = threading.Thread(target=answer_once, args=(endpoint,))
        server.start()
        assert client.request("pause", None)["body"] == {"ok": True, "kind": "pause"}
        server.join(5)
        held[2].settimeout(10)
        assert held[2].recv(1) == b"" and dict(endpoint.rejected) == {"too many connections": 1}
    finally:
        for sock in held:
            sock.close()
        client.close()
        endpoint.close()
        endpoint.close()  # again: nothing more to do


def test_without_unix_sockets_zeromq_listens_itself_and_the_channel_still_works(monkeypatch):
    monkeypatch.setattr(channel, "GUARDED", False)  # as on Windows
    key = new_key()
    endpoint = JobEndpoint(key, KINDS)
    client = client_for(endpoint, key)
    try:
        assert endpoint._router.getsockopt(zmq.LAST_ENDPOINT).decode() == f"tcp://127.0.0.1:{endpoint.control_port}"
        server = threading.Thread(target=answer_once, args=(endpoint,))
        server.start()
        assert client.request("pause", None)["body"] == {"ok": True, "kind": "pause"}
        server.join(5)
    finally:
        client.close()
        endpoint.close()


def test_a_request_is_refused_again_however_many_others_came_since(job):
    endpoint, key = job
    sock = raw_dealer(endpoint)
    try:
        first = signed(key)
        sock.send_multipart(first)
        for _ in range(5000):  # more than any fixed count of ids remembered before
            sock.send_multipart(signed(key, kind="lr"))
        sock.send_multipart(first)  # within its 60 s: refused
        got = take(endpoint, 5002)
        assert len(got) == 5001 and dict(endpoint.rejected) == {"replayed": 1}
    finally:
        sock.close()


def test_bound_beyond_this_machine_the_channel_is_encrypted_and_only_the_connection_files_keys_connect():
    key = new_key()
    endpoint = JobEndpoint(key, KINDS, ip="0.0.0.0")
    info = {**endpoint.connection_info(key), "ip": "127.0.0.1"}  # bound everywhere, reached here
    assert sorted(info["curve"]) == ["publickey", "secretkey", "serverkey"]
    ctx = zmq.Context.instance()
    plain_sub, plain_dealer = ctx.socket(zmq.SUB), ctx.socket(zmq.DEALER)  # no CURVE keys
    plain_sub.setsockopt(zmq.SUBSCRIBE, b"")
    for sock, port in ((plain_sub, endpoint.metrics_port), (plain_dealer, endpoint.control_port)):
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
    plain_dealer.send_multipart(signed(key, kind="stop"))  # even with the HMAC key
    public, secret = zmq.curve_keypair()
    impostor = ClientEndpoint({**info, "curve": {**info["curve"], "publickey": public.decode(),
                                                 "secretkey": secret.decode()}}, subscribe=False)
    client = ClientEndpoint(info)
    try:
        server = threading.Thread(target=answer_once, args=(endpoint,))
        server.start()
        assert client.request("pause", None)["body"] == {"ok": True, "kind": "pause"}
        server.join(5)
        got = []
        while len(got) < 3:  # bound by what the client received: the plain subscriber had as long
            endpoint.publish("metrics", {"step": len(got)})
            got += client.metrics(0.05)
        assert not plain_sub.poll(0)
        with pytest.raises(TimeoutError, match=r"'stop' within 0\.5 s"):  # sent or not: no connection
            impostor.request("stop", None, timeout=0.5)
        assert endpoint.requests(0.5) == []  # neither the plain dealer's stop nor the impostor's
        wait_for(lambda: endpoint.rejected["unknown CURVE key"] >= 1, timeout=10)
        assert set(endpoint.rejected) == {"unknown CURVE key"}
    finally:
        for sock in (plain_sub, plain_dealer):
            sock.close()
        impostor.close()
        client.close()
        endpoint.close()


def test_without_curve_in_zeromq_a_job_beyond_this_machine_is_refused_saying_why(monkeypatch, job):
    endpoint, key = job
    info = {**endpoint.connection_info(key), "curve": {"serverkey": "a" * 40, "publickey": "b" * 40,
                                                       "secretkey": "c" * 40}}
    monkeypatch.setattr(zmq, "has", lambda capability: False)
    with pytest.raises(RuntimeError, match=r"a job bound to 0\.0\.0\.0 is encrypted with ZeroMQ's CURVE, but "
                                           r"this pyzmq \(libzmq [\d.]+\) was built without CURVE"):
        JobEndpoint(new_key(), KINDS, ip="0.0.0.0")
    with pytest.raises(RuntimeError, match="built without CURVE"):
        ClientEndpoint(info)
    assert JobEndpoint(new_key(), KINDS).connection_info("k").get("curve") is None  # 127.0.0.1: no need
