"""The command-line trainer, `python -m lmwidget train`: alone, or under torchrun with DDP."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch.distributed as dist

from lmwidget.core.callbacks import EarlyStopping, ReduceLROnPlateau
from lmwidget.training.config import add_options
from lmwidget.training.distributed import RankSync, launched
from lmwidget.training.entry import configure
from lmwidget.training.run import Run
from .job import Job
from .rundir import RankLog
from lmwidget.system.resources import usable_cpus
from lmwidget.writers.tensorboard import TensorBoardWriter, check_logdir, summary_writer_class

PROG = "python -m lmwidget train"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Train a language model and serve it to notebooks: "
        "lmwidget.attach(RUN_DIR) shows its dashboard and steers it. Runs under "
        "torchrun --nproc_per_node=N too (DistributedDataParallel: nccl on GPUs, gloo on CPU).")
    add_options(p, "gpt, lstm, a Hugging Face model's directory, or MODULE:NAME (an nn.Module, "
                "or a function returning one)")
    job = p.add_argument_group("the job")
    job.add_argument("--run-dir", default=None, metavar="DIR",
                     help="where the connection file, metrics.jsonl, the rank logs and (unless "
                     "--checkpoint-dir) checkpoints go (default: lmwidget-runs/run-<time>)")
    job.add_argument("--ip", default="127.0.0.1",
                     help="the address the metrics and control sockets bind (default: 127.0.0.1, "
                     "this machine only; 0.0.0.0 or an interface's address to attach from elsewhere, "
                     "encrypted with CURVE, its keys in the connection file)")
    job.add_argument("--metrics-port", type=int, default=0, help="default: a free port")
    job.add_argument("--control-port", type=int, default=0, help="default: a free port")
    job.add_argument("--start-paused", action="store_true",
                     help="wait, paused before the first step, until a notebook resumes the run")
    job.add_argument("--progress-interval", type=float, default=10.0, metavar="SECONDS",
                     help="seconds between two progress lines (default: 10)")
    job.add_argument("--quiet", action="store_true", help="no progress lines")
    job.add_argument("--tensorboard", default=None, metavar="DIR",
                     help="write TensorBoard event files into DIR while the run trains (rank 0; "
                     "needs the tensorboard package)")
    return p


def _run_dir(given, sync) -> Path:
    """The run directory every rank uses: the one given, or rank 0's new one."""
    path = given or os.path.join("lmwidget-runs", f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    if sync is not None:
        box = [path]
        dist.broadcast_object_list(box, src=0, group=sync.cpu_group)
        path = box[0]
    return Path(path).expanduser().resolve()


def build_run(options: dict, sync=None):
    """A Run from parsed options (what `main` does before serving it)."""
    resume, patience, plateau = (options.pop(k) for k in ("resume", "early_stopping", "reduce_lr"))
    callbacks = ([EarlyStopping(patience=patience)] if patience is not None else []) + (
        [ReduceLROnPlateau(patience=plateau)] if plateau is not None else [])
    start = configure(options.pop("model", None), options.pop("data", None), options, resume=resume,
                      command_line=True)
    return Run(start.config, model=start.model, callbacks=callbacks, restore=start.restore, sync=sync)


def _stop_on_signals(run) -> None:
    """SIGTERM, and a first Ctrl-C (SIGINT, which torchrun passes on to every rank), stop
    the run at the next step boundary; a second Ctrl-C interrupts at once."""
    def stop(signum, _frame):
        name = signal.Signals(signum).name
        run.stop(name)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(argv=None) -> int:
    p = parser()
    options = vars(p.parse_args(argv))
    job_options = {k: options.pop(k) for k in ("run_dir", "ip", "metrics_port", "control_port",
                                               "start_paused", "progress_interval", "quiet",
                                               "tensorboard")}
    if job_options["tensorboard"] is not None:  # refused on every rank alike, before they meet
        try:
            check_logdir(job_options["tensorboard"])
            summary_writer_class()
        except (ImportError, ValueError) as e:
            p.error(str(e))
    sync = None
    try:
        if launched():
            sync = RankSync(options.get("device", "auto"))
        # the process's main thread only serves: the training thread may use every CPU
        # this process's share of the machine has
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        options.setdefault("threads", max(1, usable_cpus() // local_world))
        run_dir = _run_dir(job_options["run_dir"], sync)
        options.setdefault("checkpoint_dir", str(run_dir))
        try:
            run = build_run(options, sync)
        except (ValueError, TypeError, FileNotFoundError, ConnectionError) as e:
            p.error(str(e))
        if job_options["start_paused"]:
            run.pause()
        main_rank = sync is None or sync.is_main
        job = None
        writer = TensorBoardWriter(run, job_options["tensorboard"]) if (
            main_rank and job_options["tensorboard"] is not None) else None
        if main_rank:
            job = Job(run, run_dir, sync=sync, ip=job_options["ip"],
                      metrics_port=job_options["metrics_port"], control_port=job_options["control_port"],
                      progress=None if job_options["quiet"] else sys.stdout,
                      progress_interval=job_options["progress_interval"])
            print(f"lmwidget job: {run.options()['model']} on {job.info['device']}"
                  f" x{job.info['world_size']}; run dir {run_dir}\n"
                  f"  attach from a notebook: lmwidget.attach({str(run_dir)!r})", flush=True)
        _stop_on_signals(run)
        run.start()
        if writer is not None:
            writer.start()
        if job is not None:
            try:
                job.serve()
            except BaseException as e:  # the serving side broke: end the run cleanly first
                run.stop(f"the job's server failed: {type(e).__name__}: {e}")
                run.join()
                raise
            finally:
                job.close()
        else:
            log = RankLog(run, run_dir, sync.rank)
            while not run.join(0.25):
                log.flush()
            log.close()
        run.join()
        if writer is not None:
            writer.close()  # what the run recorded last, then the files closed
        if run.error is not None:
            print(f"{PROG}: the run failed at step {run.step}: {type(run.error).__name__}: "
                  f"{run.error}", file=sys.stderr, flush=True)
            return 1
        return 0
    finally:
        if sync is not None:
            sync.close()
