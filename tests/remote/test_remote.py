"""attach(): a job's run in a notebook, live or from its record, across detaching and kernel
restarts."""

import json
import time

import pytest
import zmq

import lmwidget
from lmwidget.remote.transport.channel import write_connection_file
from tests.conftest import wait_for
from tests.harness.jobs import TINY, recorded_steps
from tests.harness.pace import scaled
from tests.harness.kernel import Kernel

pytestmark = pytest.mark.slow


def test_an_ended_job_is_shown_from_its_record(tmp_path, start_job):
    job = start_job(tmp_path / "r", "--steps", "80", *TINY, "--eval-interval", "40", "--quiet")
    assert job.wait(60) == 0, job.output()
    t0 = time.monotonic()
    run = lmwidget.attach(job.run_dir, display=False)
    assert time.monotonic() - t0 < scaled(2)  # its connection file says it ended: no waiting for it
    assert (run.state, run.step, run.max_steps, run.connected) == ("finished", 80, 80, False)
    assert list(run.history.step) == list(range(1, 81)) and run.history.val_loss.notna().sum() == 2
    assert list(run.events.kind) == ["eval", "eval"] and len(run.resources) >= 1
    d = run.dashboard
    wait_for(lambda: len(d.charts["loss"].marks["train"].x) > 0, timeout=10)
    wait_for(lambda: d.step_label.value == "80", timeout=10)
    with pytest.raises(ConnectionError, match=r"not connected to the job at tcp://127\.0\.0\.1:\d+ \(it has ended\)"):
        run.request_sample()
    with pytest.raises(RuntimeError, match=r"has ended \(finished at step 80\): it cannot change its learning rate"):
        run.set_lr(1e-3)
    run.pause()  # an ended run is past pausing and stopping: nothing happens
    run.stop()
    assert run.state == "finished" and not run.paused
    with pytest.raises(FileNotFoundError, match="no connection file at"):
        lmwidget.attach(tmp_path / "nowhere", display=False)


def test_a_job_resumed_into_its_run_directory_keeps_the_earlier_record(tmp_path, start_job):
    first = start_job(tmp_path / "r", "--steps", "30", *TINY, "--checkpoint-every", "30", "--quiet")
    assert first.wait(60) == 0, first.output()
    again = start_job(tmp_path / "r", "--resume", str(tmp_path / "r"), "--steps", "50", "--quiet")
    assert again.wait(60) == 0, again.output()
    assert (tmp_path / "r" / "metrics-1.jsonl").exists()  # the first job's, kept
    run = lmwidget.attach(tmp_path / "r", display=False)
    assert run.step == 50 and list(run.history.step) == list(range(1, 51))
    assert "restore" in set(run.events.kind)


def test_a_job_started_paused_waits_for_the_notebook(tmp_path, start_job):
    job = start_job(tmp_path / "r", "--steps", "40", *TINY, "--start-paused", "--quiet").wait_ready()
    try:
        run = lmwidget.attach(job.run_dir, display=False)
        wait_for(lambda: run.state == "paused", timeout=10)
        assert run.step == 0 and run.paused
        text = run.sample()  # from the untrained model, while it waits
        assert isinstance(text, str) and len(text) > 50 and run.samples == [(0, text)]
        run.resume()
        assert run.wait(60) and run.state == "finished" and run.step == 40
        assert job.wait(30) == 0
    finally:
        job.kill()


def test_a_kernel_restart_leaves_the_job_training_and_a_new_kernel_picks_it_up(tmp_path, start_job):
    job = start_job(tmp_path / "r", "--steps", "1000000", *TINY, "--eval-interval", "50", "--quiet").wait_ready()
    kernel = Kernel(tmp_path)
    try:
        _, _, error, displays = kernel.execute(f"import lmwidget\nrun = lmwidget.attach({str(job.run_dir)!r})")
        assert error is None, error
        assert any("application/vnd.jupyter.widget-view+json" in d for d in displays), "no dashboard shown"
        kernel.wait_for("run.step > 20", True, timeout=20)
        kernel.execute("run.set_lr(1e-3)")
        kernel.km.restart_kernel(now=True)  # as the Restart button does
        kernel.kc.wait_for_ready(timeout=60)
        step = json.loads((job.run_dir / "rank-0.jsonl").read_text().splitlines()[-1])["step"]
        wait_for(lambda: len((job.run_dir / "metrics.jsonl").read_text()) > 0, timeout=5)
        assert job.proc.poll() is None  # the job did not notice
        _, _, error, _ = kernel.execute(f"import lmwidget\nrun = lmwidget.attach({str(job.run_dir)!r})")
        assert error is None, error
        assert kernel.value("run.step") > step
        assert kernel.value("(lambda h: list(h.step) == list(range(1, len(h) + 1)))(run.history)")
        assert kernel.value("run.lr") == 1e-3 and kernel.value("'lr' in set(run.events.kind)")
        kernel.execute("run.stop()")
        assert job.wait(30) == 0, job.output()
        kernel.wait_for("run.state", "stopped", timeout=10)
    finally:
        kernel.shutdown()
        job.kill()


