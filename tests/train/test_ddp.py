"""Data parallelism: `torchrun` with 2 processes (gloo, CPU) trains exactly like 1 process on the same
global batch — same losses, same gradient norms, same weights after SGD steps (weight change =
-lr × gradient, so equal weights mean equal gradients). The embedder (its in-batch terms over the gathered
batch) and the judge (full fine-tuning, pairwise + within-record group loss)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import HARD_NEGATIVES as K

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _common(model: str, records: Path, world: Path, loss: str, steps: int, grad_accum: int) -> list[str]:
    return ["--model", model, "--records", str(records), "--data-root", str(world), "--loss", loss,
            "--hard-negatives", str(K), "--optim", "sgd", "--lr", "0.05", "--max-grad-norm", "0", "--warmup", "0",
            "--steps", str(steps), "--grad-accum", str(grad_accum), "--lora-r", "8", "--lora-dropout", "0",
            "--logging-steps", "1", "--device", "cpu", "--seed", "3"]


def _torchrun(args: list[str], log: Path, command: str = "embedder", succeeds: bool = True,
              program: Path | None = None) -> str:
    """`torchrun --nproc-per-node 2 $(which unime) train COMMAND ...`, the documented launch (or `program` in place of
    `unime`); its output."""
    unime = program or Path(sys.executable).parent / "unime"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(unime), "train", command, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=600)
    assert (proc.returncode == 0) == succeeds, log.read_text()[-4000:]
    return log.read_text()


def _compare(one: Path, two: Path, steps: int) -> None:
    from safetensors.torch import load_file

    from unime.models.curves import read_curves_csv

    c1, c2 = read_curves_csv(one / "curves.csv"), read_curves_csv(two / "curves.csv")
    assert [r["step"] for r in c1] == [r["step"] for r in c2] == list(range(1, steps + 1))
    for r1, r2 in zip(c1, c2):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
        # the norm sums every gradient: the all-reduce's summation order moves it by ~1e-5 (CI: 376.7112 vs 376.7159)
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-4)
        assert r1["grad_norm"] > 0
    a = load_file(one / "adapter" / "adapter_model.safetensors")
    b = load_file(two / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        # float summation order differs between one and two processes (all-reduce)
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    # B starts at 0: the steps moved it, by far more than the tolerance above
    assert all(float(a[k].abs().max()) > 1e-4 for k in a if "lora_B" in k)


@pytest.fixture(scope="module")
def ddp_data(mined_world, tmp_path_factory):
    from unime.data.io import read_records, write_records

    world, path = mined_world
    records = read_records(path)[::4][:16]  # 16 records from all datasets
    out = tmp_path_factory.mktemp("ddp") / "records.jsonl"
    write_records(records, out)
    return world, out


def test_two_processes_with_gradcache_and_accumulation_match_one(tiny_model_dir, ddp_data, tmp_path):
    """In-batch InfoNCE with hard negatives couples the whole global batch, so the embeddings must be
    all-gathered (with gradient) across processes. 2 processes × 2 queries with GradCache (chunks of 3
    items) and 2 accumulation steps vs 1 process × 4 queries, plain forward, 2 accumulation steps."""
    from unime.cli import main

    world, records = ddp_data
    common = _common(tiny_model_dir("qwen2_vl"), records, world, "infonce", steps=2, grad_accum=2)
    _torchrun(common + ["--batch-size", "2", "--gradcache", "--chunk-size", "3", "--save-steps", "1",
                        "--out", str(tmp_path / "two")], tmp_path / "two.log")
    assert main(["train", "embedder", *common, "--batch-size", "4", "--out", str(tmp_path / "one")]) == 0
    _compare(tmp_path / "one", tmp_path / "two", steps=2)
    # rank 0 wrote resumable checkpoints
    assert (tmp_path / "two" / "checkpoints" / "checkpoint-1" / "trainer_state.json").is_file()
    assert (tmp_path / "two" / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").is_file()


def test_two_processes_plain_symmetric_kl_match_one(tiny_model_dir, ddp_data, tmp_path):
    """The released loss (no in-batch terms) without GradCache: DDP's gradient averaging and the
    world-size scaling of the gathered slice give the gradient of the global-batch mean."""
    from unime.cli import main

    world, records = ddp_data
    common = _common(tiny_model_dir("qwen2_vl"), records, world, "symmetric_kl", steps=2, grad_accum=1)
    _torchrun(common + ["--batch-size", "2", "--out", str(tmp_path / "two")], tmp_path / "two.log")
    assert main(["train", "embedder", *common, "--batch-size", "4", "--out", str(tmp_path / "one")]) == 0
    _compare(tmp_path / "one", tmp_path / "two", steps=2)


def _generative_run(command: str, model: str, world: Path, records: Path, extra: list[str], tmp_path: Path,
                    parts: tuple[str, ...], two_extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """`unime train COMMAND` on 2 torchrun processes × 1 record a step (with `two_extra` too) and on 1 process × 2
    records (SGD, 3 steps), their curves compared: the same loss, both parts (logged over both processes' batches)
    and gradient norm at every step, the loss the sum of the parts. Returns the two output folders."""
    from unime.cli import main
    from unime.models.curves import read_curves_csv

    common = ["--model", model, "--records", str(records), "--data-root", str(world), *extra, "--lr", "0.05",
              "--warmup", "0", "--steps", "3", "--logging-steps", "1", "--save-steps", "10", "--seed", "3",
              "--device", "cpu", "--trainer-arg", "optim=sgd", "--trainer-arg", "max_grad_norm=0"]
    one, two = tmp_path / "one", tmp_path / "two"
    _torchrun(common + [*two_extra, "--batch-size", "1", "--out", str(two)], tmp_path / "two.log", command=command)
    assert main(["train", command, *common, "--batch-size", "2", "--out", str(one)]) == 0
    c1, c2 = read_curves_csv(one / "curves.csv"), read_curves_csv(two / "curves.csv")
    assert [r["step"] for r in c1] == [r["step"] for r in c2] == [1, 2, 3]
    for r1, r2 in zip(c1, c2):
        for key in ("loss", *(f"loss_{p}" for p in parts), "grad_norm"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), key
        assert r1["loss"] == pytest.approx(sum(r1[f"loss_{p}"] for p in parts), rel=1e-4)
    return one, two


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:  # float summation order differs between one and two processes (all-reduce)
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_two_processes_train_the_judge_like_one(tiny_model_dir, ddp_data, tmp_path):
    """The judge's full fine-tuning (`unime train judge --full`, the demo's judge pretraining) with the group loss
    over each record's pairs. The same records in the same order (accelerate shards the one seeded order batch by
    batch), the same losses and the same weights after SGD steps."""
    from safetensors.torch import load_file

    world, records = ddp_data
    model = tiny_model_dir("qwen2_vl")
    one, two = _generative_run("judge", model, world, records, ["--full", "--judge-negatives", "3", "--group-weight",
                                                                "1.0", "--holdout", "0"], tmp_path, ("pair", "group"))
    a, b = load_file(one / "merged" / "model.safetensors"), load_file(two / "merged" / "model.safetensors")
    _same_weights(a, b)
    base = load_file(Path(model) / "model.safetensors")
    moved = max(float((a[k] - base[k]).abs().max()) for k in a if k in base)
    assert moved > 1e-3  # the steps moved the weights by far more than the tolerance


def test_two_processes_train_the_reranker_like_one(tiny_model_dir, ddp_data, tmp_path):
    """The reranker (LoRA, pairwise + listwise: two forwards a step meeting one backward): the same losses and
    adapter weights after SGD steps."""
    from safetensors.torch import load_file

    world, records = ddp_data
    one, two = _generative_run("reranker", tiny_model_dir("qwen2_vl"), world, records,
                               ["--lora-r", "8", "--lora-dropout", "0"], tmp_path, ("pair", "list"))
    a = load_file(one / "adapter" / "adapter_model.safetensors")
    _same_weights(a, load_file(two / "adapter" / "adapter_model.safetensors"))
    assert all(float(a[k].abs().max()) > 1e-4 for k in a if "lora_B" in k)  # B starts at 0: the steps moved it


def test_two_processes_with_gradient_checkpointing_train_the_vision_lora_embedder_like_one_without(tiny_model_dir,
                                                                                                   ddp_data, tmp_path):
    """--lora-vision (LoRA in the vision tower too; DDP looks for unused parameters) with --gradient-checkpointing
    on 2 processes (GradCache) trains the losses, gradient norms and adapter weights of 1 process without
    checkpointing; the vision tower's LoRA moved."""
    from safetensors.torch import load_file

    from unime.cli import main

    world, records = ddp_data
    common = _common(tiny_model_dir("qwen2_vl"), records, world, "infonce", steps=2, grad_accum=1) + \
        ["--lora-vision", "--lora-targets", "q_proj,v_proj,qkv,fc1"]
    _torchrun(common + ["--batch-size", "2", "--gradcache", "--chunk-size", "3", "--gradient-checkpointing",
                        "--out", str(tmp_path / "two")], tmp_path / "two.log")
    assert main(["train", "embedder", *common, "--batch-size", "4", "--out", str(tmp_path / "one")]) == 0
    _compare(tmp_path / "one", tmp_path / "two", steps=2)
    for out, on in (("one", False), ("two", True)):
        assert json.loads((tmp_path / out / "train_config.json").read_text())["gradient_checkpointing"] is on
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    vision_b = [k for k in a if ".visual." in k and "lora_B" in k]
    assert vision_b and all(float(a[k].abs().max()) > 1e-4 for k in vision_b)


