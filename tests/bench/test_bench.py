"""The cost bounds: payload sizes, flat scaling, history bytes, and a loose timing ratio."""

import json
import queue
import subprocess
import sys
import threading
import time

import pytest
import torch

from lmwidget.bench import loops, traffic
from lmwidget.bench import overhead as bench
from lmwidget.views.charts import MAX_POINTS
from lmwidget.training.config import TrainConfig
from lmwidget.data.dataset import Dataset
from lmwidget.data.text import builtin_text
from lmwidget.models.builtin import GPT, LSTM, build_model, count_params

from tests.conftest import TINY
from tests.harness.pace import scaled


@pytest.fixture(scope="module", autouse=True)
def counting_comm():
    import comm

    original = comm.create_comm
    traffic.install_counting_comm()
    yield
    comm.create_comm = original


def test_a_chart_update_stays_small_and_flat_up_to_a_million_steps():
    rows = traffic.scaling()
    assert [r["steps"] for r in rows] == [1_000, 10_000, 100_000, 1_000_000]
    for r in rows:
        assert r["points_sent"] <= MAX_POINTS
        assert r["bytes"] <= 64 * 1024
    assert rows[-1]["bytes"] <= 1.5 * rows[0]["bytes"]  # bytes do not grow with the run


def test_preparing_an_update_costs_the_same_at_any_run_length():
    rows = traffic.scaling(sizes=(1_000, 1_000_000), repeats=30)
    # generous: the work is O(max_points); a per-update O(n) pass would be ~1000x slower here
    assert rows[1]["prepare_ms"] < 10 * rows[0]["prepare_ms"] + 1.0


def test_history_bytes_per_step():
    from lmwidget.core.history import History

    assert History().nbytes_per_step() <= 128


def test_flops_per_token():
    gpt = GPT(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64)
    expected = 6 * count_params(gpt) + 12 * 2 * 4 * 16 * 64
    assert bench.flops_per_token(gpt, 64) == expected
    lstm = LSTM(vocab_size=65, block_size=64)
    assert bench.flops_per_token(lstm, 64) == 6 * count_params(lstm)
    assert bench.peak_flops(torch.device("cpu")) is None


def test_the_lmwidget_loop_reports_its_dashboard_traffic():
    traffic.CountingComm.log.clear()
    config = TrainConfig.from_options(**{**TINY, "eval_interval": 0, "max_steps": 600})
    dataset = Dataset(builtin_text()[:100_000])
    torch.manual_seed(0)
    init = build_model("gpt", dataset.vocab_size, 32, 1, 2, 32, 0.0).state_dict()
    run, dashboard, tps, cpu_share, rate, sizes = loops.lmwidget_loop(config, dataset, init, 500, 100)
    assert run.state == "finished" and tps > 0
    assert 0 < rate <= 4.0  # redraws per second
    assert 0 < cpu_share < 1
    assert sizes and max(sizes) <= 64 * 1024  # each chart, each redraw


