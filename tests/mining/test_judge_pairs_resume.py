"""`unime judge --pairs` resumes a killed run from its finished chunks (`unime.mining.pairs`,
`unime.models.chunk_work`), on the oracle judge: scores read from a labels file, so the expected values are known."""

from __future__ import annotations

import json
import logging

import pytest

from unime.mining import pairs as pairs_mod
from unime.mining.backends import JudgeSpec
from unime.mining.backends.oracle import WorldOracleBackend
from unime.models.chunk_work import KEY_FILE, work_folder


class Killed(BaseException):
    """Stands for the SIGKILL of a run (no `except Exception` catches it)."""


def _inputs(folder, n=10, *, grade=lambda i: i / 10):
    pairs, labels = folder / "pairs.jsonl", folder / "labels.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"p{i}", "query": {"text": f"query {i % 3}"},
                                         "candidate": {"text": f"candidate {i}"}}) + "\n" for i in range(n)))
    labels.write_text("".join(json.dumps({"query": {"text": f"query {i % 3}"}, "candidate": {"text": f"candidate {i}"},
                                          "score": grade(i)}) + "\n" for i in range(n)))
    return pairs, labels


@pytest.fixture
def scored_chunks(monkeypatch):
    """Chunks of 3 pairs; records the chunks the judge scores; `kill_after[0] = k` kills the run as the judge starts
    its (k+1)-th chunk."""
    monkeypatch.setattr(pairs_mod, "PAIRS_PER_CHUNK", 3, raising=False)
    scored, kill_after = [], [None]
    real = WorldOracleBackend.score_groups

    def score_groups(self, groups):
        if kill_after[0] is not None and len(scored) == kill_after[0]:
            raise Killed()
        scored.append(sorted(c.text for _, cands in groups for c in cands))
        return real(self, groups)

    monkeypatch.setattr(WorldOracleBackend, "score_groups", score_groups)
    return scored, kill_after


def _score(pairs, labels, out):
    return pairs_mod.score_pairs_file(str(pairs), str(out), JudgeSpec(path=str(labels), data_root=str(pairs.parent)),
                                      backend="oracle")


def test_a_killed_judge_run_resumes_from_its_finished_chunks_and_writes_the_uninterrupted_output(tmp_path,
                                                                                                   scored_chunks,
                                                                                                   caplog):
    scored, kill_after = scored_chunks
    pairs, labels = _inputs(tmp_path)
    assert _score(pairs, labels, tmp_path / "whole.jsonl") == 10  # uninterrupted: 4 chunks (3 + 3 + 3 + 1)
    assert len(scored) == 4
    whole = (tmp_path / "whole.jsonl").read_bytes()
    assert [json.loads(x)["score"] for x in whole.decode().splitlines()] == pytest.approx([i / 10 for i in range(10)])

    out = tmp_path / "scores.jsonl"
    scored.clear()
    kill_after[0] = 2
    with pytest.raises(Killed):
        _score(pairs, labels, out)
    assert not out.exists()
    work = work_folder(out)
    assert work == tmp_path / ".scores.jsonl.unime-work"
    assert sorted(p.name for p in work.iterdir()) == ["chunk-00000.npy", "chunk-00001.npy", KEY_FILE]

    scored.clear()
    kill_after[0] = None
    with caplog.at_level(logging.INFO, logger="unime"):
        assert _score(pairs, labels, out) == 10
    assert scored == [["candidate 6", "candidate 7", "candidate 8"], ["candidate 9"]]  # the chunks not done only
    assert f"{out}: resuming: 2 of 4 chunks done before" in caplog.text
    assert out.read_bytes() == whole
    # the output written: the chunks are gone, the record of the finished run stays (a re-run has nothing to do)
    assert sorted(p.name for p in work.iterdir()) == [KEY_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scores.jsonl.unime-work", ".whole.jsonl.unime-work",
                                                          "labels.jsonl", "pairs.jsonl", "scores.jsonl", "whole.jsonl"]


