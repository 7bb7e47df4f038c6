"""The job's side of the channel, attacked: a `python -m lmwidget train` job on 127.0.0.1."""

import collections
import json

import pytest
import zmq

from lmwidget.remote.transport import channel
from lmwidget.remote.transport.channel import REQUEST, ClientEndpoint, Signer
from tests.conftest import wait_for
from tests.harness.jobs import TINY
from tests.harness.pace import scaled

pytestmark = pytest.mark.slow
ROUND_TRIPS = 4100  # more than the 4,096 ids a job once remembered


def raw(kind, port):
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def test_reflected_records_and_replies_are_never_answered_and_a_captured_request_stays_refused(tmp_path, start_job):
    job = start_job(tmp_path / "r", "--steps", "100", *TINY, "--start-paused", "--quiet").wait_ready()
    info = json.loads(job.connection_file.read_text())
    notebook = ClientEndpoint(info, subscribe=False)
    listener = raw(zmq.SUB, info["metrics_port"])      # the attacker: no key, reads the metrics
    attacker = raw(zmq.DEALER, info["control_port"])   # ... and reaches the control port
    wire = raw(zmq.DEALER, info["control_port"])       # the notebook's request, captured on the way
    try:
        _, payload = channel._message("lr", {"value": 1e-3, "note": ""})
        captured = [Signer(info["key"]).sign(REQUEST, payload), payload]
        wire.send_multipart(captured)
        assert wire.poll(int(scaled(30) * 1000))
        reply = wire.recv_multipart()
        assert notebook.request("lr", {"value": 2e-3})["body"]["ok"]  # the LR moved on since
        published = [listener.recv_multipart() for _ in range(3)]

        # the attack: every published message and reply sent back to the control port, every
        # answer fed back in as the next message
        fresh, pool, answers = collections.deque(published + [reply]), published + [reply], 0
        for i in range(ROUND_TRIPS):
            attacker.send_multipart(fresh.popleft() if fresh else pool[i % len(pool)])
            while attacker.poll(0):
                fresh.append(attacker.recv_multipart())
                answers += 1

        def rejected():
            return notebook.request("status", timeout=10)["body"]["rejected"]

        wait_for(lambda: sum(rejected().values()) >= ROUND_TRIPS, timeout=60, interval=0.1)
        assert rejected() == {"bad signature": ROUND_TRIPS} and answers == 0 and not attacker.poll(0)
        attacker.send_multipart(captured)  # the captured request again, within its 60 s
        wait_for(lambda: rejected().get("replayed") == 1, timeout=10, interval=0.1)
        assert notebook.request("status")["body"]["lr"] == 2e-3
        wait_for(lambda: len(job.rank_events(0, {"lr"})) >= 2, timeout=60)  # the rank's log, when flushed
        assert [value for _, _, value in job.rank_events(0, {"lr"})] == [1e-3, 2e-3]
        assert not attacker.poll(0)
        notebook.request("stop")
        assert job.wait(30) == 0, job.output()
    finally:
        for sock in (listener, attacker, wire):
            sock.close()
        notebook.close()
