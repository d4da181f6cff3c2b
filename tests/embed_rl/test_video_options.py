"""QA: `unime reason generate` and `reason split` took no `--video-*` options, although `eval`, `embed` and `train
reasoner` do: a clip was shown to the reasoner / the match judge with the default 8 frames whatever the user chose.
Each now takes them and they reach the processor: the generated world's clips have 8 frames at 4 fps, so
`--video-frames 4` and `--video-fps 2` (2 s of video) both give 4 frames per clip instead of 8."""

from __future__ import annotations

import pytest

from unime.data.items import Record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip_world(tmp_path_factory):
    """A tiny generated world with clips (8 frames each); its clip classification records (a clip query, a text
    positive), and T-CoTs for them from the annotation teacher."""
    from unime.data.io import read_records, write_records
    from unime.data.synth import VideoSizes, generate_world
    from unime.reasoning.reasoner import write_tcot_rows
    from unime.reasoning.teacher import AnnotationTeacher

    root = tmp_path_factory.mktemp("clip_world") / "world"
    generate_world(root, sizes="tiny", video=VideoSizes(eval_clips=1, train_clips=2))
    recs = [r for r in read_records(root / "train" / "video_records.jsonl") if r.dataset == "clip_cls"]
    assert len(recs) == 2 and all(r.query.video and not r.positive.video for r in recs)
    write_records([Record(query=r.query, positive=r.positive, dataset=r.dataset, id=r.id) for r in recs],
                  root / "clip_records.jsonl")
    write_tcot_rows(AnnotationTeacher(root).tcot_rows(recs), root / "clip_tcots.jsonl")
    return root


@pytest.fixture
def frames_seen(monkeypatch):
    """Per call of the family adapter's `processor_inputs` (what goes to the processor): the images (the
    reasoner's prompt shows a clip as its frames, each an image) and the frames of each video (the judge's
    video path)."""
    from unime.data.video import as_video
    from unime.models.adapters import FamilyAdapter

    seen = []
    original = FamilyAdapter.processor_inputs

    def counting(self, texts, segments_per_text, **kwargs):
        for segs in segments_per_text:
            seen.append({"images": sum(s.kind == "image" for s in segs),
                         "videos": [len(as_video(s.value).frames) for s in segs if s.kind == "video"]})
        return original(self, texts, segments_per_text, **kwargs)

    monkeypatch.setattr(FamilyAdapter, "processor_inputs", counting)
    return seen


def _argv(command, root, model, out, tcots=None):
    records, tcots = str(root / "clip_records.jsonl"), str(tcots or root / "clip_tcots.jsonl")
    return {
        "reason generate": ["reason", "generate", "--model", model, "--records", records, "--sides", "query",
                            "--max-new-tokens", "1", "--device", "cpu", "--out", f"{out}/t.jsonl"],
        "reason split": ["reason", "split", "--records", records, "--tcots", tcots, "--judge", model,
                         "--device", "cpu", "--out-dir", str(out)],
    }[command]


@pytest.mark.parametrize("command", ["reason generate", "reason split"])
def test_the_video_options_reach_the_processor(command, clip_world, tiny_model_dir, frames_seen, tmp_path):
    from unime.cli import main
    from unime.reasoning.reasoner import read_tcot_rows

    model = tiny_model_dir("qwen2_vl")
    seen = {}
    for name, extra in (("default", []), ("frames", ["--video-frames", "4"]), ("fps", ["--video-fps", "2"])):
        tcots = tmp_path / f"{name}.jsonl"  # the split reads T-CoTs written with the sampling it is run with
        assert main(["reason", "teacher", "--world", str(clip_world), "--records",
                     str(clip_world / "clip_records.jsonl"), "--out", str(tcots)] + extra) == 0
        frames_seen.clear()
        assert main(_argv(command, clip_world, model, tmp_path / name, tcots) + extra) == 0
        seen[name] = frames_seen[:]
    recorded = {"default": {"frames": 8}, "frames": {"frames": 4}, "fps": {"fps": 2, "max_frames": 64}}
    for name, frames in (("default", 8), ("frames", 4), ("fps", 4)):
        assert seen[name], name
        if command == "reason generate":  # each clip query's prompt: its frames as images
            assert [s["images"] for s in seen[name]] == [frames] * len(seen[name]), (name, seen[name])
            # and the T-CoT file records the sampling the key frames the reasoner wrote are numbered under
            assert [r.video_sampling for r in read_tcot_rows(tmp_path / name / "t.jsonl")] == [recorded[name]] * 2
        else:  # the judge: each pair's query clip as one video (its prefix, scored once; the positives are text)
            videos = [s["videos"] for s in seen[name] if s["videos"]]
            assert videos == [[frames]] * 2, (name, seen[name])