def run_with_progress(command: list[str], sides: int, patience: float = 10.0) -> tuple[str, list[str]]:
    """Run the benchmark, bound by its work rather than by the clock: each side (a progress
    line on stderr) may take `patience` times as long as the slowest before it (the first:
    scaled(120) s), so a busy machine slows it without failing it, and a hang still fails."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, errors = queue.Queue(), []

    def read_stderr():
        for line in proc.stderr:
            (lines.put if line.startswith("round ") else errors.append)(line)
        lines.put(None)

    threading.Thread(target=read_stderr, daemon=True).start()
    progress, slowest, last = [], scaled(120) / patience, time.monotonic()
    try:
        while True:
            try:
                line = lines.get(timeout=patience * slowest)
            except queue.Empty:
                raise AssertionError(f"no side measured within {patience * slowest:.1f} s after "
                                     f"{len(progress)} of {sides}: {progress}") from None
            if line is None:
                break
            now = time.monotonic()
            slowest, last = max(slowest, now - last) if progress else now - last, now
            progress.append(line.strip())
        stdout = proc.stdout.read()
        assert proc.wait(60) == 0, "".join(errors)
    finally:
        proc.kill()
    assert len(progress) == sides, progress
    return stdout, progress


@pytest.mark.slow
def test_the_benchmark_command_prints_its_report_and_holds_a_loose_ratio():
    """The report's figures, the headline first. Speed targets belong to the benchmark, not to
    a test on a machine of unknown load: the ratios are held only to a tripwire (best round
    >= 0.5) that a collapse of the training thread would trip (0.07 was seen once, with two
    OpenMP teams on 2 CPUs and a page drawing).

    On the default GPT, whose rounds last ~2 s: with a tiny model a round lasts a fraction
    of a second and the ratio is noise.
    """
    code = ("import json, sys, lmwidget.bench.overhead as b; r = b.benchmark(rounds=3, steps=150, warmup=20, "
            "frameworks=False, progress=lambda line: print(line, file=sys.stderr, flush=True)); "
            "print(json.dumps(r))")
    stdout, progress = run_with_progress([sys.executable, "-c", code], sides=9)
    report = json.loads(stdout)
    assert next(iter(report)) == "ratio_to_main_thread"
    assert report["lmwidget_threads"] in (report["bare_thread_threads"], report["bare_thread_threads"] - 1)
    for key in ("tokens_per_sec_bare", "tokens_per_sec_lmwidget", "ratio", "ui_updates_per_sec",
                "tokens_per_sec_bare_main_thread", "best_ratio_to_main_thread",
                "chart_update_bytes", "widget_bytes_per_1000_steps", "control_latency",
                "history_bytes_per_step", "dashboard_cpu_share_of_one_core", "scaling"):
        assert key in report
    assert report["best_ratio"] >= 0.5 and report["best_ratio_to_main_thread"] >= 0.5, report
    assert report["chart_update_bytes"]["max"] <= 64 * 1024
    latency = report["control_latency"]
    step_ms = report["step_time_ms"]
    for name in ("pause_ms", "set_lr_ms", "stop_ms"):
        assert latency[name]["median"] <= step_ms + scaled(20 + 50), (name, latency[name], step_ms)


def test_peak_flops_is_looked_up_by_gpu_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert bench.peak_flops(torch.device("cuda")) == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-40GB")
    assert bench.peak_flops(torch.device("cuda")) == 312e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert bench.peak_flops(torch.device("cuda")) is None


@pytest.mark.slow
def test_the_frameworks_comparisons_measure_both_sides():
    """Your own loop and the Hugging Face Trainer, each bare and with lmwidget (one short
    round: the ratios themselves are the benchmark's to report, not a test's to judge)."""
    from lmwidget.bench.frameworks import compare

    config = TrainConfig.from_options(**{**TINY, "eval_interval": 0, "max_steps": 100})
    dataset = Dataset(builtin_text()[:100_000])
    torch.manual_seed(0)
    init = build_model("gpt", dataset.vocab_size, 32, 1, 2, 32, 0.0).state_dict()
    report = compare(1, 40, 20, 5, config, dataset, init, interleaved_steps=80)
    for side in ("own_loop", "hf_trainer"):
        r = report[side]
        assert r["tokens_per_sec_bare"] > 0 and r["tokens_per_sec_lmwidget"] > 0 and r["rounds"] == 1, report
        assert r["ratio"] == r["tokens_per_sec_lmwidget"] / r["tokens_per_sec_bare"]
        # then one run alternating by blocks of 10 steps: 80 steps (the Trainer 40) after 5 of warmup
        assert r["interleaved"]["pairs"] == {"own_loop": 4, "hf_trainer": 2}[side], r
        assert r["interleaved"]["ratio"] > 0, r
        # the training thread's CPU in lmwidget's hooks (or the clip they replace): measured, small
        assert 0 < r["cpu_ms_per_step_lmwidget"] < 1e3 and r["cpu_ms_per_step_bare"] >= 0, r
    assert report["own_loop"]["cpu_ms_per_step_bare"] > 0  # the bare loop's clip_grad_norm_
    assert report["own_loop"]["interleaved_bare_against_bare"]["pairs"] == 4, report


def test_an_interleaved_run_alternates_by_blocks_and_pairs_neighbouring_blocks():
    """lmwidget acts in every other block after the warmup, the first bare; each pair of
    blocks gives the bare block's seconds over the steered one's, and the median is the ratio."""
    from lmwidget.bench.frameworks import alternating, interleaved

    on = alternating(3, 2)
    assert [on(i) for i in range(14)] == [False] * 5 + [True] * 3 + [False] * 3 + [True] * 3
    # steps of 10 ms bare and 11 ms steered, with a machine twice as slow for the second pair
    times = [0.5, 0.5] + [0.010] * 3 + [0.011] * 3 + [0.020] * 3 + [0.022] * 3 + [0.010] * 3 + [0.012] * 3
    report = interleaved(times, warmup=2, block=3)
    assert report["pairs"] == 3 and report["block_steps"] == 3
    assert report["ratio"] == pytest.approx(1 / 1.1)  # the slow stretch and the 1.2 pair do not move it
    with pytest.raises(ValueError, match=r"holds no pair of 3-step blocks: give it at least 8 steps"):
        interleaved(times[:7], warmup=2, block=3)
