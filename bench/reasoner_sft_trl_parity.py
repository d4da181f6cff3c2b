"""Reasoner SFT on TRL's `SFTTrainer` against the hand-written trainer it replaced (the module as of
commit 5255483, read with `git show`): the same T-CoT rows, options and seed, each run in its own process
on a tiny model; prints the per-step losses side by side, whether the saved weights are bit-identical,
and the largest weight difference. The old path did not seed its LoRA initialisation (each run drew
other LoRA A matrices); here it is seeded as the new path now is, so LoRA runs are comparable.

    python bench/reasoner_sft_trl_parity.py                          # tiny Qwen2-VL, full fine-tuning
    python bench/reasoner_sft_trl_parity.py --family qwen2_5_vl --lora-r 8 --steps 12
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

OLD_COMMIT = "5255483"
OLD_PATH = "src/unime/embed_rl/reasoner_sft.py"


def _write_data(root: Path) -> Path:
    from PIL import Image

    from unime.data.items import Item
    from unime.reasoning.reasoner import TCoTRow, write_tcot_rows
    from unime.reasoning.tcot import render_tcot

    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (c, rgb) in enumerate({"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 200, 60)}.items()):
        Image.new("RGB", (64 + 16 * i, 64), rgb).save(root / "imgs" / f"{c}.png")
        rows.append(TCoTRow(f"r{i}", "target", Item(images=(f"imgs/{c}.png",)),
                            render_tcot({"bbox_2d": [[100, 100, 600, 600]]}, f"A {c} circle.", f"{c} circle")))
        rows.append(TCoTRow(f"r{i}", "query", Item(text=f"a {c} circle"),
                            render_tcot({"text_keywords": [c, "circle"]}, f"The query asks for a {c} circle.",
                                        f"{c} circle")))
    write_tcot_rows(rows, root / "tcots.jsonl")
    return root / "tcots.jsonl"


def _run_one(which: str, model: str, data: str, out: str, steps: int, lora_r: int, lora_dropout: float) -> None:
    if which == "old":
        code = subprocess.run(["git", "show", f"{OLD_COMMIT}:{OLD_PATH}"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).resolve().parents[1]).stdout
        path = Path(out).parent / "old_reasoner_sft.py"
        path.write_text(code)
        spec = importlib.util.spec_from_file_location("old_reasoner_sft", path)
        mod = sys.modules["old_reasoner_sft"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        hand_written_lora = mod.lora_model

        def seeded_lora(model_, cfg_):  # the old path left the LoRA initialisation unseeded (fixed now)
            from transformers import set_seed

            set_seed(cfg_.seed)
            return hand_written_lora(model_, cfg_)

        mod.lora_model = seeded_lora
    else:
        import unime.embed_rl.reasoner_sft as mod
    cfg = mod.ReasonerSFTConfig(model=model, data=data, out=out, max_steps=steps, batch_size=2, learning_rate=1e-3,
                                lora_r=lora_r, lora_dropout=lora_dropout, logging_steps=1, save_steps=10_000,
                                device="cpu", seed=0)
    mod.train_reasoner_sft(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="qwen2_vl")
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--lora-r", type=int, default=0)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--run", nargs=4, help=argparse.SUPPRESS)  # which model data out (a child process)
    a = p.parse_args()
    if a.run:
        _run_one(*a.run, steps=a.steps, lora_r=a.lora_r, lora_dropout=a.lora_dropout)
        return
    import torch
    from safetensors.torch import load_file

    from unime.models.curves import read_curves_csv
    from unime.models.tiny import build_tiny

    root = Path(tempfile.mkdtemp(prefix="sft_parity_"))
    model = str(build_tiny(a.family, root / "model"))
    data = str(_write_data(root / "data"))
    for which in ("old", "new"):
        subprocess.run([sys.executable, __file__, "--steps", str(a.steps), "--lora-r", str(a.lora_r),
                        "--lora-dropout", str(a.lora_dropout), "--run", which, model, data, str(root / which)],
                       check=True)
    curves = {w: read_curves_csv(root / w / "curves.csv") for w in ("old", "new")}
    print(f"{a.family}, lora_r={a.lora_r} (dropout {a.lora_dropout}), {a.steps} steps of 2 rows "
          "(6 rows: 3 with an image), lr 1e-3, seed 0")
    print("step  loss (hand-written Trainer)  loss (TRL SFTTrainer)  difference")
    for o, n in zip(curves["old"], curves["new"]):
        print(f"{o['step']:>4}  {o['loss']:>27.9f}  {n['loss']:>21.9f}  {n['loss'] - o['loss']:+.3e}")
    old, new = load_file(root / "old" / "model.safetensors"), load_file(root / "new" / "model.safetensors")
    same = old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    worst = max((float((old[k].float() - new[k].float()).abs().max()), k) for k in old)
    moved = max(float((old[k].float() - load_file(Path(model) / "model.safetensors")[k].float()).abs().max())
                for k in old if k in load_file(Path(model) / "model.safetensors"))
    print(f"weights bit-identical: {same}; largest |old - new| {worst[0]:.3e} ({worst[1]}); "
          f"largest change from the base by training {moved:.3e}")
    print(json.dumps({w: json.loads((root / w / "sft_summary.json").read_text())["train_loss"] for w in curves}))


if __name__ == "__main__":
    main()