def test_the_video_options_are_refused_as_the_other_commands_refuse_them(clip_world, tiny_model_dir, tmp_path,
                                                                          capsys):
    from unime.cli import main

    argv = _argv("reason generate", clip_world, tiny_model_dir("qwen2_vl"), tmp_path)
    assert main(argv + ["--video-frames", "4", "--video-fps", "2"]) != 0
    assert "give --video-frames N or --video-fps F, not both" in capsys.readouterr().err
    assert not (tmp_path / "t.jsonl").exists()


def test_materialize_cuts_the_key_frames_from_the_sampling_given(clip_world, tmp_path):
    """A T-CoT naming key frame 2 of a clip: the 2nd of the 8 sampled frames by default (the clip's frame 1), of
    the 4 that `--video-frames 4` samples (frames 0, 2, 5, 7: the clip's frame 2) with it."""
    import io

    import numpy as np
    from PIL import Image

    from unime.cli import main
    from unime.data.images import ImageLoader
    from unime.data.io import read_records
    from unime.reasoning.reasoner import TCoTRow, read_tcot_rows, write_tcot_rows
    from unime.reasoning.tcot import render_tcot

    rows = read_tcot_rows(clip_world / "clip_tcots.jsonl")
    tcot = render_tcot({"key_frames": [2]}, "The video shows a shape.", "a shape")
    write_tcot_rows([TCoTRow(r.record_id, r.side, r.item, tcot if r.side == "query" else r.tcot) for r in rows],
                    tmp_path / "tcots.jsonl")
    rec = read_records(clip_world / "clip_records.jsonl")[0]
    every = ImageLoader(clip_world).load_video(rec.query.video).frames  # the clip's 8 frames
    for extra, frame in (([], 1), (["--video-frames", "4"], 2)):
        out = tmp_path / f"m{frame}.parquet"
        assert main(["reason", "materialize", "--records", str(clip_world / "clip_records.jsonl"), "--tcots",
                     str(tmp_path / "tcots.jsonl"), "--data-root", str(clip_world), "--out", str(out)] + extra) == 0
        query = read_records(out)[0].query
        evidence = [r for r in query.images if isinstance(r, bytes)]
        assert len(evidence) == 1
        got = np.asarray(Image.open(io.BytesIO(evidence[0])).convert("RGB"))
        assert np.array_equal(got, np.asarray(every[frame])), extra
        assert not np.array_equal(got, np.asarray(every[3 - frame]))  # the two frames differ: the shape moves


def test_materialize_refuses_key_frames_past_the_frames_sampled(clip_world, tmp_path, capsys):
    """The teacher's T-CoTs numbered among the default 8 frames (a clip's events: key frames 1, 5, 8), in a file
    that does not record its sampling (written before it was recorded), read with `--video-frames 4`: key frame 5
    is past the 4 frames sampled. It was left out silently (one evidence frame of three); now the run stops naming
    the records file, the record's line and the key frame."""
    from unime.cli import main
    from unime.reasoning.reasoner import TCoTRow, read_tcot_rows, write_tcot_rows

    records = clip_world / "clip_records.jsonl"
    out = tmp_path / "m.parquet"
    write_tcot_rows([TCoTRow(r.record_id, r.side, r.item, r.tcot, r.source)
                     for r in read_tcot_rows(clip_world / "clip_tcots.jsonl")], tmp_path / "older.jsonl")
    argv = ["reason", "materialize", "--records", str(records), "--tcots", str(tmp_path / "older.jsonl"),
            "--data-root", str(clip_world), "--out", str(out)]
    assert main(argv + ["--video-frames", "4"]) != 0
    err = capsys.readouterr().err
    assert f"{records}" in err and "line 1" in err and "query.key_frames[1]" in err, err
    assert "key frame 5 is beyond the last frame (4 frames sampled" in err, err
    assert not out.exists()
    assert main(argv + ["--video-frames", "8"]) == 0  # the sampling it was written with