@pytest.mark.parametrize("change", ["judge", "pairs"])
def test_a_rerun_with_other_inputs_does_not_reuse_the_chunks_of_the_killed_run(tmp_path, scored_chunks, caplog,
                                                                              change):
    scored, kill_after = scored_chunks
    pairs, labels = _inputs(tmp_path)
    out = tmp_path / "scores.jsonl"
    kill_after[0] = 3
    with pytest.raises(Killed):
        _score(pairs, labels, out)
    if change == "judge":  # another labels file: other scores for the same pairs
        _inputs(tmp_path, grade=lambda i: 1 - i / 10)
        expected = [1 - i / 10 for i in range(10)]
    else:  # the first pair's candidate is another one (the labels list it, graded 0.0)
        lines = pairs.read_text().splitlines()
        lines[0] = lines[0].replace('"candidate 0"', '"candidate 9"')
        pairs.write_text("\n".join(lines) + "\n")
        expected = [0.9] + [i / 10 for i in range(1, 10)]
    scored.clear()
    kill_after[0] = None
    with caplog.at_level(logging.INFO, logger="unime"):
        assert _score(pairs, labels, out) == 10
    assert len(scored) == 4  # every chunk scored anew
    assert "3 discarded, starting over" in caplog.text and "resuming" not in caplog.text
    assert [json.loads(x)["score"] for x in out.read_text().splitlines()] == pytest.approx(expected)
    assert sorted(p.name for p in work_folder(out).iterdir()) == [KEY_FILE]  # the chunks gone, the record kept


def test_the_work_folder_appears_with_a_chunk_keeps_the_users_files_and_a_foreign_one_is_refused(tmp_path,
                                                                                                   scored_chunks,
                                                                                                   caplog):
    scored, kill_after = scored_chunks
    pairs, labels = _inputs(tmp_path)
    out = tmp_path / "scores.jsonl"
    work = work_folder(out)
    kill_after[0] = 0
    with pytest.raises(Killed):
        _score(pairs, labels, out)
    assert not work.exists()  # killed before a chunk was done: nothing beside the output
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match=rf"{work} exists and is not unime's work folder \(no {KEY_FILE}\)"):
        _score(pairs, labels, out)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"] and not out.exists()

    (work / "notes.txt").unlink()
    kill_after[0] = 1
    with pytest.raises(Killed):
        _score(pairs, labels, out)
    (work / "notes.txt").write_text("mine")  # put there while the run was stopped
    kill_after[0] = None
    assert _score(pairs, labels, out) == 10
    # unime's chunks gone, the user's file kept (beside the record of the finished run)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", KEY_FILE]


def _image_inputs(folder, n=7, n_images=3):
    """`_inputs` whose candidate i shows img/(i % n_images).png (`n_images` image files, read once each for the
    key)."""
    import numpy as np
    from PIL import Image

    (folder / "img").mkdir()
    for k in range(n_images):
        Image.fromarray(np.full((8, 8, 3), 30 * k, dtype=np.uint8)).save(folder / "img" / f"{k}.png")
    pairs, labels = folder / "pairs.jsonl", folder / "labels.jsonl"

    def cand(i):
        return {"text": f"candidate {i}", "images": [f"img/{i % n_images}.png"]}

    pairs.write_text("".join(json.dumps({"id": f"p{i}", "query": {"text": f"query {i % 2}"}, "candidate": cand(i)})
                             + "\n" for i in range(n)))
    labels.write_text("".join(json.dumps({"query": {"text": f"query {i % 2}"}, "candidate": cand(i), "score": i / 10})
                              + "\n" for i in range(n)))
    return pairs, labels


