"""t-interval over seeds and the paired stratified bootstrap over eval queries, against hand-computed
values and scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from unime.eval.significance import (bootstrap_replicates, mean_over_seeds, paired_bootstrap, per_query_hits,
                                     t_interval)


def test_t_interval_by_hand_and_scipy():
    # mean 0.25, s = sqrt(((.15)^2 + (.05)^2) * 2 / 3) = 0.129099, t_{0.975, 3} = 3.182446
    mean, half = t_interval([0.1, 0.2, 0.3, 0.4])
    assert mean == pytest.approx(0.25)
    assert half == pytest.approx(3.182446 * 0.1290994 / 2, rel=1e-5)
    stats = pytest.importorskip("scipy.stats")
    v = [0.31, 0.35, 0.29, 0.40, 0.33]
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    mean, half = t_interval(v)
    assert (mean - half, mean + half) == pytest.approx((lo, hi), rel=1e-10)
    assert t_interval([0.5])[0] == 0.5 and math.isnan(t_interval([0.5])[1])


def test_bootstrap_one_task_matches_scipy_percentile_interval():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    a = (rng.random(200) < 0.6).astype(float)
    b = (rng.random(200) < 0.5).astype(float)
    ids = [f"q{i}" for i in range(200)]
    res = paired_bootstrap({"t": dict(zip(ids, a))}, {"t": dict(zip(ids, b))}, n_resamples=20_000, seed=1)
    ref = stats.bootstrap((a - b,), np.mean, method="percentile", n_resamples=20_000, confidence_level=0.95,
                          random_state=np.random.default_rng(2)).confidence_interval
    assert res["diff"] == pytest.approx((a - b).mean())
    assert res["low"] == pytest.approx(ref.low, abs=0.01) and res["high"] == pytest.approx(ref.high, abs=0.01)
    assert res["significant"] == (ref.low > 0 or ref.high < 0)


def test_bootstrap_stratified_mean_and_variance_are_the_exact_ones():
    # replicate = mean over tasks of a resampled task mean: E = observed statistic,
    # Var = (1/T^2) * sum_t pop_var(d_t) / n_t (independent resampling per task)
    diffs = {"a": np.array([1.0, 0.0, 0.0, -1.0]), "b": np.array([1.0, 1.0, 0.0]), "c": np.array([0.0, 1.0])}
    reps = bootstrap_replicates(diffs, n_resamples=200_000, seed=0)
    exact_mean = np.mean([d.mean() for d in diffs.values()])
    exact_var = sum(d.var() / len(d) for d in diffs.values()) / 9
    assert reps.mean() == pytest.approx(exact_mean, abs=3e-3)
    assert reps.var() == pytest.approx(exact_var, rel=0.02)


def test_bootstrap_pairs_by_query_id_and_flags_significance():
    ids = [f"q{i}" for i in range(50)]
    better = {"t1": {q: 1.0 for q in ids}, "t2": {q: float(i % 2) for i, q in enumerate(ids)}}
    worse = {"t1": {q: 0.0 for q in reversed(ids)}, "t2": {q: float(i % 2) for i, q in enumerate(ids)}}
    res = paired_bootstrap(better, worse, n_resamples=2000)
    # t1: every query +1; t2: identical → overall difference 0.5 exactly, every replicate 0.5
    assert res["diff"] == 0.5 and res["low"] == 0.5 and res["high"] == 0.5
    assert res["significant"] and res["p_value"] == 0.0 and res["queries"] == 100
    same = paired_bootstrap(better, better, n_resamples=500)
    assert same["diff"] == 0 and not same["significant"] and same["p_value"] == 1.0
    # a task only one side has is left out; so are queries only one side has
    partial = paired_bootstrap({**better, "t3": {"x": 1.0}}, {"t1": {"q0": 0.0}}, n_resamples=100)
    assert partial["tasks"] == 1 and partial["queries"] == 1 and partial["diff"] == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap({"t1": {"a": 1.0}}, {"t2": {"a": 1.0}})


def test_per_query_hits_and_mean_over_seeds(tmp_path):
    def run(name, hits):
        root = tmp_path / name
        (root / "tasks").mkdir(parents=True)
        info = {"colour cls": {"format": "mmeb"}, "scene_captions": {"format": "retrieval"}}
        (root / "summary.json").write_text(json.dumps({"task_info": info}))
        (root / "tasks" / "colour_cls.json").write_text(json.dumps(
            {"per_query": [{"id": i, "top1": 0 if h else 2, "hit": h} for i, h in enumerate(hits)]}))
        return root

    h0 = per_query_hits(run("s0", [True, False, True]))
    h1 = per_query_hits(run("s1", [True, True, False]))
    assert h0 == {"colour cls": {"0": 1.0, "1": 0.0, "2": 1.0}}  # retrieval tasks are not in MMEB overall
    assert mean_over_seeds([h0, h1]) == {"colour cls": {"0": 1.0, "1": 0.5, "2": 0.5}}