def test_key_frames_numbered_under_another_sampling_are_refused_naming_both(clip_world, tiny_model_dir, tmp_path,
                                                                           capsys):
    """The teacher at `--video-frames 4` numbers a clip's events among 4 frames (key frames 1..4): all in range of
    the default 8 frames, where they name other frames. Materialize and the reasoner's SFT read them with the
    default sampling: they used them silently; now the T-CoT file records its sampling (rows of a video item) and
    a mismatch stops the run naming the T-CoT file, the row's line and both samplings (SFT: with --skip-invalid
    the row is skipped and counted). The same sampling given: the file is read."""
    import json

    from unime.cli import main
    from unime.reasoning.reasoner import read_tcot_rows

    records = clip_world / "clip_records.jsonl"
    tcots = tmp_path / "t4.jsonl"
    assert main(["reason", "teacher", "--world", str(clip_world), "--records", str(records), "--out", str(tcots),
                 "--video-frames", "4"]) == 0
    assert '"key_frames": [1, 3, 4]' in json.loads(tcots.read_text().splitlines()[0])["tcot"]  # in range of 8
    first = json.loads(tcots.read_text().splitlines()[0])
    clip = first["item"]["video"][0]
    # the row by its line, record id and side (its line alone before)
    expected = (f"{tcots}, record line 1 (id {first['record_id']}, side {first['side']}), field 'video_sampling': "
                "the T-CoT's key frames are numbered among the "
                f"frames of --video-frames 4, this command samples --video-frames 8: of video {clip!r} they take "
                "frames [0, 2, 5, 7], this command frames [0, 1, 2, 3, 4, 5, 6, 7]: give it the --video-* options "
                "the T-CoT file was written with")
    out = tmp_path / "m.parquet"
    materialize = ["reason", "materialize", "--records", str(records), "--tcots", str(tcots), "--data-root",
                   str(clip_world), "--out", str(out)]
    assert main(materialize) != 0
    assert expected in capsys.readouterr().err and not out.exists()
    assert main(materialize + ["--video-frames", "4"]) == 0 and out.exists()
    rows = read_tcot_rows(tcots)
    assert [(r.side, r.video_sampling) for r in rows[:2]] == [("query", {"frames": 4}), ("target", None)]
    lines = tcots.read_text().splitlines()
    assert '"video_sampling"' in lines[0] and '"video_sampling"' not in lines[1]  # rows without video: unchanged

    sft = ["train", "reasoner", "--stage", "sft", "--model", tiny_model_dir("qwen2_vl"), "--tcots", str(tcots),
           "--data-root", str(clip_world), "--lora-r", "4", "--max-steps", "1", "--device", "cpu"]
    assert main(sft + ["--out", str(tmp_path / "sft")]) != 0
    assert expected in capsys.readouterr().err and not (tmp_path / "sft" / "sft_summary.json").exists()
    assert main(sft + ["--out", str(tmp_path / "skip"), "--skip-invalid"]) == 0  # the two clip queries left out
    summary = json.loads((tmp_path / "skip" / "sft_summary.json").read_text())
    assert (summary["examples"], summary["skipped_invalid"]) == (2, 2)


