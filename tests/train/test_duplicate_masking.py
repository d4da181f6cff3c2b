"""Duplicate candidates in a batch: the collator's `candidate_ids`, their way through
`EmbedderTrainer.compute_loss` into the loss, and the `--no-mask-duplicates` option. (The masking
itself is checked against hand-computed values in test_losses.py.)"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from unime.data.items import Item, Record
from unime.train.batching import EmbedderCollator, item_id
from unime.train.losses import InfoNCELoss


class _FakeBuilder:
    """Input assembly without a model: every item becomes one row of its chunk."""

    instruction_suffix = ""
    image_loader = SimpleNamespace(load=lambda ref, **_: Image.new("RGB", (2, 2)),
                                   load_video=lambda refs, **_: [Image.new("RGB", (2, 2)) for _ in refs])

    def build_inputs(self, items, segments=None):
        return {"n": torch.tensor([len(items)])}


RED = Item("red", ("images/red.png",))
RED_COPY = Item("red", ["images/red.png"])              # same content, separately built
RED_OTHER_IMAGE = Item("red", ("images/red2.png",))
BLUE_SAME_IMAGE = Item("blue", ("images/red.png",))
TEXT_RED = Item("red")
INLINE_A = Item("", (b"\x89PNG-a",))
INLINE_A_COPY = Item("", (bytes(b"\x89PNG-a"),))
INLINE_B = Item("", (b"\x89PNG-b",))
VIDEO = Item("clip", video=("f/0.png", "f/1.png"))
VIDEO_REVERSED = Item("clip", video=("f/1.png", "f/0.png"))


def _batch(records):
    collate = EmbedderCollator(_FakeBuilder(), num_negatives=2, with_scores=False)
    return collate(list(enumerate(records)))


def test_collator_ids_equal_iff_same_content():
    records = [
        Record(Item("q0"), RED, [INLINE_A, VIDEO]),
        Record(Item("q1"), TEXT_RED, [RED_COPY, INLINE_B]),
        Record(Item("q2"), RED_COPY, [RED_OTHER_IMAGE, BLUE_SAME_IMAGE]),
        Record(Item("q3"), INLINE_A_COPY, [VIDEO_REVERSED, RED]),
    ]
    batch = _batch(records)
    ids = batch["candidate_ids"]
    assert ids.dtype == torch.int64 and tuple(ids.shape) == (4, 3)
    assert batch["num_queries"] == 4 and batch["group_size"] == 3
    items = [[r.positive] + r.negatives[:2] for r in records]
    for i in range(4):
        for a in range(3):
            assert int(ids[i, a]) == item_id(items[i][a])
            for j in range(4):
                for b in range(3):
                    same = items[i][a].key == items[j][b].key
                    assert (int(ids[i, a]) == int(ids[j, b])) == same, (i, a, j, b)
    # the pairs this batch is built around
    assert ids[0, 0] == ids[2, 0] == ids[1, 1] == ids[3, 2]          # "red" + red.png, four times
    assert ids[0, 1] == ids[3, 0]                                    # same inline image bytes
    assert len({int(ids[0, 0]), int(ids[1, 0]), int(ids[2, 1]), int(ids[2, 2])}) == 4  # text / image differ
    assert ids[1, 2] != ids[0, 1] and ids[0, 2] != ids[3, 1]         # other bytes; frame order matters


def test_item_id_is_stable_across_processes():
    """blake2b of the item key, not Python's per-process salted `hash`."""
    expected = int.from_bytes(hashlib.blake2b(RED.key.encode(), digest_size=8).digest(), "little", signed=True)
    assert item_id(RED) == expected
    code = ("from unime.data.items import Item; from unime.train.batching import item_id; "
            "print(item_id(Item('red', ('images/red.png',))))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout.strip()) == expected


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, queries, candidates, scores=None, **kwargs):
        self.calls.append(kwargs)
        return InfoNCELoss(1.0)(queries, candidates, scores, **kwargs)