@pytest.mark.parametrize("mode", ["full", "lora_vision"])
def test_two_processes_with_gradient_checkpointing_train_the_reranker_like_one_without(tiny_model_dir, ddp_data,
                                                                                       tmp_path, mode):
    """The reranker with --full (every parameter; DDP looks for unused parameters) and with --lora-vision, with
    --gradient-checkpointing on 2 processes: the losses and weights of 1 process without checkpointing; the vision
    tower's trained tensors moved."""
    from safetensors.torch import load_file

    world, records = ddp_data
    model = tiny_model_dir("qwen2_vl")
    extra = ["--full"] if mode == "full" else \
        ["--lora-r", "8", "--lora-dropout", "0", "--lora-vision", "--lora-targets", "q_proj,v_proj,qkv,fc1"]
    one, two = _generative_run("reranker", model, world, records, extra, tmp_path, ("pair", "list"),
                               two_extra=("--gradient-checkpointing",))
    for out, on in ((one, False), (two, True)):
        assert json.loads((out / "train_config.json").read_text())["gradient_checkpointing"] is on
    name = "merged/model.safetensors" if mode == "full" else "adapter/adapter_model.safetensors"
    a = load_file(one / name)
    _same_weights(a, load_file(two / name))
    vision = [k for k in a if ".visual." in k or k.startswith("visual.")]
    if mode == "full":
        base = load_file(Path(model) / "model.safetensors")
        assert vision and sum(float((a[k] - base[k]).abs().max()) > 1e-4 for k in vision) > len(vision) // 2
    else:
        vision_b = [k for k in vision if "lora_B" in k]
        assert vision_b and all(float(a[k].abs().max()) > 1e-4 for k in vision_b)