def test_key_frames_of_another_sampling_that_takes_the_same_frames_are_accepted(clip_world, tmp_path, capsys):
    """The world's clips have 8 frames at 4 fps. A T-CoT file written at `--video-fps 8` (16 frames for 2 s, at most
    the clip's 8: frames 0..7) was refused when read at `--video-frames 8` (frames 0..7) because the settings
    differ; the check now compares the frames each takes of the clip: equal, the file is read. `--video-fps 2` (4
    frames: 0, 2, 5, 7) read at `--video-frames 4` (the same 4) is read too; read at the default 8 frames it is
    refused naming the line, the clip and both selections."""
    import json

    from unime.cli import main

    records = clip_world / "clip_records.jsonl"
    for written, read, ok in ((["--video-fps", "8"], ["--video-frames", "8"], True),
                              (["--video-fps", "2"], ["--video-frames", "4"], True),
                              (["--video-fps", "2"], [], False)):
        tcots = tmp_path / f"t{written[1]}.jsonl"
        assert main(["reason", "teacher", "--world", str(clip_world), "--records", str(records), "--out", str(tcots)]
                    + written) == 0
        first = json.loads(tcots.read_text().splitlines()[0])
        assert first["video_sampling"] == {"fps": int(written[1]), "max_frames": 64}
        out = tmp_path / f"m{written[1]}{read}.parquet"
        code = main(["reason", "materialize", "--records", str(records), "--tcots", str(tcots), "--data-root",
                     str(clip_world), "--out", str(out)] + read)
        err = capsys.readouterr().err
        assert (code == 0) == ok and out.exists() == ok, (written, read, err)
        if not ok:
            assert (f"{tcots}, record line 1 (id {first['record_id']}, side {first['side']}), field "
                    "'video_sampling': the T-CoT's key frames are numbered among the "
                    f"frames of --video-fps 2 --video-max-frames 64, this command samples --video-frames 8: of video "
                    f"{first['item']['video'][0]!r} they take frames [0, 2, 5, 7], this command frames "
                    "[0, 1, 2, 3, 4, 5, 6, 7]") in err, err


def test_reason_eval_evaluates_the_video_tasks_as_eval_loads_them(clip_world, tiny_model_dir, frames_seen, tmp_path,
                                                                  capsys):
    """`reason eval` evaluated MMEB-format (image) tasks only and refused the world's video tasks (MMEB-V2 rows). It
    now reads them as `unime eval` does (the same rows and candidates per task) and scores them with T-CoTs, the
    clips sampled by its `--video-*` options: 4 frames per clip with `--video-frames 4`, up to 8 by default."""
    import json

    from unime.cli import main
    from unime.models.prompts import EMB_TOKEN

    model = tiny_model_dir("qwen2_vl", (EMB_TOKEN,))
    tasks = str(clip_world / "eval_tasks_video.yaml")
    names = {"clip_cls", "clip_qa", "clip_ret", "clip_moment"}
    assert main(["eval", "--model", model, "--tasks", tasks, "--device", "cpu", "--no-cache",
                 "--out", str(tmp_path / "eval")]) == 0
    plain = json.loads((tmp_path / "eval" / "summary.json").read_text())
    frames = {}
    for name, extra in (("default", []), ("four", ["--video-frames", "4"])):
        frames_seen.clear()
        out = tmp_path / name
        assert main(["reason", "eval", "--embedder", model, "--tasks", tasks, "--tcots", "teacher", "--world",
                     str(clip_world), "--device", "cpu", "--out", str(out)] + extra) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert set(summary["tasks"]) == names and "mmeb_v2" in summary["aggregates"]
        assert summary["task_counts"] == plain["task_counts"]  # the same rows and candidates as `unime eval`'s
        assert summary["meta"]["skipped_tasks_other_formats"] == []
        frames[name] = {n for s in frames_seen for n in s["videos"]}
        rows = [json.loads(x) for x in (out / "tcots.jsonl").read_text().splitlines()]
        assert {r["side"] for r in rows} == {"query", "target"}
        assert all(r["tcot"].startswith("<thinking>") for r in rows)
    assert max(frames["default"]) == 8 and frames["four"] == {4}  # (clip_moment's segments are shorter clips)
    assert '"mmeb_v2"' in capsys.readouterr().out
