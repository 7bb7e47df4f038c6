"""A run's record as pandas DataFrames: its steps, its resource samples and its events."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .schema import COLUMNS, RESOURCES

EVENT_COLUMNS = ("step", "time", "kind", "value", "detail")


def history_frame(history) -> pd.DataFrame:
    """Every step: the stored columns, the derived ones, the latest resource sample by its
    time, and the user's metrics (a step the user logged at but the loop did not record
    gets a row of its own).

    Args:
        history: the run's History.

    Returns:
        One row per step, a column per metric of the schema and per metric of the user's.
    """
    history.drain()
    cols = history.since(0)
    for m in COLUMNS:
        if m.derive is not None:
            cols[m.name] = m.derive(cols)
    samples = resources_frame(history.resources_since(0))
    # each step shows the latest sample taken by its time (NaN before the first one)
    at = np.searchsorted(samples["time"].to_numpy(), cols["time"], side="right") - 1
    for m in RESOURCES:
        values = np.append(samples[m.name].to_numpy(dtype=np.float64), np.nan)
        cols[m.name] = values[at]  # at == -1 picks the NaN
    frame = pd.DataFrame({m.name: cols[m.name] for m in COLUMNS})
    logged = history.logged_since(0)
    if logged:
        user = pd.DataFrame(logged, columns=["step", "name", "value"]).pivot_table(
            index="step", columns="name", values="value", aggfunc="last")
        user = user[[n for n in history.user_names() if n in user.columns]]
        frame = frame.merge(user, how="outer", left_on="step", right_index=True, sort=True)
        frame = frame.astype({"step": np.int64}).reset_index(drop=True)
    return frame


def resources_frame(samples: list) -> pd.DataFrame:
    """Resource samples as a DataFrame: time, step and each resource (NaN where not measured).

    Args:
        samples: (time, step, {resource: value}) tuples.

    Returns:
        One row per sample.
    """
    known = [m.name for m in RESOURCES]
    names = known + sorted({k for *_, s in samples for k in s} - set(known))
    data = {"time": [t for t, _, _ in samples], "step": [s for _, s, _ in samples]}
    for name in names:
        data[name] = [float(s.get(name, np.nan)) for *_, s in samples]
    return pd.DataFrame(data, columns=["time", "step", *names]).astype(
        {"time": np.float64, "step": np.int64, **{n: np.float64 for n in names}})


def events_frame(events: list) -> pd.DataFrame:
    """Events as a DataFrame in step order (spikes are found when rows are drained, after later
    events).

    Args:
        events: (step, time, kind, value, detail) tuples.

    Returns:
        One row per event, sorted by step (stable).
    """
    frame = pd.DataFrame(events, columns=list(EVENT_COLUMNS))
    return frame.sort_values("step", kind="stable", ignore_index=True)