def test_a_bad_record_in_one_process_ends_every_process_with_one_line(tiny_model_dir, ddp_data, tmp_path):
    """A record past the image preflight whose image is truncated fails in one process during training: that
    process prints its error on a line of its own (not glued onto the progress bar), and the other, whose
    collective fails on the lost connection, prints one line naming the failed process and its error
    (`unime.process_group.sharing_failures`) instead of the transport's traceback."""
    import re
    import shutil

    from unime.data.io import read_records, write_records
    from unime.train.embedder_trainer import IMAGE_PREFLIGHT

    world, records = ddp_data
    root = tmp_path / "world"
    shutil.copytree(world, root)
    good = read_records(records)
    rows = [dataclasses.replace(good[i % len(good)], id=f"r{i}") for i in range(IMAGE_PREFLIGHT + 1)]
    png = (root / rows[-1].query.images[0]).read_bytes()
    (root / "images" / "truncated.png").write_bytes(png[:len(png) // 2])
    bad_query = dataclasses.replace(rows[-1].query, images=("images/truncated.png",))
    rows[-1] = dataclasses.replace(rows[-1], query=bad_query)
    write_records(rows, tmp_path / "bad.jsonl")
    steps = -(-len(rows) // 4)  # one epoch: 2 processes x 2 records a step
    common = _common(tiny_model_dir("qwen2_vl"), tmp_path / "bad.jsonl", root, "symmetric_kl", steps, grad_accum=1)
    log = _torchrun(common + ["--batch-size", "2", "--out", str(tmp_path / "two")], tmp_path / "two.log",
                    succeeds=False)
    errors = [line for line in log.splitlines() if "unime: error:" in line]
    cause = f"{tmp_path / 'bad.jsonl'}, record line {len(rows)} (id r{len(rows) - 1}), field 'query.images[0]': " \
            "corrupt image images/truncated.png: image file is truncated"
    own = [line for line in errors if line == f"unime: error: {cause}"]
    named = [line for line in errors if re.fullmatch(rf"unime: error: process \d of 2 failed: DataError: "
                                                      rf"{re.escape(cause)}", line)]
    # the other process prints its line when its collective fails first; torchrun may SIGTERM it before that
    # (a loaded machine: its agent sees the failed process's exit first), and then it prints nothing at all
    terminated = re.search(r"exitcode\s*: -15 .*\(SIGTERM\)", log) is not None
    assert len(own) == 1 and (len(named) == 1 or terminated and not named), log[-4000:]
    assert len(errors) == len(own) + len(named), errors
    assert "Connection closed by peer" not in log and not re.search(r"\[rank\d\]: Traceback", log)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_two_processes_train_the_reasoner_sft_like_one(tiny_model_dir, ddp_data, tmp_path, checkpointing):
    """`unime train reasoner --stage sft` under torchrun (each process used to claim the output folder, and the
    second was refused: the folder in use by its sibling): full fine-tuning on T-CoTs, 2 processes × 1 T-CoT a
    step and 1 process × 2 (SGD, 3 steps) log the same losses and end with the same weights; the main process
    wrote the run's outputs. Also with --gradient-checkpointing on the 2 processes only (the vision tower trained,
    its blocks checkpointed): the losses and weights of the 1 process without it."""
    from safetensors.torch import load_file

    from unime.cli import main
    from unime.models.curves import read_curves_csv

    world, _ = ddp_data
    tcots = tmp_path / "tcots.jsonl"
    assert main(["reason", "teacher", "--world", str(world), "--out", str(tcots)]) == 0
    model = tiny_model_dir("qwen2_vl")
    common = ["--stage", "sft", "--model", model, "--tcots", str(tcots), "--data-root", str(world), "--lora-r", "0",
              "--lr", "0.05", "--max-steps", "3", "--logging-steps", "1", "--save-steps", "10", "--seed", "3",
              "--device", "cpu", "--trainer-arg", "optim=sgd", "--trainer-arg", "max_grad_norm=0"]
    one, two = tmp_path / "one", tmp_path / "two"
    _torchrun(common + ["--batch-size", "1", "--out", str(two), *(["--gradient-checkpointing"] * checkpointing)],
              tmp_path / "two.log", command="reasoner")
    assert main(["train", "reasoner", *common, "--batch-size", "2", "--out", str(one)]) == 0
    assert json.loads((two / "train_config.json").read_text())["gradient_checkpointing"] is checkpointing
    c1, c2 = read_curves_csv(one / "curves.csv"), read_curves_csv(two / "curves.csv")
    assert [r["step"] for r in c1] == [r["step"] for r in c2] == [1, 2, 3]
    for r1, r2 in zip(c1, c2):
        for key in ("loss", "grad_norm", "num_tokens"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), key
    assert json.loads((two / "sft_summary.json").read_text())["steps"] == 3
    a, b = load_file(one / "merged" / "model.safetensors"), load_file(two / "merged" / "model.safetensors")
    _same_weights(a, b)
    base = load_file(Path(model) / "model.safetensors")
    assert max(float((a[k] - base[k]).abs().max()) for k in a if k in base) > 1e-3  # the steps moved the weights


def test_two_processes_run_grpo(tiny_model_dir, ddp_data, tmp_path):
    """`unime train reasoner --stage grpo` under torchrun (each process used to claim the output folder, and the
    second was refused): 2 steps, the main process writes the reward log and the finished run."""
    import csv
    import json

    from unime.models.prompts import EMB_TOKEN

    world, records = ddp_data
    out = tmp_path / "grpo"
    _torchrun(["--stage", "grpo", "--model", tiny_model_dir("qwen2_vl"), "--records", str(records),
               "--embedder", tiny_model_dir("qwen2_vl", (EMB_TOKEN,)), "--data-root", str(world), "--max-steps", "2",
               "--max-completion-length", "12", "--device", "cpu", "--out", str(out)], tmp_path / "grpo.log",
              command="reasoner")
    assert json.loads((out / "grpo_summary.json").read_text())["steps"] == 2
    with open(out / "reward_log.csv") as fh:
        assert [int(float(r["step"])) for r in csv.DictReader(fh)] == [1, 2]
    assert (out / "merged" / "config.json").is_file()



def _counting_unime(path: Path, counts: Path) -> Path:
    """A `unime` launcher at `path` that counts the activation checkpoints transformers takes in its process, by layer
    class (`tests.train.helpers.count_checkpointed_layers`), and writes them to COUNTS/rankRANK.json as it ends."""
    counts.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""import collections, json, os, sys
import transformers.modeling_utils as modeling_utils
calls, real = collections.Counter(), modeling_utils.checkpoint
def counting(function, *args, **kwargs):
    calls[type(function.args[0]).__name__] += 1
    return real(function, *args, **kwargs)
modeling_utils.checkpoint = counting
from unime.cli import main
code = main()
with open(os.path.join({str(counts)!r}, "rank" + os.environ["RANK"] + ".json"), "w") as fh:
    json.dump(calls, fh)
sys.exit(code)
""")
    return path


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_processes_run_grpo_with_gradient_checkpointing_like_without(tiny_model_dir, ddp_data, tmp_path, mode):
    """`unime train reasoner --stage grpo --gradient-checkpointing` under torchrun (2 processes, DDP; never run
    before), in full fine-tuning (GRPO's default, the vision tower trained too) and with LoRA (the vision tower
    frozen): 2 SGD steps with the same seed with and without checkpointing. Both finish, train_config.json records
    the setting, each process checkpointed the policy's decoder layers in its loss forwards (none without the option),
    the reward log has the same rewards at every step (the same generations) and the trained weights are equal (the
    same loss and gradients), moved from the starting weights: most of the vision tower's tensors, some by far more
    than the tolerance (full); every LoRA B, which starts at 0 (LoRA)."""
    import csv

    from safetensors.torch import load_file
    from transformers import AutoConfig

    from tests.train.helpers import assert_same_weights_and_vision_trained
    from unime.models.prompts import EMB_TOKEN

    world, records = ddp_data
    model = tiny_model_dir("qwen2_vl")
    own = ["--lr", "0.05"] if mode == "full" else ["--lora-r", "4", "--lora-dropout", "0", "--lr", "0.5"]
    common = ["--stage", "grpo", "--model", model, "--records", str(records),
              "--embedder", tiny_model_dir("qwen2_vl", (EMB_TOKEN,)), "--data-root", str(world), "--max-steps", "2",
              "--max-completion-length", "12", "--weights", "0.05,0.8,0", "--seed", "3", "--trainer-arg", "optim=sgd",
              "--trainer-arg", "max_grad_norm=0", "--device", "cpu", *own]
    weights = "merged/model.safetensors" if mode == "full" else "adapter/adapter_model.safetensors"
    runs = {}
    for on in (False, True):
        out, counts = tmp_path / str(on), tmp_path / f"counts-{on}"
        _torchrun(common + ["--out", str(out), *(["--gradient-checkpointing"] * on)], tmp_path / f"{on}.log",
                  command="reasoner", program=_counting_unime(tmp_path / f"unime-{on}.py", counts))
        assert json.loads((out / "grpo_summary.json").read_text())["steps"] == 2
        assert json.loads((out / "train_config.json").read_text())["gradient_checkpointing"] is on
        with open(out / "reward_log.csv") as fh:
            rewards = list(csv.DictReader(fh))
        calls = [json.loads((counts / f"rank{rank}.json").read_text()) for rank in (0, 1)]
        runs[on] = (calls, rewards, load_file(out / weights))
    (off_calls, off_rewards, off_weights), (on_calls, on_rewards, on_weights) = runs[False], runs[True]
    layers = AutoConfig.from_pretrained(model).text_config.num_hidden_layers
    assert off_calls == [{}, {}]
    for calls in on_calls:  # 2 steps, one loss forward each
        assert calls["Qwen2VLDecoderLayer"] == 2 * layers
    assert [int(float(r["step"])) for r in off_rewards] == [1, 2]
    assert on_rewards == off_rewards
    if mode == "full":
        assert_same_weights_and_vision_trained(on_weights, off_weights, model, "full")
        base = load_file(Path(model) / "model.safetensors")
        assert max(float((off_weights[k] - base[k]).abs().max()) for k in base) > 1e-3
    else:
        _same_weights(off_weights, on_weights)
        lora_b = [k for k in off_weights if "lora_B" in k]
        assert lora_b and all(float(off_weights[k].abs().max()) > 1e-4 for k in lora_b)

def test_an_interrupted_global_batch_run_continues_on_another_number_of_processes(tiny_model_dir, ddp_data, tmp_path):
    """`--global-batch 4` on 2 processes (1 query × 2 accumulation steps each), interrupted after step 2, continued on
    1 process (2 queries × 2): train_config.json recorded the per-device batch (1), the continuation derives 2, and
    it was refused as changed options (batch_size: 1 -> 2). The Trainer's seeded order and its skip on resume count
    global batches, so the continued run has the losses and weights of the uninterrupted one."""
    import json
    import shutil

    from safetensors.torch import load_file

    from unime.cli import main
    from unime.models.curves import read_curves_csv

    world, records = ddp_data
    common = _common(tiny_model_dir("qwen2_vl"), records, world, "infonce", steps=4, grad_accum=2) + \
        ["--global-batch", "4", "--save-steps", "1"]
    run = tmp_path / "run"
    _torchrun(common + ["--out", str(run)], tmp_path / "two.log")
    assert json.loads((run / "train_config.json").read_text())["batch_size"] == 1
    straight = load_file(run / "adapter" / "adapter_model.safetensors")
    straight_curves = read_curves_csv(run / "curves.csv")
    # the state a kill after step 2 leaves
    for name in ("checkpoints/checkpoint-3", "checkpoints/checkpoint-4", "adapter", "merged"):
        shutil.rmtree(run / name)
    for name in ("README.md", "metrics.json", "curves.csv"):
        (run / name).unlink()
    assert main(["train", "embedder", *common, "--out", str(run)]) == 0
    assert json.loads((run / "train_config.json").read_text())["batch_size"] == 2
    curves = read_curves_csv(run / "curves.csv")
    assert [r["step"] for r in curves] == [r["step"] for r in straight_curves] == [1, 2, 3, 4]
    for r1, r2 in zip(straight_curves, curves):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
        # the norm sums every gradient: the all-reduce's summation order moves it by ~1e-5 (CI: 376.7112 vs 376.7159)
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-4)
    _same_weights(straight, load_file(run / "adapter" / "adapter_model.safetensors"))


def test_epochs_with_dataloader_drop_last_train_like_one_process(tiny_model_dir, ddp_data, tmp_path):
    """README (multi-GPU): under several processes accelerate pads an epoch's last short batch with records from the
    epoch's start; `--trainer-arg dataloader_drop_last=true` drops it on any number of processes, so 2 processes
    train like 1 under --epochs: 16 records, global batch 6 -> 2 steps (4 records left out) either way."""
    from unime.cli import main

    world, records = ddp_data
    common = _common(tiny_model_dir("qwen2_vl"), records, world, "infonce", steps=1, grad_accum=1)
    at = common.index("--steps")
    common = common[:at] + ["--epochs", "1"] + common[at + 2:] + ["--global-batch", "6", "--trainer-arg",
                                                                   "dataloader_drop_last=true"]
    _torchrun(common + ["--out", str(tmp_path / "two")], tmp_path / "two.log")
    assert main(["train", "embedder", *common, "--out", str(tmp_path / "one")]) == 0
    _compare(tmp_path / "one", tmp_path / "two", steps=2)
