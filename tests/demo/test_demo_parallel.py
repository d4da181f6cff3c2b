"""The demo's side-by-side commands (`unime.demo.parallel`): what worker processes write equals what the same
stage calls write one after the other in this process, and a failing call is raised with its message."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from unime.demo.parallel import auto_jobs, run_parallel, threads_per_job
from unime.demo.stage_calls import run_stage_command


def test_jobs_and_threads_share_the_cores():
    assert auto_jobs("cpu", runs=4, cores=2) == 2
    assert auto_jobs("cpu", runs=1, cores=2) == 1       # one seed: nothing to run side by side
    assert auto_jobs("cpu", runs=4, cores=16) == 4      # at most one job per run
    assert auto_jobs("cuda", runs=4, cores=16) == 1     # one device: one command at a time
    assert threads_per_job(2, cores=2) == 1
    assert threads_per_job(4, cores=16) == 4
    assert threads_per_job(3, cores=2) == 1


def _train(model, world, out, seed):
    return ("train embedder", {"--model": model, "--records": world / "train" / "records.jsonl",
                               "--data-root": world, "--out": out, "--loss": "infonce", "--in-batch": True,
                               "--hard-negatives": 0, "--full": True, "--batch-size": 4, "--steps": 3,
                               "--lr": 0.001, "--warmup": 0.0, "--seed": seed, "--save-steps": 2,
                               "--device": "cpu"})


def test_two_training_runs_in_workers_equal_the_same_runs_in_process(tiny_model_dir, tiny_world_dir, tmp_path):
    model, world = tiny_model_dir("qwen2_vl"), tiny_world_dir(0)
    calls = {seed: _train(model, world, tmp_path / "workers" / f"s{seed}", seed) for seed in (0, 1)}
    run_parallel(list(calls.values()), jobs=2, threads=1)
    for seed in (0, 1):
        command, options = _train(model, world, tmp_path / "here" / f"s{seed}", seed)
        run_stage_command(command, options)  # in this process, one torch thread (conftest)
        apart = load_file(str(tmp_path / "workers" / f"s{seed}" / "merged" / "model.safetensors"))
        here = load_file(str(tmp_path / "here" / f"s{seed}" / "merged" / "model.safetensors"))
        assert apart.keys() == here.keys()
        assert all(apart[k].equal(here[k]) for k in here), f"seed {seed}: weights differ"
    s0 = load_file(str(tmp_path / "here" / "s0" / "merged" / "model.safetensors"))
    s1 = load_file(str(tmp_path / "here" / "s1" / "merged" / "model.safetensors"))
    assert not all(s0[k].equal(s1[k]) for k in s0)  # the two seeds did train differently


def test_a_failing_call_is_raised_with_its_message(tiny_model_dir, tiny_world_dir, tmp_path):
    from unime.errors import UnimeError

    model, world = tiny_model_dir("qwen2_vl"), tiny_world_dir(0)
    good = _train(model, world, tmp_path / "good", 0)
    bad_command, bad = _train(model, world, tmp_path / "bad", 1)
    bad = {**bad, "--records": tmp_path / "missing.jsonl"}
    with pytest.raises(UnimeError, match="missing.jsonl"):
        run_parallel([good, (bad_command, bad)], jobs=2, threads=1)
    assert (tmp_path / "good" / "merged").is_dir()  # the call already running finished its work
