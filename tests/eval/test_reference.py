"""The learnability reference (`unime.eval.reference`): determinism, the loss and in-batch P@1 by hand,
the runner interface, the time / step budget, bad input, and `unime eval reference` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from unime.data.io import write_records
from unime.data.items import Item, Record
from unime.errors import DataError
from unime.eval.reference import (ReferenceConfig, ReferenceEncoder, Vocabulary, info_nce, tokenize,
                                  train_reference)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def small_cfg(**kw) -> ReferenceConfig:
    base = dict(seconds=600.0, max_steps=3, batch_size=6, dim=16, word_dim=8, image_size=16, channels=(4, 8, 8, 8),
                lr=5e-3, log_every=1000)
    base.update(kw)
    return ReferenceConfig(**base)


def colour_world(root, n_per_colour: int = 4) -> list[Record]:
    """Solid-colour images (a few shades each) → records 'image + question' → colour word."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for c, (r, g, b) in COLOURS.items():
        for k in range(n_per_colour):
            path = f"img/{c}{k}.png"
            Image.new("RGB", (20, 20), (max(r - 10 * k, 0), max(g - 10 * k, 0), max(b - 10 * k, 0))).save(root / path)
            records.append(Record(Item("<|image_1|>\nWhat colour is it?", (path,)), Item(c), dataset="colour",
                                  id=f"{c}-{k}"))
    return records


def test_tokenize_and_vocabulary():
    assert tokenize("<|image_1|>\nWhat COLOUR is the shape? red-ish, 3") == ["what", "colour", "is", "the", "shape",
                                                                             "red", "ish", "3"]
    v = Vocabulary.build(["a b b", "c b"])
    assert v.words == ["<pad>", "<unk>", "b", "a", "c"]  # by count, then alphabetically
    assert v.ids("B a zebra") == [2, 3, 1]


