"""sha256 of the merged weights (`merged/model.safetensors`) of a short, uninterrupted embedder run and
reranker run on a tiny Qwen2-VL (CPU, one thread): compare the figures of two trees to show that a change
to the output / export plumbing leaves the trained weights bit-identical.

    OMP_NUM_THREADS=1 python bench/export_sha256.py [WORK_DIR]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(work: Path) -> None:
    from unime.data.synth.generate import generate_world
    from unime.models.tiny import build_tiny
    from unime.train.embedder_trainer import EmbedderTrainingConfig, train_embedder
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    torch.set_num_threads(1)
    model = str(build_tiny("qwen2_vl", work / "model"))
    world = work / "world"
    generate_world(world, seed=0, sizes="tiny")
    records = str(world / "train" / "records.jsonl")
    from unime.data.io import read_records, write_records

    rows = read_records(records)  # with the next two records' positives as negatives (reranker records)
    rows = [dataclasses.replace(r, negatives=[rows[(i + 1) % len(rows)].positive, rows[(i + 2) % len(rows)].positive])
            for i, r in enumerate(rows)]
    records = str(work / "records.jsonl")
    write_records(rows, records)
    train_embedder(EmbedderTrainingConfig(model=model, records=records, out=str(work / "embedder"),
                                          data_root=str(world),
                                          loss="infonce", hard_negatives=0, batch_size=4, steps=4, lr=2e-3, warmup=0,
                                          lora_r=8, lora_alpha=16, lora_dropout=0.0, save_steps=2, device="cpu",
                                          seed=0))
    train_reranker(RerankerTrainConfig(model=model, records=[records], out=str(work / "reranker"),
                                       num_negatives=2, learning_rate=1e-3, max_steps=4,
                                       batch_size=2, save_steps=2, lora_dropout=0.0, device="cpu", merge=True,
                                       data_root=str(world)))
    print(json.dumps({name: sha256(work / name / "merged" / "model.safetensors") for name in ("embedder", "reranker")},
                     indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="unime-sha-")))
