"""The generated demo world: determinism, layout, splits, loadability, ground truth, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from unime.data import vocab
from unime.data.images import ImageLoader
from unime.data.io import check_images, read_compositional, read_mmeb, read_records, read_retrieval
from unime.data.items import Item
from unime.data.synth import PRESETS, TASKS, World, WorldSizes, generate_world, resolve_sizes
from unime.data.synth.render import RADIUS, crop_box, object_centre
from unime.errors import DataError

SEED = 3


@pytest.fixture(scope="module")
def world_dir(tiny_world_dir) -> Path:
    return tiny_world_dir(SEED)


@pytest.fixture(scope="module")
def world(world_dir) -> World:
    return World.load(world_dir)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_and_other_seeds_differ(world_dir, tmp_path):
    again = tmp_path / "again"
    generate_world(again, seed=SEED, sizes="tiny")
    a, b = _files(world_dir), _files(again)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    other = tmp_path / "other"
    generate_world(other, seed=SEED + 1, sizes="tiny")
    c = _files(other)
    for name in ("scenes.jsonl", "train/records.jsonl", "eval/mmeb/t2i.jsonl", "images/scenes/train00000.png"):
        assert a[name] != c[name], name


def test_layout_matches_the_contract(world_dir):
    for rel in ("world.json", "scenes.jsonl", "items.jsonl", "train/records.jsonl", "eval_tasks.yaml"):
        assert (world_dir / rel).is_file(), rel
    assert any((world_dir / "images" / "scenes").glob("*.png"))
    assert any((world_dir / "images" / "crops").glob("*.png"))
    manifest = json.loads((world_dir / "world.json").read_text())
    assert manifest["format_version"] == 1 and manifest["seed"] == SEED
    assert manifest["sizes"] == {k: getattr(PRESETS["tiny"], k) for k in manifest["sizes"]}
    counts = manifest["counts"]
    assert counts["train_records"] == len(read_records(world_dir / "train/records.jsonl"))
    for name, c in counts["eval"].items():
        assert c["queries"] > 0, name
    assert not [p for p in world_dir.parent.iterdir() if p.name.startswith(".w.tmp")]  # no temp folder left


def test_eval_tasks_yaml_matches_the_contract(world_dir):
    cfg = yaml.safe_load((world_dir / "eval_tasks.yaml").read_text())
    assert cfg["data_root"] == "."
    names = [t["name"] for t in cfg["tasks"]]
    assert len(names) == len(set(names))
    for t in cfg["tasks"]:
        assert set(t) <= {"name", "format", "path", "meta_task", "split"}
        assert t["format"] in {"mmeb", "retrieval", "compositional", "qrels"}
        assert (world_dir / t["path"]).is_file()
        assert t["split"] in {"IND", "OOD"}
        if t["format"] == "mmeb":
            assert t["meta_task"] in {"classification", "vqa", "retrieval", "grounding"}
            assert t["path"] == f"eval/mmeb/{t['name']}.jsonl"
    mmeb = [t for t in cfg["tasks"] if t["format"] == "mmeb"]
    assert {t["meta_task"] for t in mmeb} == {"classification", "vqa", "retrieval", "grounding"}
    assert {t["split"] for t in mmeb} == {"IND", "OOD"}
    assert {t["name"] for t in cfg["tasks"] if t["format"] == "compositional"} == {"replace", "swap", "add"}
    assert [t["path"] for t in cfg["tasks"] if t["format"] == "retrieval"] == ["eval/retrieval/scene_captions.jsonl"]
    assert [t["path"] for t in cfg["tasks"] if t["format"] == "qrels"] == ["eval/qrels/scene_search.jsonl"]


def test_the_eval_config_says_what_its_paths_are_relative_to_as_eval_reads_them(world_dir, tmp_path, monkeypatch):
    """Its header said "paths are relative to data_root": a task's path is relative to the config's folder."""
    from unime.eval.tasks import load_task_config

    text = (world_dir / "eval_tasks.yaml").read_text()
    assert text.splitlines()[0] == ("# eval tasks of the generated demo world; task paths, and the image and video "
                                    "paths in their data (data_root: .), are relative to this folder")
    monkeypatch.chdir(tmp_path)  # not the working directory
    cfg = yaml.safe_load(text)
    for spec, task in zip(load_task_config(str(world_dir / "eval_tasks.yaml")).tasks, cfg["tasks"]):
        assert spec.path == (world_dir / task["path"]).resolve() and spec.data_root == world_dir.resolve()
    # data_root moved elsewhere: the task files are still those beside the config, their images under data_root
    (tmp_path / "eval_tasks.yaml").write_text(yaml.safe_dump({**cfg, "data_root": "images"}))
    spec = load_task_config(str(tmp_path / "eval_tasks.yaml")).tasks[0]
    assert spec.path == (tmp_path / cfg["tasks"][0]["path"]).resolve()
    assert spec.data_root == (tmp_path / "images").resolve()


def test_every_file_loads_and_every_image_resolves(world_dir, world):
    loader = ImageLoader(world_dir)
    records = read_records(world_dir / "train/records.jsonl")
    assert check_images(records, loader) == records
    n_images = 0
    for t in world.tasks:
        path = world_dir / t["path"]
        if t["format"] == "mmeb":
            rows = read_mmeb(path)
            assert check_images(rows, loader) == rows
            n_images += sum(len(r.query.images) + sum(len(c.images) for c in r.candidates) for r in rows)
        elif t["format"] == "retrieval":
            for e in read_retrieval(path):
                assert len(e.captions) >= 2
                loader.load(e.image)
        elif t["format"] == "compositional":
            for p in read_compositional(path):
                assert p.category.split("-")[0] == t["name"]
                loader.load(p.image)
        else:
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            items = [Item.from_dict(c) for r in rows for c in r["candidates"]]
            assert check_images(items, loader) == items
    assert n_images > 0


def test_training_records(world):
    sizes = PRESETS["tiny"]
    by_task: dict[str, int] = {}
    for r in world.records:
        by_task[r.dataset] = by_task.get(r.dataset, 0) + 1
        assert r.id.startswith(r.dataset + "-") and not r.negatives
        assert world.relevance(r.query, r.positive) == 1.0
    assert by_task == {t.name: sizes.train_per_task for t in TASKS if t.trained}
    assert len({r.query.key for r in world.records}) == len(world.records)


def test_splits_are_disjoint_and_ood_combinations_never_trained(world):
    held = world.held_out_combos
    assert len(held) == 6
    train_scenes, train_keys = set(), set()
    for r in world.records:
        train_keys.add(r.query.key)
        for item in (r.query, r.positive):
            meta = world.meta(item)
            sid = meta.get("scene")
            if sid is not None:
                scene = world.scenes[sid]
                train_scenes.add(sid)
                assert scene.split == "train" and not scene.has_combo(held), (r.id, sid)
            for m in (meta.get("spec") or meta.get("need", {}).get("spec") or {"objects": []})["objects"]:
                assert (m.get("colour"), m.get("shape")) not in held, r.id
            if meta["kind"] == "answer" and " " in meta["value"]:
                assert tuple(meta["value"].split(" ")) not in held, r.id
    trained = {t.name for t in TASKS if t.trained}
    assert {t.name for t in TASKS} - trained, "at least one held-out task"
    for t in world.tasks:
        if t["format"] != "mmeb":
            continue
        rows = read_mmeb(world.root / t["path"])
        for row in rows:
            assert row.query.key not in train_keys
            for item in [row.query] + row.candidates:
                sid = world.meta(item).get("scene")
                assert sid is None or sid not in train_scenes, (t["name"], sid)
        if t["name"] in ("object_cls", "t2i_ood"):  # OOD by held-out combinations
            for row in rows:
                item = row.query if t["name"] == "object_cls" else row.positive
                scene = world.scenes[world.meta(item)["scene"]]
                assert scene.split == "ood" and scene.has_combo(held)
        if t["name"] == "refer_grounding_ood":
            for row in rows:
                meta = world.meta(row.positive)
                obj = world.scenes[meta["scene"]].objects[meta["object"]]
                assert (obj.colour, obj.shape) in held
        if t["split"] == "IND":
            for row in rows:
                for item in [row.query] + row.candidates:
                    sid = world.meta(item).get("scene")
                    assert sid is None or not world.scenes[sid].has_combo(held)


def test_eval_candidate_lists_have_one_positive_at_index_zero(world):
    for t in world.tasks:
        if t["format"] != "mmeb":
            continue
        rows = read_mmeb(world.root / t["path"])
        assert rows, t["name"]
        for row in rows:
            rel = world.relevances(row.query, row.candidates)
            assert rel[0] == 1.0 and max(rel[1:]) < 1.0, (t["name"], row.id, rel)
            assert len({c.key for c in row.candidates}) == len(row.candidates)
            assert 2 <= len(row.candidates) <= PRESETS["tiny"].candidates
            if row.query.images:
                assert row.query.text.startswith(vocab.IMAGE_PLACEHOLDER + "\n")


def test_compositional_negatives_are_false_and_positives_true(world):
    for t in world.tasks:
        if t["format"] != "compositional":
            continue
        for p in read_compositional(world.root / t["path"]):
            image = Item("", (p.image,))
            assert world.relevance(image, Item(p.positive)) == 1.0
            assert world.relevance(image, Item(p.negative)) < 1.0


def _independent_single_mention_relevance(mention: dict, scene) -> float:
    """Plain re-implementation for one-mention captions: best fraction over the scene's objects."""
    return max(sum(getattr(o, a) == v for a, v in mention.items()) / len(mention) for o in scene.objects)