def test_info_nce_by_hand():
    """Copies of a row's own positive leave its denominator; a copy at the top counts as a hit."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    p = q.clone()
    scale = torch.tensor(math.log(10.0))
    loss, acc = info_nce(q, p, scale, ["x", "y", "z"], ["a", "b", "a"])
    e = math.exp(-10)
    # query→positive: row 0 [10, 0, (10 masked)], row 1 [0, 10, 0], row 2 [(10 masked), 0, 10]
    q2p = (math.log(1 + e) + math.log(1 + 2 * e) + math.log(1 + e)) / 3
    # positive→query (queries all distinct, nothing masked): columns of the same logits
    p2q = (math.log(2 + e) + math.log(1 + 2 * e) + math.log(2 + e)) / 3
    assert float(loss) == pytest.approx((q2p + p2q) / 2, rel=1e-5)
    assert acc == 1.0
    _, acc_distinct = info_nce(q, p, scale, ["x", "y", "z"], ["a", "b", "c"])
    assert acc_distinct == pytest.approx(2 / 3)  # row 2's top is column 0 (first of a tie), another item


def test_same_seed_same_weights_at_one_thread(tmp_path):
    records = colour_world(tmp_path)
    hashes = [train_reference(records, small_cfg(seed=s), data_root=tmp_path)[1].weights_hash for s in (0, 0, 1)]
    assert hashes[0] == hashes[1]
    assert hashes[0] != hashes[2]
    untrained = ReferenceEncoder(Vocabulary.build([r.query.text for r in records]), small_cfg(), data_root=tmp_path)
    assert untrained.weights_hash() != hashes[0]  # the steps changed the weights


def test_step_and_time_budgets(tmp_path):
    records = colour_world(tmp_path)
    _, log = train_reference(records, small_cfg(max_steps=4), data_root=tmp_path)
    assert (log.steps, log.stopped_by) == (4, "steps")

    ticks = iter(range(1000))  # a clock that advances one second per reading
    _, log = train_reference(records, small_cfg(seconds=2.5, max_steps=10_000), data_root=tmp_path,
                             clock=lambda: float(next(ticks)))
    # readings: start = 0; before step 1: 1 s, before step 2: 2 s, then 3 s >= 2.5 s stops
    assert (log.steps, log.stopped_by) == (2, "time")

    _, log = train_reference(records, small_cfg(seconds=2.0, max_steps=10 ** 9), data_root=tmp_path)
    assert log.stopped_by == "time" and 0 < log.steps < 10 ** 9


def test_missing_image_names_file_record_field(tmp_path):
    records = colour_world(tmp_path)
    (tmp_path / "img" / "green2.png").unlink()
    path = tmp_path / "records.jsonl"
    write_records(records, path)
    from unime.data.io import read_records

    with pytest.raises(DataError) as e:
        train_reference(read_records(path), small_cfg(), data_root=tmp_path, source=str(path))
    err = e.value
    assert (err.source, err.record, err.field) == (str(path), "line 7 (id green-2)", "query.images[0]")
    assert "green2.png" in str(err) and "records.jsonl" in str(err)


def _mmeb_task(root, rows: list[dict]) -> str:
    (root / "eval").mkdir(exist_ok=True)
    with open(root / "eval" / "colours.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    (root / "tasks.yaml").write_text("tasks:\n- {name: colours, format: mmeb, path: eval/colours.jsonl, "
                                     "meta_task: classification, split: IND}\n")
    return str(root / "tasks.yaml")


def test_vectors_go_through_run_tasks(tmp_path):
    """The runner's P@1 equals a by-hand argmax over the encoder's own vectors (untrained weights: the
    scores are arbitrary but fixed), and a learnable case reaches 1.0."""
    from unime.eval.runners import EvalOptions, load_suite_data, run_tasks
    from unime.eval.tasks import load_task_config
    from unime.models.embedding_cache import RunEncoder

    records = colour_world(tmp_path, n_per_colour=6)
    rows = [{"qry_text": "<|image_1|>\nWhat colour is it?", "qry_img_path": f"img/{c}{k}.png",
             "tgt_text": [c] + [o for o in COLOURS if o != c], "tgt_img_path": ["", "", ""]}
            for c in COLOURS for k in (1, 4)]
    cfg_path = _mmeb_task(tmp_path, rows)
    data = load_suite_data(load_task_config(cfg_path))

    enc = ReferenceEncoder(Vocabulary.build([r.query.text for r in records] + list(COLOURS)), small_cfg(),
                           data_root=tmp_path)
    run = run_tasks(data, RunEncoder(enc, "untrained"), opts=EvalOptions(ties="pessimistic"))
    hits = []
    for r in rows:
        q = enc.encode([Item(r["qry_text"], (r["qry_img_path"],))])[0]
        cands = enc.encode([Item(t) for t in r["tgt_text"]])
        s = cands @ q
        hits.append(s[0] > np.max(s[1:]))
    assert run.results[0].metrics["precision@1"] == pytest.approx(np.mean(hits))

    trained, log = train_reference(records, small_cfg(max_steps=150, seed=0), data_root=tmp_path)
    assert log.train_p_at_1 == 1.0
    run = run_tasks(data, RunEncoder(trained, "trained"), opts=EvalOptions())
    assert run.results[0].metrics["precision@1"] == 1.0  # 6 queries, 3 candidates: chance is 1/3


def test_unime_eval_reference_cli(tmp_path, tiny_world_dir, capsys):
    from unime.cli import main
    from unime.eval.report import load_summary

    world = tiny_world_dir(0)
    out = tmp_path / "ref"
    assert main(["eval", "reference", "--tasks", str(world), "--records", str(world / "train" / "records.jsonl"),
                 "--data-root", str(world), "--out", str(out), "--seconds", "60", "--max-steps", "2",
                 "--image-size", "32", "--seed", "0"]) == 0
    summary = load_summary(out)  # readable like any `unime eval` folder
    training = summary["meta"]["reference"]["training"]
    assert training["steps"] == 2 and training["stopped_by"] == "steps"
    assert 0.0 <= training["train_p_at_1"] <= 1.0
    assert set(summary["aggregates"]["mmeb"]["scores"]) >= {"classification", "vqa", "retrieval", "grounding",
                                                             "overall"}
    assert (out / "results.md").is_file() and (out / "training.json").is_file() and (out / "reference.pt").is_file()
    assert {p.stem for p in (out / "tasks").glob("*.json")} == set(summary["tasks"])
    capsys.readouterr()
    assert main(["eval", "--model", "m", "--tasks", str(world)]) == 2  # plain `unime eval` still needs --out
    assert capsys.readouterr().err.splitlines() == ["unime: error: eval: --out is required"]


def _moving_square(root, name: str, direction: str, *, frames: int = 8, size: int = 32) -> tuple[str, ...]:
    """Frame images of a white square crossing the frame; "left" is "right" played backwards."""
    xs = [2 + round(k * (size - 10) / (frames - 1)) for k in range(frames)]
    if direction == "left":
        xs = xs[::-1]
    paths = []
    for k, x in enumerate(xs):
        img = Image.new("RGB", (size, size), (0, 0, 0))
        img.paste((255, 255, 255), (x, 12, x + 8, 20))
        path = f"clips/{name}_{k}.png"
        (root / "clips").mkdir(exist_ok=True)
        img.save(root / path)
        paths.append(path)
    return tuple(paths)


def test_videos_are_read_in_time_order(tmp_path):
    """A video's frames go through the GRU in order: a clip and the same clip backwards get different vectors
    (a mean of frame vectors cannot tell them apart) and the direction task is learned; a video file decodes
    to the frames a frame list of the same pictures gives."""
    av = pytest.importorskip("av")
    records = []
    for k in range(4):
        for direction in ("left", "right"):
            frames = _moving_square(tmp_path, f"{direction}{k}", direction)
            records.append(Record(Item("<|video_pad|>Where does it move?", video=frames), Item(direction),
                                  dataset="motion", id=f"{direction}{k}"))
    cfg = small_cfg(max_steps=120, seed=0, video_frames=8)
    enc, log = train_reference(records, cfg, data_root=tmp_path)
    assert log.train_p_at_1 == 1.0  # chance 1/2: both directions show the same eight pictures
    fwd, back = records[1].query, Item(records[1].query.text, video=records[1].query.video[::-1])
    v = enc.encode([fwd, back, records[0].query])
    assert float(v[1] @ v[2]) == pytest.approx(1.0, abs=1e-6)  # backwards "right" is the "left" clip
    assert float(v[0] @ v[1]) < 0.99
    # the same pictures as an .mp4 (lossless-enough colours at this size): the same frames reach the towers
    path = tmp_path / "clips" / "right0.mp4"
    c = av.open(str(path), "w")
    stream = c.add_stream("mpeg4", rate=4)
    stream.width = stream.height = 32
    stream.pix_fmt = "yuv420p"
    for p in records[1].query.video:
        for packet in stream.encode(av.VideoFrame.from_image(Image.open(tmp_path / p))):
            c.mux(packet)
    for packet in stream.encode():
        c.mux(packet)
    c.close()
    from_file = enc.frames(("clips/right0.mp4",))
    from_list = enc.frames(records[1].query.video)
    assert from_file.shape == from_list.shape == (8, 3, 16, 16)
    assert float((from_file - from_list).abs().mean()) < 0.1  # codec noise only


def test_eval_reference_reads_a_worlds_train_records_without_data_root(tmp_path, tiny_world_dir):
    """QA: `unime eval reference --records WORLD/train/records.jsonl` took train/ as the data root and ignored the
    world recorded there (unime_data.json, which the trainers read): 'image file not found'."""
    from unime.cli import main
    from unime.eval.report import load_summary

    world = tiny_world_dir(0)
    out = tmp_path / "ref"
    assert main(["eval", "reference", "--tasks", str(world), "--task", "shape_cls",
                 "--records", str(world / "train" / "records.jsonl"), "--out", str(out), "--max-steps", "1",
                 "--image-size", "16"]) == 0
    assert load_summary(out)["meta"]["data_root"] == str(world.resolve())


def test_eval_reference_on_error_skip_reports_skipped_rows_and_tasks_as_unime_eval(tmp_path, capsys):
    """`unime eval reference` declared its own `--on-error` and its summary had only `skipped_rows`: a task left
    without rows under `--on-error skip` was named nowhere. It takes `unime eval`'s option and skip report
    (`skipped_data_meta`): summary.json's skipped_rows, skipped_tasks, skipped_task_reasons and dropped_candidates,
    and results.md's skip lines; raise (the default) stops with one line naming the file, the record and the field."""
    from tests.eval.helpers import raise_then_skip

    records = colour_world(tmp_path)
    write_records(records, tmp_path / "records.jsonl")
    ok = [{"qry_text": "<|image_1|>\nWhat colour is it?", "qry_img_path": f"img/{c}0.png", "tgt_text": [c, o],
           "tgt_img_path": ["", ""]} for c, o in (("red", "green"), ("green", "blue"), ("blue", "red"))]
    bad = {"qry_text": "<|image_1|>\nWhat colour is it?", "qry_img_path": "img/gone.png", "tgt_text": ["red", "blue"],
           "tgt_img_path": ["", ""]}  # no such image
    (tmp_path / "pick.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ok + [bad]))
    (tmp_path / "lost.jsonl").write_text(json.dumps(bad) + "\n")  # its one row is the bad one
    (tmp_path / "eval_tasks.yaml").write_text(
        "tasks:\n  - {name: pick, format: mmeb, path: pick.jsonl, meta_task: classification}\n"
        "  - {name: lost, format: mmeb, path: lost.jsonl, meta_task: classification}\n")
    argv = ["eval", "reference", "--tasks", str(tmp_path / "eval_tasks.yaml"), "--records",
            str(tmp_path / "records.jsonl"), "--data-root", str(tmp_path), "--max-steps", "1", "--image-size", "16",
            "--batch-size", "4"]
    err, summary = raise_then_skip(argv, tmp_path, capsys, kept={"pick": 3}, skipped_rows={"pick": 1, "lost": 1},
                                   lost=["lost"])
    assert len(err) == 1 and err[0].startswith(f"unime: error: {tmp_path / 'pick.jsonl'}, record line 4, "
                                               "field 'query.images[0]': ")
    assert "lost.jsonl" in summary["meta"]["skipped_task_reasons"]["lost"]
