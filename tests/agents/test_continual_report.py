"""The continual-learning report: bootstrap intervals over seeds, retention tables from
``results.json`` files, and the step a curve first reaches a return."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from agents.continual_report import (
    forgetting_markdown,
    mean_ci,
    plot_fine_tuning,
    read_sequences,
    steps_to,
)


def _results(folder, retention, tasks=("a", "b", "c")):
    folder.mkdir(parents=True)
    returns = np.arange(9.0).reshape(3, 3).tolist()
    found = {"tasks": list(tasks), "before": [0.0] * 3, "returns": returns, "retention": retention}
    (folder / "results.json").write_text(json.dumps(found))
    return folder


def test_the_interval_over_seeds_brackets_the_mean_and_shrinks_with_agreement():
    mean, low, high = mean_ci([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and 0.8 <= low < mean < high <= 1.0
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])


def test_retention_over_seeds(tmp_path):
    runs = [_results(tmp_path / f"s{i}", [r, 1.0, 1.0]) for i, r in enumerate([0.85, 0.95])]
    seq = read_sequences(runs)
    assert seq["retention"].shape == (2, 3) and seq["returns"][:, -1, -1].tolist() == [8.0, 8.0]
    table = forgetting_markdown({"reg": seq})
    assert "| reg | 2 | 0.90 [0.85, 0.95] (0.85 / 0.95) | 1.00 [1.00, 1.00]" in table
    other = _results(tmp_path / "other", [1.0] * 3, tasks=("x", "y", "z"))
    with pytest.raises(ValueError, match="learned tasks"):
        read_sequences([runs[0], other])
    with pytest.raises(ValueError, match="has not finished"):
        read_sequences([tmp_path / "missing"])


def test_steps_to_a_return_and_the_mean_curves(tmp_path):
    writer = SummaryWriter(str(tmp_path / "tb" / "run_1"))
    for step, value in [(100, -900.0), (200, -600.0), (300, -700.0), (400, -500.0)]:
        writer.add_scalar("eval/train_return", value, step)
    writer.close()
    assert steps_to(tmp_path, -650.0) == 200
    assert steps_to(tmp_path, -500.0) == 400
    assert steps_to(tmp_path, -400.0) is None
    assert steps_to(tmp_path, -400.0, tag="eval/nothing") is None
    png = plot_fine_tuning({"a": [tmp_path, tmp_path], "empty": [tmp_path / "none"]},
                           tmp_path / "curves.png")  # fmt: skip
    assert png.stat().st_size > 1000