def test_partial_captions_create_false_negatives_with_graded_relevance(world, world_dir):
    items = [json.loads(line) for line in (world_dir / "items.jsonl").read_text().splitlines()]
    single = [(Item(d["item"]["text"]), d["meta"]["spec"]["objects"][0]) for d in items
              if d["meta"]["kind"] == "description" and len(d["meta"]["spec"]["objects"]) == 1
              and not d["meta"]["spec"]["relations"] and d["meta"]["spec"]["count"] is None]
    assert single
    scenes = [d for d in items if d["meta"]["kind"] == "scene" and d["item"]["text"]]
    checked = 0
    for desc, mention in single:
        for d in scenes:
            scene_item = Item(d["item"]["text"], tuple(d["item"]["images"]))
            expected = _independent_single_mention_relevance(mention, world.scenes[d["meta"]["scene"]])
            t2i_need = Item(desc.text)  # a description used as a query needs the scenes satisfying it
            assert world.relevance(t2i_need, scene_item) == pytest.approx(expected)
            checked += 1
    assert checked > 100
    # the mining pool of training positives holds other fully relevant targets for some queries
    pool = {r.positive.key: r.positive for r in world.records}
    fn = sum(1 for r in world.records for k, v in zip(pool, world.relevances(r.query, pool.values()))
             if v == 1.0 and k != r.positive.key)
    assert fn > 0


