"""The command-line trainer: its options, its console line, its errors, its exit codes."""

import json
import os
import re
import signal
import stat
import subprocess
import sys

import pytest

from lmwidget.remote import cli
from lmwidget.magics import _parser as lmtrain_parser
from tests.conftest import wait_for
from tests.harness.jobs import TINY, recorded_steps

pytestmark = pytest.mark.slow


def dests(parser):
    return {a.dest for a in parser._actions if a.dest != "help"}


def test_it_takes_the_same_options_as_lmtrain():
    notebook_only = {"concurrent", "ghosts", "callbacks"}  # a kernel's variables and runs
    job_only = {"run_dir", "ip", "metrics_port", "control_port", "start_paused", "progress_interval", "quiet"}
    assert dests(cli.parser()) - job_only == dests(lmtrain_parser()) - notebook_only


def run_cli(*args, cwd, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "lmwidget", "train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def refuse(constant):
    raise AssertionError(f"{constant} is not standard JSON")


def test_it_trains_prints_a_progress_line_and_leaves_its_record(tmp_path):
    done = run_cli("--steps", "60", *TINY, "--eval-interval", "30", "--progress-interval", "0.1",
                   "--run-dir", "r", "--checkpoint-every", "60", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("lmwidget job: gpt on cpu x1; run dir ") and "lmwidget.attach(" in lines[1]
    last = lines[-1]
    assert re.fullmatch(r"step 60/60 \| loss \d\.\d{4} \| val \d\.\d{4} \| grad_norm [\d.]+ \| "
                        r"lr 3\.00e-03 \| [\d.]+k tok/s \| finished \| \d+ s", last), last
    run_dir = tmp_path / "r"
    assert sorted(p.name for p in run_dir.iterdir()) == ["connection.json", "metrics.jsonl", "rank-0.jsonl",
                                                          "step-0000060.pt"]
    # the record holds the config, samples and paths, the connection file the keys: the owner's only
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700 and "open to others" not in done.stderr
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in run_dir.iterdir()} == {
        "connection.json": 0o600, "metrics.jsonl": 0o600, "rank-0.jsonl": 0o600, "step-0000060.pt": 0o600}
    records = [json.loads(line, parse_constant=refuse) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(len(records)))
    vals = [v for r in records if r["type"] == "rows" for v in r["body"]["val_loss"]]
    assert vals.count(None) == 58 and all(isinstance(v, float) for v in vals if v is not None)
    steps = [s for r in records if r["type"] == "rows" for s in r["body"]["step"]]
    assert steps == list(range(1, 61))
    assert records[-1] == {"seq": len(records) - 1, "type": "status", "body": {
        "state": "finished", "lr": 3e-3, "grad_clip": 1.0, "paused": False, "anomaly": None,
        "error": None, "checkpoint": records[-1]["body"]["checkpoint"]}}


def test_an_existing_run_directory_open_to_others_keeps_its_mode_and_the_job_says_so(tmp_path):
    run_dir = tmp_path / "shared"
    run_dir.mkdir()
    run_dir.chmod(0o755)
    done = run_cli("--steps", "3", *TINY, "--run-dir", "shared", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (f"LmwidgetWarning: run directory {run_dir} is open to others (mode 0755): the files the job writes "
            f"in it are its owner's only (0600), but others can list their names; `chmod 700 {run_dir}` closes it"
            in done.stderr), done.stderr
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in run_dir.iterdir()} == {0o600}


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1"], "error: lr must be a finite number > 0 (for example 3e-3); got -1.0"),
    (["--model", "transformer"], "--model 'transformer' is neither gpt, lstm nor MODULE:NAME"),
    (["--model", "no_such_module:build"], "--model 'no_such_module:build': No module named 'no_such_module'"),
    (["--resume", "missing.pt"], "missing.pt"),
])
def test_bad_options_exit_2_saying_what_was_wrong(tmp_path, args, message):
    done = run_cli(*args, "--run-dir", "r", cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.startswith("usage: python -m lmwidget train")
    assert not (tmp_path / "r").exists()  # a typo leaves no empty run directory behind


def test_a_model_of_your_own_by_module_and_name(tmp_path):
    (tmp_path / "mymodels.py").write_text(
        "import torch.nn as nn\n"
        "class Bigram(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.table = nn.Embedding(128, 128)\n"
        "    def forward(self, idx, targets=None):\n"
        "        logits = self.table(idx)\n"
        "        loss = None if targets is None else nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())\n"
        "        return logits, loss\n"
        "def build():\n"
        "    return Bigram()\n")
    done = run_cli("--model", "mymodels:build", "--steps", "20", "--block-size", "16", "--quiet",
                   "--run-dir", "r", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "lmwidget job: Bigram on cpu x1" in done.stdout


def test_a_failed_run_exits_1_naming_the_error(tmp_path):
    (tmp_path / "broken.py").write_text(
        "import torch, torch.nn as nn\n"
        "class Broken(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.table = nn.Embedding(128, 128); self.calls = 0\n"
        "    def forward(self, idx, targets=None):\n"
        "        self.calls += 1\n"
        "        if self.calls > 5: raise RuntimeError('the model broke')\n"
        "        logits = self.table(idx)\n"
        "        loss = None if targets is None else nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())\n"
        "        return logits, loss\n"
        "model = Broken()\n")
    done = run_cli("--model", "broken:model", "--steps", "50", "--block-size", "16", "--eval-interval", "0",
                   "--quiet", "--run-dir", "r", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 1
    assert "the run failed at step" in done.stderr and "RuntimeError: the model broke" in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_stops_the_run_at_a_step_boundary_and_exits_0(tmp_path, start_job, signum):
    job = start_job(tmp_path / "r", "--steps", "1000000", *TINY, "--quiet").wait_ready()
    try:
        wait_for(lambda: recorded_steps(tmp_path / "r" / "metrics.jsonl") > 5, timeout=30)
        job.proc.send_signal(signum)
        assert job.wait(30) == 0, job.output()
        (stop,) = [e for e in job.rank_events(0) if e[1] == "stop"]
        records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
        # the last status says stopped (a last resource sample may be written after it)
        assert [r for r in records if r["type"] == "status"][-1]["body"]["state"] == "stopped"
        assert [e for r in records if r["type"] == "events" for e in r["body"] if e[2] == "stop"][0][4] == signum.name
        assert stop[0] == max(s for r in records if r["type"] == "rows" for s in r["body"]["step"])
    finally:
        job.kill()
