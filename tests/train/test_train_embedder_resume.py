"""Kill and resume: a run SIGKILLed mid-training and resumed with --resume ends with the same weights
(and the same loss curve) as an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.conftest import HARD_NEGATIVES as K

pytestmark = pytest.mark.slow

STEPS, SAVE_EVERY = 24, 3  # 4 batches per epoch: checkpoints fall mid-epoch and at epoch ends


def _args(model: str, records: Path, world: Path, out: Path) -> list[str]:
    # dropout on (the RNG state must be restored), GradCache (its RNG replay must not disturb the
    # stream), homogeneous batches (the sampler's epoch must be restored), AdamW + linear schedule
    return ["train", "embedder", "--model", model, "--records", str(records), "--data-root", str(world),
            "--out", str(out), "--loss", "symmetric_kl", "--hard-negatives", str(K), "--batch-size", "2",
            "--steps", str(STEPS), "--save-steps", str(SAVE_EVERY), "--logging-steps", "1", "--lr", "1e-3",
            "--warmup", "0.1", "--lora-r", "8", "--lora-dropout", "0.1", "--gradcache", "--chunk-size", "3",
            "--homogeneous-batches", "--device", "cpu", "--seed", "7"]


def _unime(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([str(Path(sys.executable).parent / "unime"), *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env)


@pytest.fixture(scope="module")
def resume_records(mined_world, tmp_path_factory):
    from unime.data.io import read_records, write_records

    world, path = mined_world
    records = read_records(path)
    picked = []
    for name in ("shape_cls", "colour_cls", "t2i", "i2t"):  # 2 records of 4 datasets → 4 homogeneous batches
        picked += [r for r in records if r.dataset == name][:2]
    out = tmp_path_factory.mktemp("resume") / "records.jsonl"
    write_records(picked, out)
    return world, out


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tiny_model_dir, resume_records, tmp_path):
    from safetensors.torch import load_file

    from unime.cli import main
    from unime.models.run_state import last_complete_checkpoint
    from unime.models.curves import read_curves_csv

    world, records = resume_records
    model = tiny_model_dir("qwen2_vl")

    # 1. a run killed with SIGKILL once a mid-epoch checkpoint is complete
    killed = tmp_path / "killed"
    proc = _unime(_args(model, records, world, killed), tmp_path / "killed.log")
    marker = killed / "checkpoints" / "checkpoint-9" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not marker.is_file():
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint-9 within 300 s"
        time.sleep(0.02)
    assert proc.poll() is None  # still training when killed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "merged").exists()
    done = [int(last_complete_checkpoint(killed / "checkpoints").name.split("-")[1])]
    assert 9 <= max(done) < STEPS

    # 2. resume it to the end
    resumed = _unime(_args(model, records, world, killed) + ["--resume"], tmp_path / "resumed.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    latest = killed / "checkpoints" / f"checkpoint-{max(done)}"
    assert f"resuming from {latest}" in (tmp_path / "resumed.log").read_text()

    # 3. the same run without interruption (in this process)
    assert main(_args(model, records, world, tmp_path / "straight")) == 0  # one thread (conftest)

    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    straight = read_curves_csv(tmp_path / "straight" / "curves.csv")
    again = read_curves_csv(killed / "curves.csv")
    assert [r["step"] for r in again] == [r["step"] for r in straight] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in straight], rel=1e-6)
    # it trained (the equality above is not that of two untouched models): LoRA's B matrices start at zero.
    # (Not "the last loss < the first": at batch 2 with dropout the per-batch loss swings 0.3-9; which of
    # the two ends higher changes with the seed.)
    lora_b = [key for key in a if "lora_B" in key]
    assert lora_b and all(float(a[key].abs().max()) > 0 for key in lora_b)


def fake_checkpoint(folder: Path, step: int, *, weights: str = "adapter_model.safetensors") -> Path:
    """A checkpoint folder with every file the Trainer writes (real formats, tiny contents)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(folder / weights))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"step": step, "state": torch.ones(8)}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def fake_deepspeed_checkpoint(folder: Path, step: int, *, processes: int = 1, bf16: bool = True) -> Path:
    """A checkpoint folder as transformers (5.25) writes it under DeepSpeed ZeRO-1/2, with tiny real torch files.

    transformers/trainer.py `_save_checkpoint`: weights by `save_model` (l. 3421; under DeepSpeed `_save` with the
    engine's state dict, l. 4153-4165: here unime's own weights file), then `_save_optimizer_and_scheduler` (l. 3444),
    whose DeepSpeed branch calls `self.model_wrapped.save_checkpoint(output_dir)` (l. 3596-3605) and writes no
    `optimizer.pt`; `scheduler.pt` only if the LR scheduler is not DeepSpeed's wrapper (l. 3619-3628), which it is
    unless the DeepSpeed config leaves the scheduler to the Trainer; `rng_state.pth`, or `rng_state_{process}.pth`
    per process when there are several (l. 3560-3563); `trainer_state.json` last (l. 3461). DeepSpeed's
    `save_checkpoint` writes `global_step{N}/mp_rank_00_model_states.pt` and one
    `[bf16_]zero_pp_rank_{rank}_mp_rank_00_optim_states.pt` per data-parallel rank, then `latest` holding the tag
    `global_step{N}` (transformers' tests/deepspeed/test_deepspeed.py `check_saved_checkpoints_deepspeed` checks
    these names: `mp_rank_00_model_states.pt`, `bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt`); a resume loads it
    through `deepspeed_load_checkpoint` (integrations/deepspeed.py l. 682-703: `global_step*` folders, the engine's
    `load_checkpoint`, which reads `latest`), not `optimizer.pt` / `scheduler.pt` (trainer.py l. 3943-3952)."""
    from unime.models.run_state import FULL_STATE_FILE

    fake_checkpoint(folder, step, weights=FULL_STATE_FILE)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).unlink()
    for rank in range(processes):
        torch.save({"cpu": torch.ones(4)}, folder / ("rng_state.pth" if processes == 1 else f"rng_state_{rank}.pth"))
    tag = folder / f"global_step{step}"
    tag.mkdir()
    torch.save({"module": {"w": torch.ones(4)}, "lr_scheduler": {"last_epoch": step}, "global_steps": step},
               tag / "mp_rank_00_model_states.pt")
    for rank in range(processes):
        torch.save({"optimizer_state_dict": {"exp_avg": torch.ones(4)}},
                   tag / f"{'bf16_' if bf16 else ''}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (folder / "latest").write_text(f"global_step{step}")
    return folder


def test_a_deepspeed_checkpoint_is_complete_by_deepspeed_s_files_and_a_partial_one_is_skipped(tmp_path, caplog):
    """Under DeepSpeed ZeRO-1/2 the optimizer (and usually the scheduler) state is DeepSpeed's `latest` +
    `global_stepN/`, not `optimizer.pt` / `scheduler.pt`: such a checkpoint is resumed from (it counted as incomplete,
    and a re-run started again from step 1); one whose DeepSpeed state is partial is not."""
    from unime.models.run_state import checkpoint_problem, last_complete_checkpoint

    root = tmp_path / "checkpoints"
    one = fake_deepspeed_checkpoint(root / "checkpoint-2", 2)
    two = fake_deepspeed_checkpoint(root / "checkpoint-4", 4, processes=2, bf16=False)
    assert checkpoint_problem(one) is None and checkpoint_problem(two) is None
    # the Trainer's own scheduler (the DeepSpeed config has none): its scheduler.pt is checked like any torch file
    (one / "scheduler.pt").write_bytes(b"PK\x03\x04 cut")
    assert checkpoint_problem(one).startswith("scheduler.pt unreadable")
    (one / "scheduler.pt").unlink()

    def partial(step: int, damage, **kw) -> str | None:
        folder = fake_deepspeed_checkpoint(root / f"checkpoint-{step}", step, **kw)
        damage(folder, folder / f"global_step{step}")
        return checkpoint_problem(folder)

    assert partial(6, lambda f, t: (f / "latest").write_text("global_step5")) == \
        "missing global_step5/ (named by latest)"
    assert partial(8, lambda f, t: (f / "latest").unlink()) == "missing latest (DeepSpeed's)"
    assert partial(10, lambda f, t: (t / "mp_rank_00_model_states.pt").unlink()) == \
        "missing global_step10/mp_rank_00_model_states.pt"
    assert partial(12, lambda f, t: (t / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink(), processes=2,
                   bf16=False) == "global_step12/ holds the ZeRO optimizer states of 1 of the run's 2 processes"
    assert partial(14, lambda f, t: (t / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink(),
                   processes=2) == "missing global_step14/zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard = "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    assert partial(16, lambda f, t: (t / shard).write_bytes((t / shard).read_bytes()[:50])).startswith(
        f"global_step16/{shard} unreadable")
    assert partial(18, lambda f, t: (f / "trainer_state.json").unlink()) == "missing trainer_state.json"
    with caplog.at_level("WARNING", logger="unime.models.run_state"):
        assert last_complete_checkpoint(root) == two
    assert [m for m in caplog.messages if "incomplete" in m and "checkpoint-" in m] == [
        f"{root / f'checkpoint-{n}'} is incomplete ({checkpoint_problem(root / f'checkpoint-{n}')}): skipped, not "
        "resumed from" for n in (18, 16, 14, 12, 10, 8, 6)]


def test_resume_picks_the_latest_complete_checkpoint_and_reports_the_incomplete_ones(tmp_path, caplog):
    from unime.models.run_state import FULL_STATE_FILE, checkpoint_problem, last_complete_checkpoint

    root = tmp_path / "checkpoints"
    for step in (3, 6, 9, 12, 15, 18):
        fake_checkpoint(root / f"checkpoint-{step}", step, weights=FULL_STATE_FILE if step == 6 else
                        "adapter_model.safetensors")
    (root / "checkpoint-9" / "optimizer.pt").unlink()                     # killed before the optimizer
    weights = root / "checkpoint-12" / "adapter_model.safetensors"
    whole = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:-10])                        # truncated weights
    sched = root / "checkpoint-15" / "scheduler.pt"
    sched.write_bytes(sched.read_bytes()[:40])                             # truncated torch archive
    (root / "checkpoint-18" / "trainer_state.json").write_text('{"global_st')  # half-written state
    (root / "runs").mkdir()
    assert checkpoint_problem(root / "checkpoint-3") is None and checkpoint_problem(root / "checkpoint-6") is None
    assert checkpoint_problem(root / "checkpoint-9") == "missing optimizer.pt"
    assert checkpoint_problem(root / "checkpoint-12") == \
        f"adapter_model.safetensors truncated ({whole - 10} of {whole} bytes)"
    assert checkpoint_problem(root / "checkpoint-15").startswith("scheduler.pt unreadable")
    assert checkpoint_problem(root / "checkpoint-18") == "trainer_state.json unreadable (JSONDecodeError)"
    with caplog.at_level("WARNING", logger="unime.models.run_state"):
        assert last_complete_checkpoint(root).name == "checkpoint-6"
    skipped = [r.getMessage() for r in caplog.records]
    assert [m.split("checkpoints/")[1].split(" ")[0] for m in skipped] == [
        "checkpoint-18", "checkpoint-15", "checkpoint-12", "checkpoint-9"]
    assert all("is incomplete" in m and "skipped, not resumed from" in m for m in skipped)
    assert last_complete_checkpoint(tmp_path / "nothing") is None