def test_unknown_items_raise(world):
    with pytest.raises(DataError, match="not an item of this world"):
        world.relevance(Item("a red circle that was never generated"), Item("circle"))
    q = world.records[0].query
    with pytest.raises(DataError, match="query item"):
        world.relevance(world.records[1].query, q)


def test_rendered_pixels_follow_the_annotation(world, world_dir):
    size = PRESETS["tiny"].image_size
    scene = next(s for s in world.scenes.values() if len(s.objects) == 1 and s.objects[0].shape in ("circle", "square"))
    img = Image.open(world_dir / scene.image)
    assert img.size == (size, size)
    obj = scene.objects[0]
    cx, cy = object_centre(obj, size)
    assert img.getpixel((int(cx), int(cy))) == vocab.COLOURS[obj.colour]
    corner = img.getpixel((0, 0)) if obj.position != "left" else img.getpixel((size - 1, size - 1))
    assert corner == vocab.BACKGROUNDS[scene.background]
    # object area grows with size: count object-coloured pixels against the analytic area
    n = sum(1 for p in img.getdata() if p == vocab.COLOURS[obj.colour])
    r = RADIUS[obj.size] * size
    area = 3.14159 * r * r if obj.shape == "circle" else (1.7 * r) ** 2
    assert 0.7 * area < n < 1.3 * area
    box = crop_box(obj, size)
    assert box[2] - box[0] == box[3] - box[1] and box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def test_world_words_are_in_the_tiny_tokenizer_corpus(world, world_dir):
    from unime.models.tiny import tokenizer_corpus

    known = set(re.findall(r"[A-Za-z]+", " ".join(tokenizer_corpus())))
    known |= {w.lower() for w in known} | {w.capitalize() for w in known}
    texts = [json.loads(l)["item"]["text"] for l in (world_dir / "items.jsonl").read_text().splitlines()]
    words = set(re.findall(r"[A-Za-z]+", " ".join(texts)))
    assert words - known == set()