def test_a_resumed_judge_run_reads_no_image_again_for_its_key_and_a_changed_image_still_changes_it(
        tmp_path, scored_chunks, image_sha1_reads, caplog):
    """QA: the key of `unime judge`'s chunks hashed every image of the pairs at every run, so the re-run of a killed
    run over a million images read them all again just to find its key unchanged. Their digests are kept in the work
    folder (by path, size and mtime) with the chunks: the re-run reads none, and writes the uninterrupted output; an
    image touched is read again and keeps the key (same bytes), one whose bytes changed changes it."""
    scored, kill_after = scored_chunks
    pairs, labels = _image_inputs(tmp_path)
    assert _score(pairs, labels, tmp_path / "whole.jsonl") == 7  # 3 chunks (3 + 3 + 1)
    assert len(image_sha1_reads) == 3
    whole = (tmp_path / "whole.jsonl").read_bytes()
    assert [json.loads(x)["score"] for x in whole.decode().splitlines()] == pytest.approx([i / 10 for i in range(7)])

    out = tmp_path / "scores.jsonl"
    work = work_folder(out)
    image_sha1_reads.clear()
    scored.clear()
    kill_after[0] = 1
    with pytest.raises(Killed):
        _score(pairs, labels, out)
    assert len(image_sha1_reads) == 3  # nothing kept from the finished run: its work folder went with its output
    assert sorted(p.name for p in work.iterdir()) == ["chunk-00000.npy", "image_digests.tsv", KEY_FILE]

    image_sha1_reads.clear()
    scored.clear()
    kill_after[0] = 1  # the second chunk scored, then killed
    with pytest.raises(Killed):
        _score(pairs, labels, out)
    assert image_sha1_reads == []  # resumed: no image read for the key
    assert scored[-1] == ["candidate 3", "candidate 4", "candidate 5"]

    import os
    img1 = tmp_path / "img" / "1.png"
    st = os.stat(img1)
    os.utime(img1, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, another mtime
    image_sha1_reads.clear()
    scored.clear()
    kill_after[0] = None
    with caplog.at_level(logging.INFO, logger="unime"):
        assert _score(pairs, labels, out) == 7
    assert image_sha1_reads == [str(img1.resolve())]  # the touched image only, and the key is the same: resumed
    assert f"{out}: resuming: 2 of 3 chunks done before" in caplog.text and scored == [["candidate 6"]]
    assert out.read_bytes() == whole
    # the output written: the chunks are gone, the record of the finished run and the digests stay
    assert sorted(p.name for p in work.iterdir()) == ["image_digests.tsv", KEY_FILE]

    scored.clear()
    kill_after[0] = 1
    with pytest.raises(Killed):
        pairs_mod.score_pairs_file(str(pairs), str(out), JudgeSpec(path=str(labels), data_root=str(pairs.parent)),
                                   backend="oracle", overwrite=True)  # finished: done again only when asked
    img1.write_bytes(img1.read_bytes() + b"\0")  # other bytes (a PNG still): the key changes
    image_sha1_reads.clear()
    scored.clear()
    caplog.clear()
    kill_after[0] = None
    with caplog.at_level(logging.INFO, logger="unime"):
        assert _score(pairs, labels, out) == 7
    assert image_sha1_reads == [str(img1.resolve())]
    assert "1 discarded, starting over" in caplog.text and len(scored) == 3
    assert out.read_bytes() == whole and sorted(p.name for p in work.iterdir()) == ["image_digests.tsv", KEY_FILE]



def _distinct_image_inputs(folder, n=7):
    """`_image_inputs` whose candidate i shows its own image, img/i.png; returns (pairs, labels, images)."""
    return (*_image_inputs(folder, n, n_images=n), [folder / "img" / f"{i}.png" for i in range(n)])

def test_a_resumed_judge_run_opens_only_the_images_of_the_pairs_left_to_score(tmp_path, scored_chunks, image_opens):
    """QA: the re-run of a killed `unime judge --pairs` opened every image of the pairs again in its check before
    scoring, those of the chunks already scored too. Now only those of the pairs left (7 pairs in chunks of 3, killed
    after the first chunk: the images of pairs 3 to 6), and the output is the uninterrupted run's."""
    scored, kill_after = scored_chunks
    pairs, labels, images = _distinct_image_inputs(tmp_path)
    assert _score(pairs, labels, tmp_path / "whole.jsonl") == 7
    assert sorted(set(image_opens)) == sorted(map(str, images))
    out = tmp_path / "scores.jsonl"
    scored.clear()
    kill_after[0] = 1
    with pytest.raises(Killed):
        _score(pairs, labels, out)
    image_opens.clear()
    scored.clear()
    kill_after[0] = None
    assert _score(pairs, labels, out) == 7
    assert sorted(set(image_opens)) == sorted(map(str, images[3:]))
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_a_judge_resume_whose_chunks_are_discarded_checks_their_images_before_scoring(tmp_path, scored_chunks):
    """When the finished chunks are not reused after all (an image of a scored pair changed: the key changed), their
    pairs' images are opened before any pair is scored: a corrupt one stops the run naming its line and field; under
    --on-error skip it is left out and the others scored."""
    from unime.errors import DataError

    scored, kill_after = scored_chunks
    pairs, labels, images = _distinct_image_inputs(tmp_path)
    out = tmp_path / "scores.jsonl"
    kill_after[0] = 2
    with pytest.raises(Killed):
        _score(pairs, labels, out)
    images[4].write_bytes(b"not a png")  # pair 4, in the second chunk, scored
    scored.clear()
    kill_after[0] = None
    with pytest.raises(DataError) as err:
        _score(pairs, labels, out)
    assert "line 5" in str(err.value) and "candidate.images[0]" in str(err.value) and scored == []
    spec = JudgeSpec(path=str(labels), data_root=str(pairs.parent))
    assert pairs_mod.score_pairs_file(str(pairs), str(out), spec, backend="oracle", on_error="skip") == 6
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["p0", "p1", "p2", "p3", "p5", "p6"]


def test_a_finished_judge_run_rerun_with_the_same_options_does_nothing(tmp_path, scored_chunks, monkeypatch, caplog,
                                                                      image_sha1_reads, image_opens):
    """QA: a finished `unime judge --pairs` run again (same options, same inputs) scored every pair again; README's
    resume rule says a finished run says so and does nothing. It does now, before the judge loads, opening and reading
    no image; overwrite, another option, an image or the pairs changed, the output (or, with labels, its metrics)
    removed or changed since score again."""
    scored, _ = scored_chunks
    pairs, labels = _image_inputs(tmp_path)
    out = tmp_path / "scores.jsonl"
    assert _score(pairs, labels, out) == 7 and len(scored) == 3
    written = out.read_bytes()
    loads, real_backend = [], pairs_mod.make_backend
    monkeypatch.setattr(pairs_mod, "make_backend", lambda *a, **k: loads.append(a) or real_backend(*a, **k))
    scored.clear()
    image_sha1_reads.clear()
    image_opens.clear()
    with caplog.at_level(logging.INFO, logger="unime"):
        assert _score(pairs, labels, out) == 7
    assert scored == [] and loads == [] and image_sha1_reads == [] and image_opens == [] and out.read_bytes() == written
    assert f"{out}: this judge run finished earlier (same options and inputs); nothing to do (--overwrite scores " \
           "again)" in caplog.text
    spec = JudgeSpec(path=str(labels), data_root=str(pairs.parent))
    assert pairs_mod.score_pairs_file(str(pairs), str(out), spec, backend="oracle", overwrite=True) == 7
    assert len(scored) == 3 and len(loads) == 1 and out.read_bytes() == written  # asked to score again
    scored.clear()
    assert pairs_mod.score_pairs_file(str(pairs), str(out), spec, backend="oracle", on_error="skip") == 7
    assert len(scored) == 3  # another option
    scored.clear()
    assert _score(pairs, labels, out) == 7 and len(scored) == 3 and out.read_bytes() == written
    scored.clear()
    out.write_bytes(written + b"\n")  # the output changed since: scored again
    assert _score(pairs, labels, out) == 7 and len(scored) == 3 and out.read_bytes() == written
    scored.clear()
    (tmp_path / "img" / "1.png").write_bytes((tmp_path / "img" / "1.png").read_bytes() + b"\0")  # other bytes
    assert _score(pairs, labels, out) == 7 and len(scored) == 3
    scored.clear()
    pairs.write_text(pairs.read_text().replace('"p0"', '"first"'))  # another id: another output
    assert _score(pairs, labels, out) == 7 and len(scored) == 3
    assert json.loads(out.read_text().splitlines()[0])["id"] == "first"
    scored.clear()

    def labelled():
        return pairs_mod.score_pairs_file(str(pairs), str(out), spec, backend="oracle", label_column="label")

    pairs.write_text("".join(json.dumps({**json.loads(x), "label": i % 2}) + "\n"
                             for i, x in enumerate(pairs.read_text().splitlines())))
    metrics = labelled()
    assert len(scored) == 3 and metrics["pairs"] == 7
    scored.clear()
    assert labelled() == json.loads((tmp_path / "scores.metrics.json").read_text()) and scored == []
    (tmp_path / "scores.calibration.png").unlink()  # a file it wrote beside the output removed: scored again
    assert labelled()["pairs"] == 7 and len(scored) == 3 and (tmp_path / "scores.calibration.png").is_file()
