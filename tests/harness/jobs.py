"""Start `python -m lmwidget train` jobs (alone or under torchrun) for the tests, and read
what each rank logged."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.harness.pace import scaled

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8"]


class Job:
    def __init__(self, run_dir: Path, *args, nproc: int = 0, env=None):
        """`nproc` > 0: under torchrun --nproc_per_node=nproc (gloo on this CPU)."""
        self.run_dir = Path(run_dir)
        self.log_path = self.run_dir.with_suffix(".log")
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={nproc}", "-m", "lmwidget", "train"] if nproc
                    else [sys.executable, "-m", "lmwidget", "train"])
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([*launcher, "--run-dir", str(self.run_dir), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    @property
    def connection_file(self) -> Path:
        return self.run_dir / "connection.json"

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def wait_ready(self, timeout=90.0) -> "Job":
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        try:
            while not self.connection_file.exists():
                assert self.proc.poll() is None, f"the job exited {self.proc.returncode}:\n{self.output()}"
                assert time.monotonic() < deadline, f"no connection file within {timeout} s:\n{self.output()}"
                time.sleep(0.05)
        except BaseException:
            self.kill()
            raise
        return self

    def wait(self, timeout=60.0) -> int:
        try:
            return self.proc.wait(scaled(timeout))
        finally:
            self.log.flush()

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def rank_events(self, rank: int, kinds=None) -> list[tuple]:
        """(step, kind, value) of what rank `rank` did, in order."""
        path = self.run_dir / f"rank-{rank}.jsonl"
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [(e["step"], e["kind"], e["value"]) for e in events if kinds is None or e["kind"] in kinds]

    def kill(self) -> None:
        """The job and every process it started."""
        kill_tree(self.proc)
        self.log.close()


def kill_tree(proc) -> None:
    """A process and every process it started: torchrun's workers (and Lightning's ranks)
    run in sessions of their own, so killing the launcher alone would leave them training."""
    try:
        procs = [psutil.Process(proc.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    proc.poll()


def recorded_steps(path) -> int:
    """How many steps a job's metrics.jsonl holds so far (bound by work, not by bytes)."""
    steps = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                break  # a line being written
            if record["type"] == "rows":
                steps += len(record["body"]["step"])
    return steps
