"""The seam: every view reads a Source; the schema's columns and the user's metrics reach every sink;
records and checkpoints written by lmwidget 0.1.0 still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lmwidget
from lmwidget import Source
from lmwidget.views.compare import Compare
from lmwidget.views.summary import summary_html

from tests.conftest import TINY, wait_for
from tests.harness.frameworks import own_loop

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v0.1.0"


class Replayed(Source):
    """A source of nothing but a record: what a view needs, and no more."""

    unsupported = {"pause": "a replay", "stop": "a replay", "lr": "a replay", "grad_clip": "a replay",
                   "sample": "a replay", "save": "a replay", "histogram": "a replay", "evaluate": "a replay"}
    state, max_steps, started = "finished", 50, True

    def __init__(self):
        super().__init__()
        for i in range(1, 51):
            self.record.push(step=i, tokens=i * 100, time=i * 0.1, lr=1e-3, tokens_per_sec=1000.0,
                             step_time=0.1, loss=torch.tensor(4.0 - i / 50), grad_norm=torch.tensor(1.0),
                             val_loss=torch.tensor(3.5) if i % 25 == 0 else None)
        self.step = 50

    def describe(self):
        return {"model": "a replayed model"}

    def options(self):
        return {"model": "replayed", "lr": 1e-3}


def test_a_source_that_is_not_a_run_plugs_into_every_view(tmp_path):
    source = Replayed()
    d = source.dashboard
    d.settle()
    assert d.step_label.value == "50" and len(d.charts["loss"].marks["train"].x) == 50
    assert all(w.disabled for w in (d.pause_button, d.stop_button, d.lr_slider, d.clip_input,
                                     d.sample_button, d.save_button, d.evaluate_button))
    assert d.pause_button.tooltip == "not available: a replay"
    assert "a replayed model" in d.title.value
    html = summary_html(source)
    curves = html.count("<polyline") - html.count('class="lmwidget-summary-raw"')  # a smoothed curve: one
    assert "finished at step 50/50" in html and curves == 4
    view = Compare([source, Replayed()])
    view.refresh()
    assert len(view.charts["loss"].marks) == 2
    written = source.export(tmp_path)
    assert len(pd.read_csv(written["history.csv"])) == 50
    assert json.loads(written["config.json"].read_text())["run"]["model"] == "a replayed model"
    with pytest.raises(NotImplementedError, match="cannot pause: a replay"):
        source.pause()


def test_the_users_metrics_reach_the_history_the_exports_and_a_chart_of_their_own(tmp_path):
    model, optimizer, scheduler, train = own_loop(30)
    run = lmwidget.steer(model, optimizer, display=False)
    tick = run.tick

    def logging(loss, **kw):
        going = tick(loss, **kw)
        run.log(accuracy=torch.tensor(0.5 + run.step / 100), tokens_seen_by_me=run.step * 10)
        return going

    run.tick = logging
    train.run = run
    d = run.dashboard
    train()
    run.end()
    h = run.history
    assert h.accuracy.tolist() == pytest.approx([0.5 + s / 100 for s in range(1, 31)])
    assert h.tokens_seen_by_me.tolist() == [s * 10 for s in range(1, 31)]
    d.settle()
    assert "user:accuracy" in d.charts and d.charts["user:accuracy"].figure in d.grid.children
    assert len(d.charts["user:accuracy"].marks["accuracy"].x) == 30
    written = run.export(tmp_path)
    assert pd.read_csv(written["history.csv"]).accuracy.iloc[-1] == pytest.approx(0.8)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(written["tensorboard"]), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("user/accuracy")] == list(range(1, 31))
    assert "lmwidget-summary-user-accuracy" in summary_html(run)
    with pytest.raises(ValueError, match="a metric's name must be a Python identifier"):
        run.log(**{"not a name": 1.0})
    with pytest.raises(ValueError, match="'perplexity' is computed by lmwidget"):
        run.log(perplexity=1.0)


def test_the_users_metrics_travel_with_a_checkpoint(tmp_path):
    run = lmwidget.train(display=False, max_steps=20, **TINY)
    run.wait(60)
    run.log(quality=0.75)
    resumed = lmwidget.train(resume=run.save(tmp_path / "c.pt"), max_steps=25, display=False)
    resumed.wait(60)
    assert resumed.history.quality.dropna().tolist() == [0.75]


def test_a_checkpoint_written_by_lmwidget_0_1_0_resumes(tmp_path):
    old = pd.read_csv(FIXTURES / "checkpoint-history.csv") if (FIXTURES / "checkpoint-history.csv").exists() else None
    text = (FIXTURES / "text.txt").read_text()
    run = lmwidget.train(resume=FIXTURES / "checkpoint.pt", data=text, max_steps=40, display=False,
                         checkpoint_dir=tmp_path)
    assert run.wait(60) and run.state == "finished" and run.step == 40
    h = run.history
    assert list(h.step) == list(range(1, 41)) and h.loss.notna().all()
    assert {"lr", "note", "restore"} <= set(run.events.kind)  # its events came along
    assert run.lr == 2e-3  # as it was steered before it was saved
    if old is not None:
        np.testing.assert_allclose(h.loss[:30], old.loss)


def test_a_job_record_written_by_lmwidget_0_1_0_attaches(tmp_path):
    copy = tmp_path / "moved-job"  # a run directory copied from elsewhere: its paths point away
    shutil.copytree(FIXTURES / "job", copy)
    run = lmwidget.attach(copy, display=False)
    assert (run.state, run.step, run.max_steps, run.connected) == ("finished", 20, 20, False)
    h = run.history
    assert list(h.step) == list(range(1, 21)) and h.val_loss.notna().sum() == 2
    assert run.describe()["model"] == "gpt"  # named by its options: 0.1.0 wrote no description
    d = run.dashboard
    wait_for(lambda: d.step_label.value == "20", timeout=10)
