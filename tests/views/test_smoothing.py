"""Smoothing: TensorBoard's debiased exponential moving average, on the dashboard and in the
static summary."""

import numpy as np
import pytest

from lmwidget.views.smoothing import check_weight, ema


def test_the_average_is_debiased_and_keeps_gaps():
    y = np.array([4.0, 4.0, np.nan, 4.0, 2.0])
    out = ema(y, 0.6)
    assert out[:2] == pytest.approx([4.0, 4.0])  # debiased: no pull towards 0 at the start
    assert np.isnan(out[2])  # a gap stays a gap, and does not reset the average
    assert out[3] == pytest.approx(4.0) and 2.0 < out[4] < 4.0
    assert list(ema(y, 0.0)[[0, 1, 3, 4]]) == [4.0, 4.0, 4.0, 2.0]  # weight 0: the curve itself


def test_a_spike_is_damped_by_more_weight():
    y = np.ones(200)
    y[100] = 50.0
    assert ema(y, 0.9).max() < ema(y, 0.6).max() < 50.0 and ema(y, 0.9)[199] == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 5])
def test_weights_outside_0_to_0_99_are_refused(bad):
    with pytest.raises(ValueError, match=r"smoothing must be between 0 and 0.99; got"):
        check_weight(bad)
