"""`unime data import` from every supported layout, and the data root recorded beside its outputs."""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from tests.captioned_folder import make_captioned_folder
from unime.cli import main
from unime.data.eval_formats import read_mmeb
from unime.data.io import read_records
from unime.data.roots import DATA_ROOT_FILE, resolve_data_root, write_data_root
from unime.errors import DataError


def _import(tmp_path, *extra) -> Path:
    photos, captions = make_captioned_folder(tmp_path / "src")
    out = tmp_path / "imp"
    assert main(["data", "import", "--captions", str(captions), "--images", str(photos), "--out", str(out),
                 "--eval-candidates", "6", *extra]) == 0
    return out


def test_csv_folder_import_writes_records_eval_judge_and_qrels(tmp_path):
    out = _import(tmp_path)
    with open(tmp_path / "src" / "captions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    captions_of: dict[str, list[str]] = {}
    for r in rows:
        captions_of.setdefault("images/" + r["file"], []).append(r["text"])
    manifest = json.loads((out / "import.json").read_text())
    assert manifest["images"] == 24 and manifest["eval_images"] == 5 and manifest["train_images"] == 19

    records = read_records(out / "train" / "records.jsonl")
    i2t = [r for r in records if r.dataset == "photos_i2t"]
    t2i = [r for r in records if r.dataset == "photos_t2i"]
    train_images = {r.query.images[0] for r in i2t}
    assert len(train_images) == 19
    # one record per (image, caption) and direction
    assert len(i2t) == len(t2i) == sum(len(captions_of[p]) for p in train_images)
    for r in i2t:
        assert r.positive.text in captions_of[r.query.images[0]] and "<|image_1|>" in r.query.text
    for r in t2i:
        assert r.positive.images[0] in train_images and r.query.text.endswith(
            tuple(captions_of[r.positive.images[0]]))

    # held-out images never appear in training; eval rows put the positive first and never repeat it
    tasks = {p.stem: read_mmeb(p) for p in sorted((out / "eval" / "mmeb").glob("*.jsonl"))}
    assert set(tasks) == {"photos_i2t", "photos_t2i", "photos_cls"}
    held = {row.query.images[0] for row in tasks["photos_i2t"]}
    assert len(held) == 5 and not held & train_images
    for row in tasks["photos_i2t"]:
        assert row.candidates[0].text == captions_of[row.query.images[0]][0]
        others = {c for p in held if p != row.query.images[0] for c in captions_of[p]}
        assert len(row.candidates) == min(6, 1 + len(others))
        assert all(c.text not in captions_of[row.query.images[0]] for c in row.candidates[1:])
    for row in tasks["photos_t2i"]:
        assert len(row.candidates) == 5  # capped by the 5 held-out images
        assert len({c.images[0] for c in row.candidates}) == 5
    shapes = {"circle", "square", "triangle"}
    for row in tasks["photos_cls"]:
        assert sorted(c.text for c in row.candidates) == sorted(shapes)  # the collection's label set
        name = row.query.images[0]
        assert row.candidates[0].text == next(r["category"] for r in rows if "images/" + r["file"] == name)

    # judge negatives: of the positive's kind, from the training pool, never the query's own image
    judge = read_records(out / "train" / "judge.jsonl")
    assert len(judge) == len(records)
    pool = {r.positive.key for r in records}
    for r in judge:
        assert len(r.negatives) == 3
        own = r.query.images[0] if r.query.images else r.positive.images[0]
        for n in r.negatives:
            assert n.key in pool and bool(n.images) == bool(r.positive.images)
            assert (n.images and n.images[0] != own) or (not n.images and n.text not in captions_of[own])

    # qrels: each distinct training query with all of its own image's items, grade 1
    qrels = [json.loads(line) for line in (out / "train" / "qrels.jsonl").read_text().splitlines()]
    assert len(qrels) == len({r.query.key for r in records})
    for q in qrels:
        if q["query"].get("images"):
            assert sorted(c["text"] for c in q["candidates"]) == sorted(captions_of[q["query"]["images"][0]])
        assert q["relevance"] == [1.0] * len(q["candidates"])

    # every data folder says where its images are; the eval config works from OUT
    assert resolve_data_root(out / "train" / "records.jsonl") == str(out.resolve())
    assert resolve_data_root(out / "eval" / "mmeb" / "photos_i2t.jsonl") == str(out.resolve())
    assert (out / "images" / "pic_001.png").is_file()

    # labelled pairs of the held-out images, for `unime judge --pairs ... --label-column label`
    from unime.mining.pairs import read_pairs

    pairs, labels = read_pairs(str(out / "eval" / "judge_pairs.jsonl"), label_column="label")
    assert len(pairs) == 5 * 2 * 4 and labels.count(1) == 10
    for (_, q, c), y in zip(pairs, labels):
        img = q.images[0] if q.images else c.images[0] if y else None
        assert (q.images[0] if q.images else None) in held | {None}
        if y and q.images:
            assert c.text == captions_of[img][0]
    assert resolve_data_root(out / "eval" / "judge_pairs.jsonl") == str(out.resolve())


def test_import_refuses_a_non_empty_folder_and_names_bad_rows(tmp_path, capsys):
    photos, captions = make_captioned_folder(tmp_path / "src")
    original = captions.read_text()
    lines = original.splitlines()
    lines[2] = "missing.png,a lost picture,circle"  # the file's line 3
    captions.write_text("\n".join(lines) + "\n")
    # the one-line error contract: exit code 2, the file, record and field on stderr
    assert main(["data", "import", "--captions", str(captions), "--images", str(photos), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "captions.csv" in err and "record line 3" in err and "field 'file'" in err
    assert main(["data", "import", "--captions", str(captions), "--images", str(photos), "--out",
                 str(tmp_path / "o2"), "--on-error", "skip"]) == 0
    assert "skipped 1 record" in capsys.readouterr().out
    # the same command again: the finished import is kept (nothing to do), the skipped row still counted
    assert main(["data", "import", "--captions", str(captions), "--images", str(photos), "--out",
                 str(tmp_path / "o2"), "--on-error", "skip"]) == 0
    shown = capsys.readouterr().out
    assert "finished earlier with the same options and inputs; nothing to do" in shown
    assert "skipped 1 record" in shown
    (tmp_path / "o3").mkdir()
    (tmp_path / "o3" / "notes.txt").write_text("mine")  # a folder unime did not write
    assert main(["data", "import", "--captions", str(captions), "--images", str(photos), "--out",
                 str(tmp_path / "o3"), "--on-error", "skip"]) == 2
    assert "not written by unime" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o3").iterdir()) == ["notes.txt"]
    # a corrupt picture is named by the user's file, not by the copy the import placed in its output
    captions.write_text(original)  # the missing file's row made good again
    broken = original.splitlines()[2].split(",")[0]
    (photos / broken).write_bytes(b"not a png")
    assert main(["data", "import", "--captions", str(captions), "--images", str(photos), "--out",
                 str(tmp_path / "o4")]) == 2
    err = capsys.readouterr().err
    assert f"corrupt or unreadable image {photos / broken}: not in an image format" in err


def test_a_rerun_from_another_working_directory_with_absolute_paths_is_the_finished_import(tmp_path, monkeypatch,
                                                                                             capsys):
    """QA: `unime data import --captions src/captions.csv --images src/photos --out imp` re-run from another folder
    with the same files named by absolute paths was refused as "a run with other options" (source: ...). Now it is
    the finished import; another collection at the same relative names is still another source, and an import.json
    without the working directory (an earlier unime) is the same import from the folder it was made in."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    photos, captions = make_captioned_folder(here / "src")
    make_captioned_folder(elsewhere / "src", seed=1)

    def argv(captions, photos, out):
        return ["data", "import", "--captions", str(captions), "--images", str(photos), "--out", str(out),
                "--eval-candidates", "6"]

    monkeypatch.chdir(here)
    relative = argv("src/captions.csv", "src/photos", "imp")
    assert main(relative) == 0
    out = here / "imp"
    manifest = json.loads((out / "import.json").read_text())
    assert manifest["identity"]["source"] == {"captions": "src/captions.csv", "images": "src/photos"}  # as typed
    capsys.readouterr()
    monkeypatch.chdir(elsewhere)
    assert main(argv(captions, photos, out)) == 0
    assert "finished earlier with the same options and inputs; nothing to do" in capsys.readouterr().out
    assert manifest["identity"]["working_dir"] == str(here.resolve())
    assert main(argv("src/captions.csv", "src/photos", out)) == 2  # elsewhere/src: another collection
    assert f"source: {{'captions': 'src/captions.csv', 'images': 'src/photos'}} (from {here.resolve()}) -> " \
        in capsys.readouterr().err
    del manifest["identity"]["working_dir"]  # recorded by an earlier unime
    (out / "import.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(here)
    assert main(relative) == 0
    assert "finished earlier with the same options and inputs; nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("earlier_lists_its_files", [True, False])
def test_an_overwrite_removes_what_the_earlier_import_wrote_and_keeps_user_files(tmp_path, earlier_lists_its_files):
    """Imported with labels, then again without (another seed, --overwrite): the first run's NAME_cls task
    stayed, its rows now the new split's training images (QA). The earlier import's files go (listed in its
    import.json; an import.json from before that list: its eval tasks); the user's files stay."""
    photos, captions = make_captioned_folder(tmp_path / "src")
    out = tmp_path / "imp"
    argv = ["data", "import", "--images", str(photos), "--out", str(out), "--name", "myphotos"]
    assert main([*argv, "--captions", str(captions), "--seed", "0"]) == 0
    assert (out / "eval" / "mmeb" / "myphotos_cls.jsonl").is_file()
    if not earlier_lists_its_files:  # an import.json written before it listed its files
        manifest = json.loads((out / "import.json").read_text())
        del manifest["written"]
        (out / "import.json").write_text(json.dumps(manifest))
    (out / "eval" / "mmeb" / "user_task.jsonl").write_text("mine")
    (out / "notes.txt").write_text("mine")
    unlabelled = tmp_path / "unlabelled.csv"
    with open(captions, newline="") as src, open(unlabelled, "w", newline="") as dst:
        w = csv.writer(dst)
        w.writerows(row[:2] for row in csv.reader(src))  # file, text: no label column
    assert main([*argv, "--captions", str(unlabelled), "--seed", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "eval" / "mmeb").iterdir()) == sorted([
        DATA_ROOT_FILE, "myphotos_i2t.jsonl", "myphotos_t2i.jsonl", "user_task.jsonl"])
    assert (out / "eval" / "mmeb" / "user_task.jsonl").read_text() == "mine"
    assert (out / "notes.txt").read_text() == "mine"
    # no task file left in the folder holds an image the new split trains on
    trained = {img for r in read_records(out / "train" / "records.jsonl") for it in (r.query, r.positive)
               for img in it.images}
    for task in (out / "eval" / "mmeb").glob("myphotos_*.jsonl"):
        for row in read_mmeb(task):
            assert not {img for it in (row.query, *row.candidates) for img in it.images} & trained, task.name
    assert "myphotos_cls" not in (out / "eval_tasks.yaml").read_text()


def test_jsonl_captions_with_column_options_and_caption_lists(tmp_path, capsys):
    photos, _ = make_captioned_folder(tmp_path / "src", n=8)
    rows = [{"img": f"pic_{i:03d}.png", "sents": [f"caption {i} a", f"caption {i} b"]} for i in range(1, 9)]
    path = tmp_path / "caps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "imp"
    assert main(["data", "import", "--captions", str(path), "--images", str(photos), "--out", str(out),
                 "--image-column", "img", "--caption-column", "sents", "--name", "mine", "--directions", "t2i"]) == 0
    records = read_records(out / "train" / "records.jsonl")
    assert {r.dataset for r in records} == {"mine_t2i"} and len(records) == 2 * 6
    assert not (out / "eval" / "mmeb" / "mine_cls.jsonl").exists()  # no labels, no classification task
    capsys.readouterr()
    assert main(["data", "import", "--captions", str(path), "--images", str(photos), "--out", str(tmp_path / "x"),
                 "--caption-column", "nope"]) == 2
    assert "no caption column 'nope'" in capsys.readouterr().err


def test_coco_captions(tmp_path, capsys):
    photos, _ = make_captioned_folder(tmp_path / "src", n=6)
    coco = {"images": [{"id": 10 + i, "file_name": f"pic_{i:03d}.png"} for i in range(1, 7)],
            "annotations": [{"id": k, "image_id": 10 + i, "caption": f"picture {i} take {k}"}
                            for i in range(1, 7) for k in (1, 2)]}
    path = tmp_path / "captions_train.json"
    path.write_text(json.dumps(coco))
    out = tmp_path / "imp"
    assert main(["data", "import", "--coco", str(path), "--images", str(photos), "--out", str(out)]) == 0
    records = read_records(out / "train" / "records.jsonl")
    assert len(records) == 2 * 2 * 4  # 4 training images x 2 captions x 2 directions
    coco["annotations"][3]["image_id"] = 99
    path.write_text(json.dumps(coco))
    capsys.readouterr()
    assert main(["data", "import", "--coco", str(path), "--images", str(photos), "--out", str(tmp_path / "x")]) == 2
    assert re.search(r"annotation 4.*image_id", capsys.readouterr().err)


def test_datasets_imagefolder_saved_dataset_and_webdataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    photos, captions = make_captioned_folder(tmp_path / "src", n=8)
    # an imagefolder: images + metadata.csv (file_name, text)
    folder = tmp_path / "imgfolder"
    folder.mkdir()
    with open(captions, newline="") as fh:
        rows = [r for r in csv.DictReader(fh)]
    meta = ["file_name,text"]
    for r in rows:
        if not (folder / r["file"]).exists():
            (folder / r["file"]).write_bytes((photos / r["file"]).read_bytes())
            meta.append(f"{r['file']},{r['text']}")
    (folder / "metadata.csv").write_text("\n".join(meta) + "\n")
    out = tmp_path / "imp1"
    assert main(["data", "import", "--hf-dataset", str(folder), "--out", str(out)]) == 0
    assert len(read_records(out / "train" / "records.jsonl")) == 2 * 6

    # a save_to_disk dataset with a ClassLabel: labels become a classification task
    from datasets import ClassLabel, Dataset, Features, Image, Value

    ds = Dataset.from_dict({"image": [str(photos / f"pic_{i:03d}.png") for i in range(1, 9)],
                            "caption": [f"cap {i}" for i in range(1, 9)], "label": [i % 2 for i in range(1, 9)]},
                           features=Features({"image": Image(), "caption": Value("string"),
                                              "label": ClassLabel(names=["even", "odd"])}))
    ds.save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "imp2"
    assert main(["data", "import", "--hf-dataset", str(tmp_path / "saved"), "--out", str(out)]) == 0
    cls = read_mmeb(out / "eval" / "mmeb" / "saved_cls.jsonl")
    assert {c.text for c in cls[0].candidates} == {"even", "odd"}

    # WebDataset shards (written here with tarfile)
    shard = tmp_path / "shards" / "data-000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for i in range(1, 9):
            for ext, payload in (("png", (photos / f"pic_{i:03d}.png").read_bytes()),
                                 ("txt", f"shard caption {i}".encode()), ("cls", str(i % 3).encode())):
                info = tarfile.TarInfo(f"sample{i:04d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    out = tmp_path / "imp3"
    assert main(["data", "import", "--webdataset", str(shard), "--out", str(out)]) == 0
    recs = read_records(out / "train" / "records.jsonl")
    assert len(recs) == 2 * 6 and all(r.query.text.startswith("<|image_1|>") or "shard caption" in r.query.text
                                      for r in recs)
    assert (out / "eval" / "mmeb" / "shards_cls.jsonl").is_file()
    assert len(list((out / "images").glob("*.png"))) == 8
    del datasets


def test_data_root_resolution_order(tmp_path):
    f = tmp_path / "a" / "records.jsonl"
    f.parent.mkdir()
    f.write_text("")
    assert resolve_data_root(f) == str(f.parent.resolve())
    assert resolve_data_root(f, "elsewhere") == "elsewhere"
    (f.parent / "manifest.json").write_text(json.dumps({"inputs": {"data_root": "/data/x"}}))
    assert resolve_data_root(f) == "/data/x"
    write_data_root(f.parent, tmp_path / "root")
    assert json.loads((f.parent / DATA_ROOT_FILE).read_text()) == {"data_root": "../root"}
    assert resolve_data_root(f) == str((tmp_path / "root").resolve())
    (f.parent / DATA_ROOT_FILE).write_text("{}")
    with pytest.raises(DataError, match="data_root"):
        resolve_data_root(f)


def test_every_reader_numbers_records_from_one(tmp_path):
    """One numbering in every message: the first line / row / list entry of a file is 1; records given in memory
    are named by their index in the list, as Python indexes it (records[0] is the first)."""
    from unime.data.images import ImageLoader
    from unime.data.io import check_images, write_records
    from unime.data.items import Item, Record

    photos, _ = make_captioned_folder(tmp_path / "src", n=2)
    good = Record(Item("q"), Item("p", ("pic_001.png",)))
    bad = Record(Item("q"), Item("p", ("gone.png",)))
    with pytest.raises(DataError, match=r"^record records\[1\], field 'positive.images\[0\]'"):  # in memory:
        check_images([good, bad], ImageLoader(photos))  # its index in the list, as Python indexes it
    # the same second record, as a JSONL line, a Parquet row and a UniME-V2 JSON list entry
    broken = Record(Item("q"), Item("p"), negatives=[Item("n")], negative_scores=[0.5])
    for suffix, where in ((".jsonl", "line 2"), (".parquet", "row 2"), (".json", "item 2")):
        path = tmp_path / f"r{suffix}"
        write_records([good, broken], path)
        if suffix == ".jsonl":
            lines = path.read_text().splitlines()
            path.write_text(lines[0] + "\n" + lines[1].replace('"negative_scores": [0.5]', '"negative_scores": [1, 2]')
                            + "\n")
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            t = pq.read_table(path).to_pylist()
            t[1]["negative_scores"] = [1.0, 2.0]
            pq.write_table(pa.Table.from_pylist(t, schema=pq.read_table(path).schema), path)
        else:
            rows = json.loads(path.read_text())
            rows[1]["hard_negatives_scores"] = [1, 2]
            path.write_text(json.dumps(rows))
        with pytest.raises(DataError, match=f"record {where}"):
            read_records(path)


def test_convert_names_the_dataset_of_records_without_one(tmp_path):
    from unime.data.io import write_records
    from unime.data.items import Item, Record

    src = tmp_path / "train.json"  # the released UniME-V2 JSON carries no dataset name
    write_records([Record(Item("q1"), Item("p1")), Record(Item("q2"), Item("p2"), dataset="kept")], src)
    assert main(["data", "convert", str(src), str(tmp_path / "out.jsonl"), "--dataset", "flowers_t2i"]) == 0
    assert [r.dataset for r in read_records(tmp_path / "out.jsonl")] == ["flowers_t2i", "kept"]


def test_images_sharing_a_caption_are_all_relevant_to_it_and_stay_on_one_side_of_the_split(tmp_path):
    """QA: with several images under one caption (common in captioned data) the import named only the first as
    the caption's relevant image (qrels), drew the others as the judge's and the eval rows' negatives, and
    could hold out an image whose caption it trained on."""
    from tests.captioned_folder import COLOURS, SHAPES, draw

    photos = tmp_path / "src" / "photos"
    photos.mkdir(parents=True)
    rows, n = [], 0
    for colour in COLOURS:
        for shape in SHAPES:
            for copy in range(3 if shape == "circle" else 1):  # three images for each "a ... circle"
                n += 1
                draw(shape, COLOURS[colour], 0.3 + 0.2 * copy).save(photos / f"p{n:02d}.png")
                rows.append(f"p{n:02d}.png,a {colour} {shape}")
    (tmp_path / "src" / "captions.csv").write_text("file,text\n" + "\n".join(rows) + "\n")
    out = tmp_path / "imp"
    assert main(["data", "import", "--captions", str(tmp_path / "src" / "captions.csv"), "--images", str(photos),
                 "--out", str(out), "--eval-candidates", "6", "--eval-fraction", "0.3"]) == 0
    caption_of = {f"images/{r.split(',')[0]}": r.split(",")[1] for r in rows}
    with_caption: dict[str, set[str]] = {}
    for path, cap in caption_of.items():
        with_caption.setdefault(cap, set()).add(path)

    records = read_records(out / "train" / "records.jsonl")
    train_images = {r.query.images[0] for r in records if r.query.images}
    held = {row.query.images[0] for row in read_mmeb(next((out / "eval" / "mmeb").glob("*_i2t.jsonl")))}
    assert train_images and held and not {caption_of[p] for p in held} & {caption_of[p] for p in train_images}
    assert len(train_images) + len(held) == n

    def caption_in(query_text: str) -> str:
        return next(c for c in with_caption if query_text.endswith(c) or f" {c}" in query_text)

    qrels = [json.loads(line) for line in (out / "train" / "qrels.jsonl").read_text().splitlines()]
    for q in qrels:
        if not q["query"].get("images"):  # a caption query: every training image with that caption
            cap = caption_in(q["query"]["text"])
            assert sorted(c["images"][0] for c in q["candidates"]) == sorted(with_caption[cap])
    assert any(len(q["candidates"]) == 3 for q in qrels)  # the shared captions were in training

    for r in read_records(out / "train" / "judge.jsonl"):
        if not r.query.images:
            cap = caption_in(r.query.text)
            assert not {neg.images[0] for neg in r.negatives} & with_caption[cap]

    for row in read_mmeb(next((out / "eval" / "mmeb").glob("*_t2i.jsonl"))):
        cap = caption_in(row.query.text)
        assert row.candidates[0].images[0] in with_caption[cap]
        assert not {c.images[0] for c in row.candidates[1:]} & with_caption[cap]

    from unime.mining.pairs import read_pairs

    pairs, labels = read_pairs(str(out / "eval" / "judge_pairs.jsonl"), label_column="label")
    for (_, q, c), y in zip(pairs, labels):
        if not q.images:
            assert (c.images[0] in with_caption[caption_in(q.text)]) == bool(y)


def test_the_split_keeps_caption_groups_together_and_is_the_plain_shuffle_without_shared_captions():
    import random

    from unime.data.import_collection import caption_groups, split_images

    assert caption_groups([["a"], ["b"], ["a", "c"], ["c"], ["d"]]) == [[0, 2, 3], [1], [4]]
    # unique captions: the seeded shuffle of the images, the first round(n * fraction) held out
    order = list(range(10))
    random.Random(7).shuffle(order)
    assert split_images(10, 0.3, 7, caption_groups([[str(i)] for i in range(10)])) == \
        (sorted(order[3:]), sorted(order[:3])) == split_images(10, 0.3, 7)
    groups = caption_groups([["x"], ["x"], ["y"], ["y"], ["z"], ["w"], ["v"], ["x"]])
    train, held = split_images(8, 0.25, 3, groups)
    for g in groups:
        assert set(g) <= set(train) or set(g) <= set(held)
    with pytest.raises(DataError, match="no split keeps 2 images on each side"):
        split_images(5, 0.4, 0, caption_groups([["x"], ["x"], ["x"], ["x"], ["y"]]))


def _photos_in(folder: Path, n: int = 6, *, lines: dict[int, str] | None = None) -> Path:
    """`n` small distinct PNGs folder/images/p{i}.png and folder/captions.csv (image, caption) naming them;
    `lines`: {line number (1-based, the header is line 1): the text it holds instead}."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (40 * i, 10, 200 - 20 * i)).save(folder / "images" / f"p{i}.png")
    rows = ["image,caption"] + [f"p{i}.png,photo {i}" for i in range(n)]
    for number, text in (lines or {}).items():
        rows[number - 1] = text
    (folder / "captions.csv").write_text("".join(row + "\n" for row in rows))
    return folder / "captions.csv"


def test_an_import_into_the_folder_that_holds_the_images_never_deletes_them(tmp_path, capsys):
    """The images already where the import places them (OUT/images): `--overwrite` unlinked each before linking
    it to itself, so the first image was deleted and the import failed (QA). The user's files are used as
    they are, by every run, and a corrupt one skipped is left in place too."""
    d = tmp_path / "d"
    captions = _photos_in(d)
    before = {p.name: p.read_bytes() for p in (d / "images").iterdir()}
    (d / "images" / "bad.png").write_bytes(b"not a png")
    with open(captions, "a") as fh:
        fh.write("bad.png,a broken photo\n")
    argv = ["data", "import", "--captions", str(captions), "--images", str(d / "images"), "--out", str(d),
            "--overwrite", "--on-error", "skip"]
    for _ in range(2):  # the first import, then one done again over it
        assert main(argv) == 0, capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in (d / "images").iterdir() if p.name != "bad.png"} == before
        assert (d / "images" / "bad.png").read_bytes() == b"not a png"
    records = read_records(d / "train" / "records.jsonl")
    assert {img for r in records for it in (r.query, r.positive) for img in it.images} <= {
        f"images/{name}" for name in before}
    assert not [f for f in json.loads((d / "import.json").read_text())["written"] if f.startswith("images/")]
    # another collection imported over it: the earlier import's files go, the photos it did not write stay
    photos, other = make_captioned_folder(tmp_path / "src", n=6)
    assert main(["data", "import", "--captions", str(other), "--images", str(photos), "--out", str(d),
                 "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in (d / "images").iterdir() if p.name in before} == before


@pytest.mark.parametrize("recorded", ["relative to the folder's parent", "relative to its working_dir"])
def test_an_older_import_that_listed_the_photos_it_used_in_place_as_written_keeps_them(
        tmp_path, monkeypatch, caplog, recorded):
    """An older unime listed the user's photos it used in place (`--images OUT/images`) under `written` in
    import.json; an import of another collection over it with --overwrite removed them as the earlier import's
    files. Files of the images folder the earlier import recorded reading are kept, named in a warning; the
    import's own files still go. The old record is hand-written: its source relative to OUT's parent (no
    working_dir, run from elsewhere), or to the working_dir it records."""
    import logging

    d = tmp_path / "d"
    captions = _photos_in(d)
    before = {p.name: p.read_bytes() for p in (d / "images").iterdir()}
    assert main(["data", "import", "--captions", str(captions), "--images", str(d / "images"), "--out", str(d),
                 "--overwrite"]) == 0
    manifest = json.loads((d / "import.json").read_text())
    photos = sorted(f"images/{name}" for name in before)
    manifest["written"] = sorted(manifest["written"] + photos)  # as the older unime wrote it
    del manifest["identity"]["working_dir"]
    if recorded == "relative to its working_dir":
        manifest["source"] = {"captions": "captions.csv", "images": "images"}
        manifest["identity"]["working_dir"] = str(d)
    else:
        manifest["source"] = {"captions": "d/captions.csv", "images": "d/images"}
    (d / "import.json").write_text(json.dumps(manifest))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    folder, other = make_captioned_folder(tmp_path / "src", n=6)
    with caplog.at_level(logging.WARNING):
        assert main(["data", "import", "--captions", str(other), "--images", str(folder), "--out", str(d),
                     "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in (d / "images").iterdir() if p.name in before} == before
    lines = [r.getMessage() for r in caplog.records if "kept" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(": " + ", ".join(photos)), lines
    # the earlier import's own files went: its records name none of the photos now
    records = read_records(d / "train" / "records.jsonl")
    assert not {img for r in records for it in (r.query, r.positive) for img in it.images} & set(photos)


def test_record_ids_stay_unique_when_two_image_paths_flatten_to_one_name(tmp_path):
    """`a/x.png` and `a_x.png` both became id stem `a_x` (the `/` mapped to `_`), so every output held each id
    twice (QA). The first keeps its id, the later one is told apart; ids of other images are unchanged."""
    d = tmp_path / "d"
    captions = _photos_in(d)
    (d / "images" / "a").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), (1, 2, 3)).save(d / "images" / "a" / "x.png")
    Image.new("RGB", (8, 8), (3, 2, 1)).save(d / "images" / "a_x.png")
    with open(captions, "a") as fh:
        fh.write("a/x.png,a photo in a folder\na_x.png,a photo with an underscore\n")
    out = tmp_path / "out"
    assert main(["data", "import", "--captions", str(captions), "--images", str(d / "images"), "--out", str(out),
                 "--seed", "3"]) == 0
    records = read_records(out / "train" / "records.jsonl")
    rows = {f.name: [json.loads(line) for line in f.read_text().splitlines()]
            for f in [out / "train" / "judge.jsonl", out / "train" / "qrels.jsonl", out / "eval" / "judge_pairs.jsonl",
                      *(out / "eval" / "mmeb").glob("*.jsonl")]}
    assert len({r.id for r in records}) == len(records)
    for name, file_rows in rows.items():
        assert len({r["id"] for r in file_rows}) == len(file_rows), name
    stems: dict[str, set[str]] = {}  # id stem -> the images its image queries show
    for r in records:
        if r.query.images:
            stems.setdefault(r.id.rsplit("-", 2)[0], set()).add(r.query.images[0])
    for row in read_mmeb(next((out / "eval" / "mmeb").glob("*_i2t.jsonl"))):
        stems.setdefault(row.id.rsplit("-", 1)[0], set()).add(row.query.images[0])
    assert all(len(images) == 1 for images in stems.values()), stems
    assert {s: i.pop() for s, i in stems.items() if s.startswith("p")} == {f"p{k}": f"images/p{k}.png"
                                                                           for k in range(6)}
    assert {s for s in stems if s.startswith("a")} == {"a_x", "a_x~2"}


def test_a_caption_row_with_more_fields_than_the_header_is_an_error_not_a_shortened_caption(tmp_path, capsys):
    """`p1.png,a red, round photo` (an unquoted comma) was read as the caption "a red", the rest dropped (QA)."""
    d = tmp_path / "d"
    captions = _photos_in(d, lines={3: "p1.png,a red, round photo"})
    argv = ["data", "import", "--captions", str(captions), "--images", str(d / "images")]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "captions.csv" in err and "record line 3" in err and "3 fields, the header has 2" in err
    assert main([*argv, "--out", str(tmp_path / "o2"), "--on-error", "skip"]) == 0
    assert "skipped 1 record" in capsys.readouterr().out
    texts = {r.positive.text for r in read_records(tmp_path / "o2" / "train" / "records.jsonl") if r.query.images}
    assert not any(t.startswith("a red") for t in texts)


@pytest.mark.parametrize("header,delimiter,encoding,extra", [
    ("image,caption", ",", "utf-8-sig", []),  # Excel's "CSV UTF-8" starts with a byte-order mark
    ("Image,Caption", ",", "utf-8", []),  # header names in any case
    ("IMAGE;CAPTION", ";", "utf-8", ["--delimiter", ";"]),
    ("image\tcaption", "\t", "utf-8", ["--delimiter", "\\t"]),  # a tab as typed on a command line
])
def test_captions_files_as_spreadsheets_write_them_are_read(tmp_path, capsys, header, delimiter, encoding, extra):
    d = tmp_path / "d"
    _photos_in(d)
    captions = tmp_path / "captions.csv"
    captions.write_text(header + "\n" + "".join(f"p{i}.png{delimiter}photo {i}\n" for i in range(6)), encoding=encoding)
    assert main(["data", "import", "--captions", str(captions), "--images", str(d / "images"), "--out",
                 str(tmp_path / "o"), *extra]) == 0, capsys.readouterr().err
    records = read_records(tmp_path / "o" / "train" / "records.jsonl")
    assert {r.positive.text for r in records if r.query.images} <= {f"photo {i}" for i in range(6)}
    assert len(records) == 2 * 4


@pytest.mark.parametrize("name,content,expected", [
    ("captions.csv", "image;caption\np0.png;photo 0\n", "the header reads as one column 'image;caption': are the "
     "fields separated by ';'? give --delimiter ';'"),
    ("captions.csv", "image\tcaption\np0.png\tphoto 0\n", "are the fields separated by tabs? give --delimiter '\\t'"),
    ("captions.json", '{"image": "p0.png", "caption": "photo 0"}\n', "a captions file ending in '.json' is not read: "
     "--captions reads CSV (.csv, .txt), TSV (.tsv, .tab) or JSON lines (.jsonl, .ndjson)"),
    ("captions.parquet", "PAR1", "a captions file ending in '.parquet' is not read"),
    ("captions.csv", "image,caption,caption\np0.png,a,b\n", "columns named alike"),
    ("captions.csv", "Image,IMAGE,caption\np0.png,p1.png,a\n", "2 image columns ['Image', 'IMAGE']"),
])
def test_a_captions_file_that_is_not_comma_separated_text_is_named_with_what_to_do(tmp_path, capsys, name, content,
                                                                                  expected):
    d = tmp_path / "d"
    _photos_in(d)
    (tmp_path / name).write_text(content)
    assert main(["data", "import", "--captions", str(tmp_path / name), "--images", str(d / "images"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and name in err, err
    assert expected in err, err


def test_an_import_left_with_too_few_images_by_skips_shows_which_rows_it_skipped(tmp_path, capsys):
    """Only "0 usable image(s): an import needs at least 4" was printed; the skipped rows, and why, never (QA)."""
    d = tmp_path / "d"
    captions = _photos_in(d, lines={2: "missing.png,a lost photo"})
    for i in (1, 2, 3):
        (d / "images" / f"p{i}.png").write_bytes(b"not a png")
    assert main(["data", "import", "--captions", str(captions), "--images", str(d / "images"), "--out",
                 str(tmp_path / "o"), "--on-error", "skip"]) == 2
    shown = capsys.readouterr()
    assert "2 usable image(s): an import needs at least 4" in shown.err
    assert "skipped 4 record(s) (image: 4)" in shown.out
    assert "record line 2" in shown.out and "missing.png" in shown.out
    for i in (1, 2, 3):
        assert f"p{i}.png" in shown.out


def test_a_video_file_given_to_import_is_named_as_a_video_not_a_corrupt_image(tmp_path, capsys):
    """A clip in the captions file was "a corrupt or unreadable image ... not in an image format PIL can read" (QA):
    import takes images; a video item is a record with a "video" field."""
    d = tmp_path / "d"
    captions = _photos_in(d)
    (d / "images" / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    with open(captions, "a") as fh:
        fh.write("clip.mp4,a short clip\n")  # the file's line 8
    argv = ["data", "import", "--captions", str(captions), "--images", str(d / "images")]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "record line 8" in err and "clip.mp4 is a video file: data import takes images only" in err, err
    assert 'a video item is a record with a "video" field (docs/CONTRACTS.md, "Items and records")' in err, err
    assert "corrupt" not in err
    assert main([*argv, "--out", str(tmp_path / "o2"), "--on-error", "skip"]) == 0
    assert "skipped 1 record(s) (image: 1)" in capsys.readouterr().out
    assert not (tmp_path / "o2" / "images" / "clip.mp4").exists()


def test_a_captions_file_of_videos_is_told_import_takes_images_not_to_name_the_image_column(tmp_path, capsys):
    """QA (video): captions.jsonl of {"video", "text"} rows was refused with "no image column (...); name it with
    --image-column", and `--image-column video` was then refused for every row as a video file. The first refusal
    says what the second does, naming the column."""
    (tmp_path / "clips").mkdir()
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"id": f"c{i}", "video": f"clips/c{i}.mp4", "text": f"clip {i}"}) + "\n"
                                for i in range(4)), encoding="utf-8")
    assert main(["data", "import", "--captions", str(captions), "--images", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"unime: error: {captions}, field 'video': no image column (looked for ['image', 'file_name', 'filename', "
        "'file', 'path', 'img']; the columns are ['id', 'video', 'text']): data import takes images only; a video "
        'item is a record with a "video" field (docs/CONTRACTS.md, "Items and records")')


def test_data_check_reads_or_names_every_file_the_import_writes(tmp_path, capsys):
    """QA: `data check` on an import's MMEB file reported every row bad ("missing key(s) ['positive', 'query']"),
    on train/qrels.jsonl and eval/judge_pairs.jsonl likewise, and on eval_tasks.yaml ended with the Python API's
    "or pass format=". MMEB-eval rows, qrels rows and judge pairs are recognised by their keys and checked with their
    images; a file it does not read is named, with the command that reads it."""
    out = _import(tmp_path)
    capsys.readouterr()
    for name in ("photos_i2t", "photos_t2i", "photos_cls"):
        f = out / "eval" / "mmeb" / f"{name}.jsonl"
        assert main(["data", "check", str(f)]) == 0
        assert capsys.readouterr().out.startswith(f"{f}: MMEB-eval rows: 5 good, 0 bad rows, 0 with bad images")
    for f in ("train/records.jsonl", "train/judge.jsonl"):
        assert main(["data", "check", str(out / f)]) == 0
    n_qrels = len((out / "train/qrels.jsonl").read_text().splitlines())
    n_pairs = len((out / "eval/judge_pairs.jsonl").read_text().splitlines())
    capsys.readouterr()
    assert main(["data", "check", str(out / "train/qrels.jsonl")]) == 0
    assert capsys.readouterr().out.startswith(f"{out / 'train/qrels.jsonl'}: qrels rows: {n_qrels} good, 0 bad rows, "
                                              "0 with bad images (image paths resolved against ")
    assert main(["data", "check", str(out / "eval/judge_pairs.jsonl")]) == 0
    assert capsys.readouterr().out.startswith(f"{out / 'eval/judge_pairs.jsonl'}: judge pairs (label column "
                                              f"'label'): {n_pairs} good, 0 bad rows, 0 with bad images")
    cases = {"eval_tasks.yaml": "an eval task config, not a data file: `unime eval --tasks FILE` reads it",
             "train/corpus.txt": "`unime data check` reads JSON Lines (.jsonl: training records"}
    capsys.readouterr()
    for f, fragment in cases.items():
        assert main(["data", "check", str(out / f)]) == 2, f
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"unime: error: {out / f}: ") and fragment in err[0], err
        assert "format=" not in err[0]
    assert main(["data", "check", "--mmeb", str(out / "train/records.jsonl")]) == 2
    assert "holds training records (query, positive), not MMEB-eval rows: check it without --mmeb" in \
        capsys.readouterr().err


def test_the_import_logs_each_stage_with_its_count_and_elapsed_time(tmp_path, caplog):
    """QA: an import of 20,000 captions printed nothing for minutes after writing train/records.jsonl."""
    import logging

    with caplog.at_level(logging.INFO, logger="unime.data.import_collection"):
        out = _import(tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "unime.data.import_collection"]
    n_records = len(read_records(out / "train" / "records.jsonl"))
    n_qrels = len((out / "train" / "qrels.jsonl").read_text().splitlines())
    expected = [r"24 captioned images read", r"24 of 24 images placed and read",
                rf"{n_records} training records written \(19 train images, 5 held out\)",
                rf"{n_records} judge records written", rf"{n_qrels} qrels rows written",
                r"eval rows written: photos_i2t 5, photos_t2i 5, photos_cls 5", r"40 judge pairs written"]
    assert len(lines) == len(expected)
    for line, what in zip(lines, expected):
        assert re.fullmatch(rf"{re.escape(str(out))}: {what} \(\d+\.\d s\)", line), line


def _red_squares(folder: Path, n: int = 8) -> list[str]:
    """`n` distinct PNGs folder/a{i}.png; returns their names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 30, 0, 0)).save(folder / f"a{i}.png")
    return [f"a{i}.png" for i in range(n)]


@pytest.mark.parametrize("layout", ["imagefolder", "saved_strings"])
@pytest.mark.parametrize("link_fails", [False, True])
def test_a_dataset_listing_one_image_on_several_rows_gives_one_image_with_each_caption(tmp_path, monkeypatch,
                                                                                      layout, link_fails):
    """An imagefolder (metadata.jsonl) or save_to_disk dataset with two rows for a1.png (two captions): the second
    row's image was renamed a1-000009.png and never written, so the import stopped with 'image file not found'
    (QA; when os.link worked). It is one image with both captions, as the --captions reader merges a repeated
    image, whether the image is hard-linked or copied."""
    datasets = pytest.importorskip("datasets")
    if link_fails:
        def no_link(*args, **kwargs):
            raise OSError("cross-device link")
        monkeypatch.setattr("os.link", no_link)
    data = tmp_path / "ds"
    names = [f"a{i}.png" for i in range(8)] + ["a1.png"]
    captions = [f"red {i}" for i in range(8)] + ["red 1 again"]
    if layout == "imagefolder":
        data.mkdir()
        (data / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "text": c}) + "\n"
                                                     for f, c in zip(names, captions)))
    else:  # image paths as strings, relative to the dataset folder
        datasets.Dataset.from_dict({"image": names, "caption": captions}).save_to_disk(str(data))
    _red_squares(data)
    out = tmp_path / "out"
    assert main(["data", "import", "--hf-dataset", str(data), "--out", str(out), "--seed", "1"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(names[:8])
    manifest = json.loads((out / "import.json").read_text())
    assert manifest["images"] == 8 and manifest["skipped"]["total"] == 0
    records = read_records(out / "train" / "records.jsonl")
    of_a1 = {r.positive.text for r in records if r.query.images == ("images/a1.png",)}
    assert of_a1 == {"red 1", "red 1 again"}  # a1 is a training image with seed 1
    assert {r.positive.images[0] for r in records if r.query.text.endswith("red 1 again")} == {"images/a1.png"}


def test_images_is_the_folder_of_a_datasets_relative_image_paths_and_is_checked(tmp_path, capsys):
    """--images was ignored with --hf-dataset: a save_to_disk dataset naming its images by relative path, kept in
    a folder of their own, failed with "image file not found: 'a0.png'" naming no folder, and --images /nonexistent
    ran without complaint (QA). --images is the folder those paths are relative to (default: the dataset folder);
    a missing file names the folder looked in; a folder that does not exist is refused."""
    datasets = pytest.importorskip("datasets")
    photos = tmp_path / "photos"
    names = _red_squares(photos)
    saved = tmp_path / "hf_str"
    datasets.Dataset.from_dict({"image": names, "caption": [f"red {i}" for i in range(8)]}).save_to_disk(str(saved))

    assert main(["data", "import", "--hf-dataset", str(saved), "--out", str(tmp_path / "no_images")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unime: error: {saved}, record row 1, field 'image': image file not found: 'a0.png' (looked in "
        f"{str(saved)!r})")

    out = tmp_path / "out"
    assert main(["data", "import", "--hf-dataset", str(saved), "--images", str(photos), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    assert (out / "images" / "a3.png").read_bytes() == (photos / "a3.png").read_bytes()

    (photos / "a5.png").unlink()
    assert main(["data", "import", "--hf-dataset", str(saved), "--images", str(photos), "--out",
                 str(tmp_path / "gone")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unime: error: {saved}, record row 6, field 'image': image file not found: 'a5.png' (looked in "
        f"{str(photos)!r})")

    folder = tmp_path / "imgfolder"  # an imagefolder names its files itself; --images must still exist
    _red_squares(folder)
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "text": f"red {f}"}) + "\n"
                                                   for f in names))
    missing = tmp_path / "nonexistent"
    assert main(["data", "import", "--hf-dataset", str(folder), "--images", str(missing), "--out",
                 str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unime: error: {folder}: images folder not found: {str(missing)!r}")
    assert not (tmp_path / "x" / "images").exists()


def _class_folders(folder: Path, *, at_root: int = 0, own_label: bool = False) -> None:
    """folder/{circle,square}/img_00k.png (4 each; `at_root` of the squares directly in folder) and
    folder/metadata.jsonl naming them with a caption (and, `own_label`, a label of its own)."""
    from PIL import Image

    rows = []
    for c, shape in enumerate(("circle", "square")):
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for k in range(4):
            name = f"img_{c}{k}.png" if shape == "square" and k < at_root else f"{shape}/img_{c}{k}.png"
            Image.new("RGB", (16, 16), (60 * k, 100 * c, 20)).save(folder / name)
            row = {"file_name": name, "caption": f"a {shape} number {k}"}
            if own_label:
                row["label"] = "round" if shape == "circle" else "boxy"
            rows.append(row)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_an_imagefolder_with_metadata_keeps_its_class_sub_folders_as_labels(tmp_path, capsys):
    """`datasets` drops an imagefolder's class sub-folder labels whenever it has a metadata file, so
    clsfold/{circle,square}/*.png + metadata.jsonl imported with no labels and no _cls task, and --label-column
    label said "no label column 'label'" (QA), though the docs promised class sub-folders as labels. When every
    file sits in a first-level sub-folder its name is the label (column `label`), unless the metadata has one."""
    pytest.importorskip("datasets")
    folder = tmp_path / "clsfold"
    _class_folders(folder)
    for n, extra in enumerate(([], ["--label-column", "label"])):
        out = tmp_path / f"out{n}"
        assert main(["data", "import", "--hf-dataset", str(folder), "--out", str(out), "--eval-fraction", "0.5",
                     *extra]) == 0
        manifest = json.loads((out / "import.json").read_text())
        assert manifest["labels"] == ["circle", "square"] and "clsfold_cls" in manifest["eval_tasks"]
        rows = read_mmeb(out / "eval" / "mmeb" / "clsfold_cls.jsonl")
        assert len(rows) == 4
        for row in rows:  # the positive: the image's folder (img_0k: a circle, img_1k: a square)
            shape = ("circle", "square")[int(re.search(r"img_(\d)\d\.png$", row.query.images[0]).group(1))]
            assert row.candidates[0].text == shape

    own = tmp_path / "own"  # the metadata's own label column wins
    _class_folders(own, own_label=True)
    assert main(["data", "import", "--hf-dataset", str(own), "--out", str(tmp_path / "o_own")]) == 0
    assert json.loads((tmp_path / "o_own" / "import.json").read_text())["labels"] == ["boxy", "round"]

    mixed = tmp_path / "mixed"  # files beside the sub-folders: no folder labels (HF's own rule)
    _class_folders(mixed, at_root=2)
    assert main(["data", "import", "--hf-dataset", str(mixed), "--out", str(tmp_path / "o_mixed")]) == 0
    assert json.loads((tmp_path / "o_mixed" / "import.json").read_text())["labels"] == []
    assert main(["data", "import", "--hf-dataset", str(mixed), "--out", str(tmp_path / "o_mixed2"),
                 "--label-column", "label"]) == 2
    assert "no label column 'label'" in capsys.readouterr().err


def test_import_refuses_or_skips_an_image_over_the_processors_aspect_ratio(tmp_path, capsys):
    """QA: a 1000x4 banner.png (250:1) in a captions CSV was imported, and every model command then refused it (the
    Qwen-VL processors take 200:1 at most). It is a bad image of the import now: refused naming the row (the default
    policy), or left out and counted under --on-error skip, its records and its copy under OUT/images with it."""
    from PIL import Image

    photos, captions = make_captioned_folder(tmp_path / "src")
    Image.new("RGB", (1000, 4), (200, 0, 0)).save(photos / "banner.png")
    banner_line = len(captions.read_text().splitlines()) + 1  # after the header and the rows
    with open(captions, "a") as fh:
        fh.write("banner.png,a long red banner,square\n")
    run = ["data", "import", "--captions", str(captions), "--images", str(photos)]
    assert main([*run, "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unime: error: {captions}, record line {banner_line}, field 'file': image {photos / 'banner.png'} is 1000x4: "
        "its long side is 250 times its short side, over the 200 the model's image processor accepts")
    assert main([*run, "--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 record(s) (image: 1)" in out, out
    assert not (tmp_path / "b" / "images" / "banner.png").exists()
    assert "banner" not in "".join(p.read_text() for p in (tmp_path / "b").rglob("*.jsonl"))
    assert main(["data", "check", str(tmp_path / "b" / "train" / "records.jsonl")]) == 0


def test_inline_image_bytes_are_named_by_their_content_a_heic_image_too(tmp_path, monkeypatch):
    """QA: the bytes of a HEIC image (a dataset column of bytes), which PIL here cannot read, were written as
    `images/NAME.png`, and the loader's refusal named that .png. HEIF / HEIC / AVIF bytes are named by their ``ftyp``
    brands; every other format keeps the name it had (the format PIL reads)."""
    from PIL import Image, features

    import unime.data.images as images_module
    from unime.data.collections import CaptionedImage
    from unime.data.import_collection import place_images
    from unime.data.skips import ErrorPolicy, SkipReport

    monkeypatch.setitem(images_module._PLUGINS_LOADED, "pillow_heif", False)  # as where pillow-heif is not installed

    def ftyp(major: bytes, *compatible: bytes) -> bytes:  # an ISO-BMFF file's ``ftyp`` box, then a ``meta`` box
        body = major + b"\0\0\0\0" + b"".join(compatible)
        return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\0\0\0\x20meta" + bytes(24)

    def encoded(fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format=fmt)
        return buf.getvalue()

    payloads = {"a": encoded("PNG"), "b": encoded("JPEG"), "c": encoded("WEBP"), "d": encoded("GIF"),
                "e": encoded("BMP"), "f": encoded("TIFF"), "h": ftyp(b"heic", b"mif1", b"heic"),
                "i": ftyp(b"mif1", b"mif1", b"heic"), "j": ftyp(b"mif1", b"mif1", b"miaf"), "k": b"not an image"}
    expected = {"a": ".png", "b": ".jpg", "c": ".webp", "d": ".gif", "e": ".bmp", "f": ".tiff", "h": ".heic",
                "i": ".heic", "j": ".heif", "k": ".png"}
    if features.check("avif"):
        payloads["g"], expected["g"] = encoded("AVIF"), ".avif"
    images = [CaptionedImage(id=k, image=v, captions=[f"photo {k}"], source="data.parquet", record=f"row {n}",
                             name_hint=f"{k}.bin") for n, (k, v) in enumerate(payloads.items(), 1)]
    policy = ErrorPolicy("skip", SkipReport(max_examples=10), "import")
    placed, wrote = place_images(images, tmp_path, policy)
    readable = {k for k in payloads if k not in "hijk"}
    assert {rel for _, rel in placed} == {f"images/{k}{expected[k]}" for k in readable}
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(f"{k}{expected[k]}" for k in readable)
    shown = {e.record: e.message for e in policy.skips.examples}
    assert sorted(shown) == ["row 10", "row 7", "row 8", "row 9"]
    for k, row in (("h", 7), ("i", 8)):  # the loader's error names the file as written, and what to install
        assert shown[f"row {row}"] == (f"data.parquet, record row {row}, field 'image': image images/{k}.heic is a "
                                       "HEIF / HEIC image, which PIL cannot read without the pillow-heif package "
                                       "(pip install pillow-heif)")
    assert "image images/j.heif is a HEIF / HEIC image" in shown["row 9"]
