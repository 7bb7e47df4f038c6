"""run.export(): tables, config, TensorBoard event files; run.to_html(): a standalone page."""

import json
import re

import numpy as np
import pandas as pd
import pytest

import lmwidget
from lmwidget.views import export as export_module

from tests.conftest import TINY


@pytest.fixture(scope="module")
def run():
    run = lmwidget.train(display=False, max_steps=60, **{**TINY, "eval_interval": 20})
    run.wait(60)
    run.sample()
    run.log_event("note", 2.5, "exported")
    run.sample_resources()
    return run


def test_export_writes_every_table(run, tmp_path):
    written = run.export(tmp_path / "out")
    assert set(written) == {"history.csv", "history.parquet", "events.csv", "resources.csv",
                            "samples.json", "config.json", "tensorboard"}
    history = run.history
    csv = pd.read_csv(written["history.csv"])
    assert list(csv.columns) == list(history.columns) and len(csv) == 60
    np.testing.assert_allclose(csv["loss"], history["loss"], rtol=1e-15)
    pd.testing.assert_frame_equal(pd.read_parquet(written["history.parquet"]), history)
    events = pd.read_csv(written["events.csv"])
    assert "note" in set(events.kind) and "exported" in set(events.detail.dropna())
    assert len(pd.read_csv(written["resources.csv"])) == len(run.resources) >= 1
    samples = json.loads(written["samples.json"].read_text())
    assert samples == [{"step": s, "text": t} for s, t in run.samples]
    info = json.loads(written["config.json"].read_text())
    assert info["config"]["max_steps"] == 60 and info["config"]["n_embd"] == TINY["n_embd"]
    assert info["run"]["state"] == "finished" and info["run"]["step"] == 60
    assert info["versions"]["lmwidget"] == lmwidget.__version__


def test_tensorboard_reads_the_export(run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = run.export(tmp_path)["tensorboard"]
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    loss = acc.Scalars("loss/train")
    history = run.history
    assert [e.step for e in loss] == list(history.step)
    np.testing.assert_allclose([e.value for e in loss], history.loss, rtol=1e-6)
    val = acc.Scalars("loss/val")
    assert [e.step for e in val] == [20, 40, 60]
    assert len(acc.Scalars("lr")) == 60 and len(acc.Scalars("grad_norm")) == 60
    texts = acc.Tags()["tensors"]
    assert {"events/text_summary", "samples/text_summary", "config/text_summary"} <= set(texts)
    walltimes = [e.wall_time for e in loss]
    assert walltimes == sorted(walltimes) and walltimes[-1] - walltimes[0] == pytest.approx(
        history.time.iloc[-1] - history.time.iloc[0], abs=1e-3)


def test_export_without_the_optional_packages(run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "has", lambda module: False)
    written = run.export(tmp_path)
    assert set(written) == {"history.csv", "events.csv", "resources.csv", "samples.json", "config.json"}
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "history.parquet").exists()


def test_to_html_is_one_standalone_page(run, tmp_path):
    path = run.to_html(tmp_path / "page" / "run.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    # the curves are inline SVG: no script, stylesheet or image is fetched for them
    static = page[:page.index("<h3>Dashboard</h3>")]
    assert not re.search(r"<script|<link|<img|src=", static)
    smoothed = static.count('class="lmwidget-summary-smoothed"')  # as the dashboard smooths them
    assert smoothed >= 2 and static.count('class="lmwidget-summary-raw"') == smoothed
    assert static.count("<polyline") == 5 + smoothed and "lmwidget-summary-loss" in static
    assert "finished at step 60/60" in static
    events = static[static.index("<th>step</th>"):]
    assert "nan" not in events and not re.search(r"\d\.\d{7,}", events)  # no 16-digit times
    # the dashboard's widget state, for the interactive charts
    state = json.loads(re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>',
                                 page, re.S).group(1))
    models = state["state"].values()
    lines = [m for m in models if m["model_name"] == "LinesModel"]
    assert len(lines) >= 6
    figures = [m for m in models if m["model_name"] == "FigureModel"]
    assert {"loss", "learning rate"} <= {m["state"].get("title") for m in figures}
    assert 'application/vnd.jupyter.widget-view+json' in page