class _OldStyleLoss(torch.nn.Module):
    """A loss written before `candidate_ids` existed."""

    def forward(self, queries, candidates, scores=None):
        return InfoNCELoss(1.0)(queries, candidates)


def _compute_loss(loss_module, inputs):
    from unime.train.embedder_trainer import EmbedderTrainer

    trainer = SimpleNamespace(loss_module=loss_module, grad_cache=None,
                              _record_accuracy=lambda *args: None)
    return EmbedderTrainer.compute_loss(trainer, lambda **chunk: chunk["reps"], inputs)


def test_compute_loss_passes_candidate_ids_to_the_loss():
    torch.manual_seed(0)
    b, c, d = 3, 2, 4
    reps = torch.randn(b + b * c, d, dtype=torch.float64)
    ids = torch.tensor([[7, 1], [8, 7], [7, 2]])
    inputs = {"chunks": [{"reps": reps[:5]}, {"reps": reps[5:]}], "num_queries": b, "group_size": c,
              "candidate_ids": ids}
    recorder = _Recorder()
    loss = _compute_loss(recorder, inputs)
    assert len(recorder.calls) == 1 and torch.equal(recorder.calls[0]["candidate_ids"], ids)
    q, cands = reps[:b], reps[b:].reshape(b, c, d)
    assert float(loss) == pytest.approx(float(InfoNCELoss(1.0)(q, cands, candidate_ids=ids)), abs=1e-12)
    assert float(loss) != pytest.approx(float(InfoNCELoss(1.0)(q, cands)), abs=1e-6)  # ids changed the loss
    # a batch without ids still works with a loss that does not know the keyword
    no_ids = {k: v for k, v in inputs.items() if k != "candidate_ids"}
    assert float(_compute_loss(_OldStyleLoss(), no_ids)) == pytest.approx(float(InfoNCELoss(1.0)(q, cands)))


def test_cli_mask_duplicates_option(tmp_path):
    from unime.cli import build_parser
    from unime.cli.train import embedder_config_from_args
    from unime.train.embedder_trainer import build_loss_from_config

    base = ["train", "embedder", "--model", "m", "--records", "r.jsonl", "--out", str(tmp_path), "--loss", "infonce"]
    parser = build_parser()
    on = embedder_config_from_args(parser.parse_args(base))
    off = embedder_config_from_args(parser.parse_args(base + ["--no-mask-duplicates"]))
    assert on.mask_duplicates is True and off.mask_duplicates is False
    assert on.to_dict()["mask_duplicates"] is True and off.to_dict()["mask_duplicates"] is False  # train_config.json
    assert build_loss_from_config(on).config()["mask_duplicates"] is True                       # model card
    assert build_loss_from_config(off).mask_duplicates is False


def test_training_accuracies_hand_worked():
    from unime.train.embedder_trainer import batch_accuracies

    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # groups (positive, hard negative); positives p0 = (1, 0), p1 = (.6, .8), p2 = (0, 1)
    cands = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],
                          [[0.6, 0.8], [1.0, 0.0]],
                          [[0.0, 1.0], [0.6, 0.8]]])
    # q·p: q0 (1, .6, 0) -> p0 own; q1 (0, .8, 1) -> p2, not own; q2 (.6, 1, .8) -> p1, not own
    # own group: q0 1 > 0; q1 .8 > 0; q2 .8 < 1
    assert batch_accuracies(q, cands) == {"in_batch_accuracy": 1.0, "group_accuracy": 2.0}
    # p1 and p2 are copies of one item (id 5): q1 -> p2 and q2 -> p1 are then right
    ids = torch.tensor([[4, 9], [5, 4], [5, 5]])
    assert batch_accuracies(q, cands, ids)["in_batch_accuracy"] == 3.0
    # without hard negatives there is no group accuracy (it would be trivially 1)
    assert batch_accuracies(q, cands[:, :1]) == {"in_batch_accuracy": 1.0}
