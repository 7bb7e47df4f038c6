"""What a script made a job costs and how fast it answers: your own loop, the Hugging Face
Trainer and Lightning, each alone and on 2 ranks (torchrun; Lightning's DDP), attached to
from here as a notebook would. Prints a JSON report.

    python benchmarks/script_jobs.py [--width 256] [--steps 300] [--kinds loop hf lightning] [--ranks 1 2]

On the CPU, every script; with DEVICE=cuda in the environment, the Hugging Face Trainer's
trains on the GPU (`--kinds hf`; benchmarks/gpu.sh runs it there).

For each script: the CPU time lmwidget's hooks take on rank 0's training thread per step
(Loop.tick; HFRun.before_update and step_end; LightningRun.before_update and batch_end:
`time.thread_time`, as the in-kernel benchmark measures it), against the step's median
time as the job recorded it; and, seen from the notebook's side, the seconds from
`pause()` to the state "paused", from `resume()` to "running", and from `set_lr()` to its
event in the record (the job publishes four times a second).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lmwidget  # noqa: E402
from tests.harness.scripts import ScriptRun  # noqa: E402

# Imported first by every process of the script (PYTHONPATH): times lmwidget's hooks on the
# thread that calls them, and writes the totals of rank 0 when the process exits
TIMER = '''
import atexit, json, os, time
from lmwidget.adapters import hf_trainer, lightning_trainer, loop

spent = {"cpu_s": 0.0, "calls": 0, "steps": 0}
def timed(cls, name, step):
    fn = cls.__dict__[name]
    def wrapper(self, *args, **kwargs):
        t = time.thread_time()
        try:
            return fn(self, *args, **kwargs)
        finally:
            spent["cpu_s"] += time.thread_time() - t
            spent["calls"] += 1
            spent["steps"] += step
    setattr(cls, name, wrapper)
timed(loop.Loop, "tick", 1)
timed(hf_trainer.HFRun, "before_update", 0)
timed(hf_trainer.HFRun, "step_end", 1)
timed(lightning_trainer.LightningRun, "before_update", 0)
timed(lightning_trainer.LightningRun, "batch_end", 1)

@atexit.register
def report():
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    if rank == 0 and spent["calls"]:  # (torchrun's own process has no hooks to report)
        with open(os.environ["LMWIDGET_HOOK_TIMES"], "w") as f:
            json.dump(spent, f)
'''


def until(predicate, timeout=60.0) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the job did not answer in time")
        time.sleep(0.002)
    return time.monotonic() - t0


def measure(kind: str, ranks: int, width: int, steps: int, work: Path) -> dict:
    timer_dir = work / "timer"
    timer_dir.mkdir(exist_ok=True)
    (timer_dir / "sitecustomize.py").write_text(TIMER)
    times = work / f"{kind}-{ranks}-hooks.json"
    env = {"PYTHONPATH": os.pathsep.join([str(timer_dir), os.environ.get("PYTHONPATH", "")]),
           "WIDTH": str(width), "LMWIDGET_HOOK_TIMES": str(times)}
    launch = {"nproc": ranks} if ranks > 1 and kind != "lightning" else {}
    script = ScriptRun(kind, work / f"{kind}-{ranks}", devices=ranks if kind == "lightning" else 1, env=env,
                       **launch).wait_ready()
    try:
        run = lmwidget.attach(script.run_dir, display=False, client="benchmark")
        run.wait_for_step(30, timeout=120)
        pause, resume, lr = [], [], []
        for _ in range(3):
            t0 = time.monotonic()
            run.pause()
            until(lambda: run.state == "paused")
            pause.append(time.monotonic() - t0)
            time.sleep(0.2)
            t0 = time.monotonic()
            run.resume()
            until(lambda: run.state == "running")
            resume.append(time.monotonic() - t0)
            run.wait_for_step(run.step + 10, timeout=60)
            before = int((run.events.kind == "lr").sum())
            t0 = time.monotonic()
            run.set_lr(run.lr * 0.9)
            until(lambda: int((run.events.kind == "lr").sum()) > before)
            lr.append(time.monotonic() - t0)
        run.wait_for_step(run.step + steps, timeout=600)
        run.stop()
        assert script.wait(120) == 0, script.output()
        hooks = json.loads(times.read_text())
        step_ms = 1e3 * statistics.median(run.history.step_time.dropna().tail(steps))
        return {"kind": kind, "ranks": ranks, "width": width, "steps": hooks["steps"],
                "hook_cpu_ms_per_step": round(1e3 * hooks["cpu_s"] / max(hooks["steps"], 1), 3),
                "step_ms_median": round(step_ms, 2),
                "hook_share_of_step": round(hooks["cpu_s"] / max(hooks["steps"], 1) / (step_ms / 1e3), 4),
                "pause_s": [round(x, 3) for x in pause], "resume_s": [round(x, 3) for x in resume],
                "lr_event_s": [round(x, 3) for x in lr]}
    finally:
        script.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256, help="the models' width (default 256)")
    parser.add_argument("--steps", type=int, default=300, help="steps timed after the latencies (default 300)")
    parser.add_argument("--kinds", nargs="*", default=["loop", "hf", "lightning"])
    parser.add_argument("--ranks", nargs="*", type=int, default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        report = [measure(kind, ranks, args.width, args.steps, Path(work))
                  for kind in args.kinds for ranks in args.ranks]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