def test_a_record_lost_on_the_way_is_fetched_from_the_job(tmp_path, start_job):
    job = start_job(tmp_path / "r", "--steps", "1000000", *TINY, "--quiet").wait_ready()
    run = lmwidget.attach(job.run_dir, display=False)
    try:
        apply, lost = run._apply, []

        def lossy(record):  # the stream drops two records, as a full socket buffer would
            if len(lost) < 2 and record["type"] == "rows":
                lost.append(record["seq"])
                return
            apply(record)

        run._apply = lossy
        wait_for(lambda: len(lost) == 2 and run.step > 50, timeout=20)
        run.stop()
        assert job.wait(30) == 0
        wait_for(lambda: run.state == "stopped", timeout=10)
        h = run.history
        assert list(h.step) == list(range(1, run.step + 1))  # no gap where the records were lost
    finally:
        run.detach()
        job.kill()


def test_away_from_the_run_directory_the_record_comes_from_the_job(tmp_path, start_job):
    job = start_job(tmp_path / "r", "--steps", "1000000", *TINY, "--eval-interval", "50", "--quiet").wait_ready()
    wait_for(lambda: recorded_steps(job.run_dir / "metrics.jsonl") > 100, timeout=30)
    elsewhere = tmp_path / "laptop"  # as if copied to another machine: no run directory here
    elsewhere.mkdir()
    info = json.loads(job.connection_file.read_text())
    (elsewhere / "connection.json").write_text(json.dumps({**info, "run_dir": str(tmp_path / "not-here")}))
    run = lmwidget.attach(elsewhere / "connection.json", display=False)
    try:
        assert not (tmp_path / "not-here").exists()
        h = run.history
        assert len(h) > 100 and list(h.step) == list(range(1, len(h) + 1))
        assert "eval" in set(run.events.kind)
        step = run.step
        wait_for(lambda: run.step > step + 20, timeout=10)
        run.stop()
        assert job.wait(30) == 0
    finally:
        run.detach()


def test_waiting_on_a_job_that_was_killed_raises_instead_of_hanging(tmp_path, start_job):
    job = start_job(tmp_path / "r", "--steps", "1000000", *TINY, "--quiet").wait_ready()
    run = lmwidget.attach(job.run_dir, display=False)
    try:
        wait_for(lambda: run.step > 10, timeout=20)
        assert run.alive
        job.kill()  # SIGKILL: no last word from the job
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match=r"is not heard from \(silent for over 10 s: killed\?\); "
                                                  r"its run was running at step \d+"):
            run.wait()
        assert 9 < time.monotonic() - t0 < 10 + scaled(5) and not run.alive
    finally:
        run.detach()


def test_a_job_bound_beyond_this_machine_is_encrypted_and_attached_with_its_connection_file(tmp_path, start_job):
    job = start_job(tmp_path / "r", "--steps", "40", *TINY, "--ip", "0.0.0.0", "--start-paused",
                    "--quiet").wait_ready()
    info = json.loads(job.connection_file.read_text())
    assert info["ip"] != "0.0.0.0" and sorted(info["curve"]) == ["publickey", "secretkey", "serverkey"]
    here = write_connection_file(tmp_path / "here.json", {**info, "ip": "127.0.0.1"})  # bound everywhere
    listener = zmq.Context.instance().socket(zmq.SUB)  # anyone on the network, without the file
    listener.setsockopt(zmq.SUBSCRIBE, b"")
    listener.setsockopt(zmq.LINGER, 0)
    listener.connect(f"tcp://127.0.0.1:{info['metrics_port']}")
    run = lmwidget.attach(here, display=False)
    try:
        wait_for(lambda: run.state == "paused", timeout=10)
        run.resume()
        assert run.wait(60) and run.step == 40 and list(run.history.step) == list(range(1, 41))
        assert not listener.poll(0)  # the whole run went by: nothing for it
        assert job.wait(30) == 0
    finally:
        listener.close()
        run.detach()