def test_existing_output_is_not_overwritten_unless_asked(world_dir, tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate_world(out, seed=0, sizes="tiny")
    assert (out / "keep.txt").exists()
    generate_world(out, seed=0, sizes="tiny", overwrite=True)
    # --overwrite writes the world's entries; a file the generator did not write stays, untouched
    assert (out / "keep.txt").read_text() == "x" and (out / "world.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["w"]
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_a_finished_world_is_left_as_it_is_and_other_options_are_refused_with_the_keys(tmp_path):
    from unime.errors import ChangedOptions

    out = tmp_path / "w"
    first = generate_world(out, seed=0, sizes="tiny")
    assert not first.reused
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = generate_world(out, seed=0, sizes="tiny")
    assert again.reused and again.counts == first.counts and "nothing to do" in again.describe()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing rewritten
    with pytest.raises(ChangedOptions, match=r"seed: 0 -> 1.*--overwrite"):
        generate_world(out, seed=1, sizes="tiny")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    generate_world(out, seed=1, sizes="tiny", overwrite=True)
    assert json.loads((out / "world.json").read_text())["seed"] == 1


def test_overwrite_with_another_world_removes_the_earlier_worlds_files_and_no_other(tmp_path):
    """A smaller world with another seed written over a world: the earlier world's files the new one does not write
    (its extra scenes, its crops) are gone; the folder holds exactly what the same world holds written into an empty
    folder, plus the user's files (also one inside the world's images/scenes/)."""
    out, alone = tmp_path / "w", tmp_path / "alone"
    smaller = resolve_sizes("tiny", train_scenes=24)
    generate_world(out, seed=0, sizes="tiny")
    assert (out / "images" / "scenes" / "train00047.png").is_file()  # 48 train scenes
    (out / "images" / "scenes" / "mine.png").write_bytes(b"the user's")
    (out / "notes.txt").write_text("x")
    generate_world(out, seed=1, sizes=smaller, overwrite=True)
    generate_world(alone, seed=1, sizes=smaller)
    assert not (out / "images" / "scenes" / "train00047.png").exists()  # the smaller world has fewer scenes
    assert _files(out) == {**_files(alone), "images/scenes/mine.png": b"the user's", "notes.txt": b"x"}


def test_overwrite_over_a_world_that_lists_no_files_leaves_them_and_says_so(tmp_path, caplog):
    """A world written before world.json listed its files (an older unime): nothing of it is removed (what is the
    user's cannot be told apart), and the warning naming what was left says to remove the earlier world's by hand."""
    import logging

    out = tmp_path / "w"
    generate_world(out, seed=0, sizes="tiny")
    manifest = json.loads((out / "world.json").read_text())
    manifest.pop("files", None)
    (out / "world.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        generate_world(out, seed=1, sizes=resolve_sizes("tiny", train_scenes=24), overwrite=True)
    assert (out / "images" / "scenes" / "train00047.png").is_file()
    assert any("left as they were" in r.getMessage() and "remove those by hand" in r.getMessage()
               for r in caplog.records)


def test_sizes_are_validated_and_overridable():
    with pytest.raises(ValueError):
        WorldSizes(candidates=1)
    with pytest.raises(ValueError):
        WorldSizes(train_scenes=-1)
    with pytest.raises(ValueError, match="unknown world size"):
        resolve_sizes("huge")
    s = resolve_sizes("tiny", eval_queries=3, candidates=None)
    assert s.eval_queries == 3 and s.candidates == PRESETS["tiny"].candidates


def test_cli_synth_convert_check(tmp_path, capsys):
    from unime.cli import main

    out = tmp_path / "w"
    assert main(["data", "synth", "--out", str(out), "--size", "tiny", "--eval-queries", "3", "--seed", "5"]) == 0
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["sizes"]["eval_queries"] == 3 and manifest["seed"] == 5
    assert all(c["queries"] <= 3 for n, c in manifest["counts"]["eval"].items() if c["format"] == "mmeb")
    assert main(["data", "synth", "--out", str(out), "--size", "tiny"]) == 2  # exists
    src = out / "train" / "records.jsonl"
    assert main(["data", "convert", str(src), str(tmp_path / "r.json")]) == 0
    assert main(["data", "convert", str(tmp_path / "r.json"), str(tmp_path / "r.parquet")]) == 0
    assert read_records(tmp_path / "r.parquet") == read_records(src)
    assert main(["data", "check", str(tmp_path / "r.parquet"), "--data-root", str(out)]) == 0
    assert main(["data", "check", str(src)]) == 0  # train/ records the world as its data root
    assert main(["data", "check", str(src), "--data-root", str(tmp_path)]) == 1  # a given root still wins: reported
    assert "image file not found" in capsys.readouterr().out
    assert main(["data", "check", str(out / "eval/mmeb/t2i.jsonl"), "--mmeb", "--data-root", str(out)]) == 0


def test_the_train_files_find_the_worlds_images_without_data_root(tmp_path):
    """QA: `data synth` recorded no data root in WORLD/train/, so every command reading train/records.jsonl
    looked for its images under train/ unless given --data-root WORLD."""
    from unime.data.roots import resolve_data_root

    generate_world(tmp_path / "w", seed=SEED, sizes="tiny")
    assert json.loads((tmp_path / "w" / "train" / "unime_data.json").read_text()) == {"data_root": ".."}
    moved = tmp_path / "moved"
    (tmp_path / "w").rename(moved)  # recorded relative to train/: the world can move
    records = moved / "train" / "records.jsonl"
    assert resolve_data_root(records) == str(moved.resolve())
    refs = {p for r in read_records(records) for item in (r.query, r.positive, *r.negatives) for p in item.images}
    assert refs and all((moved / p).is_file() and not (moved / "train" / p).exists() for p in refs)


def test_graded_search_grades_are_the_ground_truth(world, world_dir):
    rows = [json.loads(line) for line in (world_dir / "eval/qrels/scene_search.jsonl").read_text().splitlines()]
    assert rows
    train_keys = {r.query.key for r in world.records}
    several = 0
    for row in rows:
        query = Item.from_dict(row["query"])
        cands = [Item.from_dict(c) for c in row["candidates"]]
        assert query.key not in train_keys
        assert row["relevance"] == pytest.approx(world.relevances(query, cands))
        assert max(row["relevance"]) == 1.0 and min(row["relevance"]) < 1.0
        several += row["relevance"].count(1.0) >= 2
    assert several > 0  # under-specified captions: more than one fully relevant image
