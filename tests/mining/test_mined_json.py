"""mined.json, the released UniME-V2 JSON format (SPEC 1.4), beside mined.parquet: the format holds no video, so a
mined set with one video negative gets a mined.json of the records it can hold (with a WARNING and the count in
stats.json and report.md), not none at all; the parquet keeps every record."""

from __future__ import annotations

import json
import logging

import numpy as np
from PIL import Image

from tests.data.helpers import mined_parquet_with_one_video_negative
from unime.data.io import read_records, read_unime_v2_json, write_records
from unime.mining.stages import write_mined_parquet, write_outputs


def test_mined_json_holds_the_records_the_format_can_hold(tmp_path, caplog):
    mined = read_records(mined_parquet_with_one_video_negative(tmp_path / "in.parquet"))
    out = tmp_path / "run"
    out.mkdir()
    with caplog.at_level(logging.WARNING, logger="unime.mining.stages"):
        notes = write_outputs(out, mined, [], {})
    assert not (out / "mined.parquet").exists()  # written last of a run, after stats.json and report.md
    write_mined_parquet(out, mined)
    assert [r.id for r in read_records(out / "mined.parquet")] == ["m1", "m2", "m3"]
    assert [r.id for r in read_unime_v2_json(out / "mined.json")] == ["m1", "m3"]
    assert notes["json"] == "written" and notes["json_records"] == 2 and notes["json_left_out"] == 1
    assert "record row 2 (id m2), field 'negatives[1]': the UniME-V2 JSON format holds no video" in \
        notes["json_left_out_summary"]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and warning[0].startswith("mined.json holds 2 of the 3 mined records")
    assert "record row 2 (id m2), field 'negatives[1]'" in warning[0]


def test_mined_json_is_not_written_when_it_would_hold_no_record(tmp_path):
    mined = read_records(mined_parquet_with_one_video_negative(tmp_path / "in.parquet"))[1:2]  # only m2
    out = tmp_path / "run"
    out.mkdir()
    notes = write_outputs(out, mined, [], {})
    write_mined_parquet(out, mined)
    assert not (out / "mined.json").exists() and [r.id for r in read_records(out / "mined.parquet")] == ["m2"]
    assert notes["json"] == "not written: none of the 1 mined records fits the UniME-V2 JSON format"
    assert notes["json_records"] == 0 and notes["json_left_out"] == 1
    json.dumps(notes)  # stats.json carries them


def test_mined_json_without_a_record_never_appears_at_its_path(tmp_path):
    """write_mined_json wrote mined.json and then unlinked it when it held no record: for a moment the path held an
    empty list (and a file already there was replaced, then deleted). It writes through `atomic_path` now: the
    path is left as it was, no temporary file is left beside it."""
    from unime.mining.stages import write_mined_json

    mined = read_records(mined_parquet_with_one_video_negative(tmp_path / "in.parquet"))
    out = tmp_path / "run"
    out.mkdir()
    (out / "mined.json").write_bytes(b"not mine\n")
    notes = write_mined_json(out / "mined.json", mined[1:2])  # only m2, which has a video negative
    assert notes["json"].startswith("not written") and notes["json_records"] == 0
    assert (out / "mined.json").read_bytes() == b"not mine\n"
    assert sorted(p.name for p in out.iterdir()) == ["mined.json"]
    (out / "mined.json").unlink()
    write_mined_json(out / "mined.json", mined[1:2])
    assert list(out.iterdir()) == []
    # a file that holds records: the bytes write_records writes
    assert write_mined_json(out / "mined.json", mined)["json_records"] == 2
    write_records(mined, tmp_path / "direct.json", format="unime_v2_json", on_error="skip")
    assert (out / "mined.json").read_bytes() == (tmp_path / "direct.json").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["mined.json"]


def test_mining_with_a_video_in_the_pool_writes_mined_json_and_reports_what_it_left_out(tmp_path, tiny_model_dir):
    from tests.data.helpers import write_clip
    from tests.mining.helpers import write_dataset
    from unime.mining.config import MineConfig
    from unime.mining.pipeline import run_mining

    records = write_dataset(tmp_path / "data")
    (tmp_path / "data/clips").mkdir()
    write_clip(tmp_path / "data/clips/v0.mp4", n=6, fps=5)
    # a global pool: one video and four noise images, the candidates of image and text queries alike
    lines = [{"text": "Understand the content of the provided video.", "video": ["clips/v0.mp4"]}]
    rng = np.random.default_rng(1)
    for j in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3)).astype(np.uint8)).save(tmp_path / f"data/img/n{j}.png")
        lines.append({"text": "<|image_1|>\nRepresent the given image.", "images": [f"img/n{j}.png"]})
    pool = tmp_path / "data/pool.jsonl"
    pool.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    result = run_mining(MineConfig(records=str(records), pool=str(pool), embedder=tiny_model_dir("qwen2_vl"),
                                   judge=tiny_model_dir("qwen2_5_vl"), out=str(tmp_path / "run"), k=2, count=1,
                                   interval=1, shard_size=4, device="cpu", judge_chunk_size=4, embed_batch_size=4))
    out = result.out
    mined = read_records(out / "mined.parquet")
    with_video = [r.id for r in mined if any(n.video for n in r.negatives)]
    held = [r.id for r in mined if r.id not in with_video]
    assert with_video and held  # the run leaves some out and keeps others (deterministic tiny models)
    assert [r.id for r in read_unime_v2_json(out / "mined.json")] == held
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))["outputs"]
    assert stats["json"] == "written" and stats["json_records"] == len(held)
    assert stats["json_left_out"] == len(with_video)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"**mined.json holds {len(held)} of the {len(mined)} mined records**" in report
    assert f"skipped {len(with_video)} record(s) the UniME-V2 JSON format cannot hold" in report
    assert f"record {with_video[0]}, field 'negatives[" in report


def test_in_the_demo_the_left_out_examples_go_to_the_stages_log_only(tmp_path):
    """The warning's example records (one line each) are details: the demo's console shows its first line (naming the
    log), the stage's log all of it; `unime mine`'s console (`unime.cli.configure_logging`'s handler) all of it, as
    before."""
    import io

    from unime.demo.stage_logs import StageLogging

    mined = read_records(mined_parquet_with_one_video_negative(tmp_path / "in.parquet"))
    root, stream = logging.getLogger(), io.StringIO()
    console = logging.StreamHandler(stream)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = root.level
    root.addHandler(console)
    root.setLevel(logging.INFO)
    try:
        (tmp_path / "mine").mkdir()
        write_outputs(tmp_path / "mine", mined, [], {})  # `unime mine`: no stage routing
        alone = stream.getvalue()
        stream.truncate(0), stream.seek(0)
        (tmp_path / "demo").mkdir()
        log = tmp_path / "logs" / "mine.log"
        with StageLogging(log).routed():
            write_outputs(tmp_path / "demo", mined, [], {})
    finally:
        root.removeHandler(console)
        root.setLevel(saved)
    summary = ("WARNING unime.mining.stages: mined.json holds 2 of the 3 mined records (mined.parquet has every "
               "record): skipped 1 record(s) the UniME-V2 JSON format cannot hold (output_format: 1)")
    example = "  - record row 2 (id m2), field 'negatives[1]': the UniME-V2 JSON format holds no video"
    assert alone.splitlines() == [summary, example]
    assert stream.getvalue().splitlines() == [f"{summary} (1 more line(s) in {log})"]
    assert example in log.read_text().splitlines()
