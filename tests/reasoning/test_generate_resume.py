"""`unime reason generate` resumes a killed run from its finished chunks (`unime.reasoning.reasoner.generate_tcots`,
`unime.models.chunk_work`)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from unime.cli import main
from unime.data.io import read_records, write_records
from unime.errors import DataError
from unime.reasoning.reasoner import GenerateConfig, generate_tcots

from tests.models.helpers import Killed, check_a_resumed_run_reads_no_image_again, write_pngs


def _watched_generation(monkeypatch):
    """(sizes, kill_after, keywords): `Reasoner.generate_from_segments` records each call's number of prompts in
    sizes and its keyword arguments in keywords, and raises `Killed` instead of the call number kill_after[0]."""
    from unime.reasoning import reasoner as reasoner_mod

    generated, kill_after, keywords = [], [None], []
    real = reasoner_mod.Reasoner.generate_from_segments

    def counted(self, segments_list, **kw):
        if kill_after[0] is not None and len(generated) == kill_after[0]:
            raise Killed()
        generated.append(len(segments_list))
        keywords.append(kw)
        return real(self, segments_list, **kw)

    monkeypatch.setattr(reasoner_mod.Reasoner, "generate_from_segments", counted)
    return generated, kill_after, keywords


def _generate_argv(tiny_world_dir, tiny_model_dir, tmp_path) -> list[str]:
    """`unime reason generate` (but --out) of the tiny model on 3 records of the tiny world, T-CoTs of 3 tokens."""
    world = tiny_world_dir(0)
    write_records(read_records(world / "train" / "records.jsonl")[:3], tmp_path / "r.jsonl")
    return ["reason", "generate", "--model", tiny_model_dir(), "--records", str(tmp_path / "r.jsonl"),
            "--data-root", str(world), "--max-new-tokens", "3"]


def test_a_killed_generate_run_resumes_from_its_finished_chunks_and_writes_the_uninterrupted_output(
        tiny_world_dir, tiny_model_dir, tmp_path, monkeypatch, caplog):
    """QA: `unime reason generate` killed mid-way and run again generated every T-CoT again. Its chunks (here of 2
    T-CoTs: 3 records, both sides) are kept beside the output until it is written: the re-run generates only the
    chunks not finished and writes the file an uninterrupted (greedy) run writes."""
    from unime.reasoning import reasoner as reasoner_mod

    monkeypatch.setattr(reasoner_mod, "TCOTS_PER_CHUNK", 2, raising=False)
    generated, kill_after, _ = _watched_generation(monkeypatch)
    argv = _generate_argv(tiny_world_dir, tiny_model_dir, tmp_path)
    assert main([*argv, "--out", str(tmp_path / "whole.jsonl")]) == 0
    assert generated == [2, 2, 2]
    out = tmp_path / "t.jsonl"
    generated.clear()
    kill_after[0] = 2
    with pytest.raises(Killed):
        main([*argv, "--out", str(out)])
    assert not out.exists() and (tmp_path / ".t.jsonl.unime-work").is_dir()
    generated.clear()
    kill_after[0] = None
    with caplog.at_level(logging.INFO, logger="unime"):
        assert main([*argv, "--out", str(out)]) == 0
    assert generated == [2]  # the last chunk only
    assert f"{out}: resuming: 2 of 3 chunks done before" in caplog.text
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    # the chunks went with the output written; the record of the finished run (and its image digests) stays
    assert sorted(p.name for p in (tmp_path / ".t.jsonl.unime-work").iterdir()) == ["image_digests.tsv",
                                                                                    "unime-work.json"]

    generated.clear()  # other options (longer T-CoTs): the chunks of a killed run are not reused
    kill_after[0] = 1
    with pytest.raises(Killed):
        main([*argv, "--out", str(out), "--overwrite"])
    generated.clear()
    kill_after[0] = None
    assert main([*argv[:-1], "4", "--out", str(out), "--overwrite"]) == 0 and generated == [2, 2, 2]


def test_a_sampled_generate_run_is_seeded_and_resumes_to_the_uninterrupted_output(
        tiny_world_dir, tiny_model_dir, tmp_path, monkeypatch, caplog):
    """QA: `unime reason generate --sample` wrote other T-CoTs at every run, so a killed and resumed run was not the
    uninterrupted one. `--seed` (default 0) seeds the draws batch by batch: the same command writes the same file,
    another seed another one, and a run killed after 2 of its 3 chunks (of 2 T-CoTs, batches of 2) resumes to the
    uninterrupted run's bytes, which are also those of a run in one chunk (chunks of 3 are rounded up to whole
    batches). A re-run with another seed does not reuse the killed run's chunks."""
    from unime.reasoning import reasoner as reasoner_mod

    generated, kill_after, _ = _watched_generation(monkeypatch)
    argv = [*_generate_argv(tiny_world_dir, tiny_model_dir, tmp_path), "--max-new-tokens", "6", "--sample",
            "--batch-size", "2"]

    def run(name, *extra):
        generated.clear()
        assert main([*argv, *extra, "--out", str(tmp_path / name)]) == 0
        return (tmp_path / name).read_bytes()

    whole = run("whole.jsonl")  # one chunk of 256
    assert generated == [6]
    assert run("again.jsonl") == whole and run("seed0.jsonl", "--seed", "0") == whole
    assert run("seed1.jsonl", "--seed", "1") != whole
    monkeypatch.setattr(reasoner_mod, "TCOTS_PER_CHUNK", 3, raising=False)  # chunks of 4: 2 whole batches
    assert run("fours.jsonl") == whole and generated == [4, 2]
    monkeypatch.setattr(reasoner_mod, "TCOTS_PER_CHUNK", 2, raising=False)
    assert run("twos.jsonl") == whole and generated == [2, 2, 2]

    out = tmp_path / "t.jsonl"
    generated.clear()
    kill_after[0] = 2
    with pytest.raises(Killed):
        main([*argv, "--out", str(out)])
    kill_after[0] = None
    with caplog.at_level(logging.INFO, logger="unime"):
        assert run("t.jsonl") == whole
    assert generated == [2]  # the last chunk only
    assert f"{out}: resuming: 2 of 3 chunks done before" in caplog.text

    generated.clear()  # another seed: the chunks of a killed run are not reused
    kill_after[0] = 1
    with pytest.raises(Killed):
        main([*argv, "--out", str(out), "--overwrite"])
    kill_after[0] = None
    assert run("t.jsonl", "--overwrite", "--seed", "1") == (tmp_path / "seed1.jsonl").read_bytes()
    assert generated == [2, 2, 2]


def test_the_seed_leaves_a_greedy_run_and_its_chunks_as_they_were(tiny_world_dir, tiny_model_dir, tmp_path,
                                                                  monkeypatch, caplog):
    """Greedy decoding draws nothing: `--seed` is not part of its chunks' key (the key of a run before the option
    existed), so a killed greedy run resumes under any seed, to the bytes of an uninterrupted run."""
    from unime.reasoning import reasoner as reasoner_mod

    monkeypatch.setattr(reasoner_mod, "TCOTS_PER_CHUNK", 2, raising=False)
    argv = _generate_argv(tiny_world_dir, tiny_model_dir, tmp_path)
    assert main([*argv, "--out", str(tmp_path / "whole.jsonl")]) == 0
    out = tmp_path / "t.jsonl"
    generated, kill_after, keywords = _watched_generation(monkeypatch)
    kill_after[0] = 1
    with pytest.raises(Killed):
        main([*argv, "--out", str(out)])
    assert keywords[0]["seed"] is None  # greedy: generation is given no seed
    kill_after[0] = None
    with caplog.at_level(logging.INFO, logger="unime"):
        assert main([*argv, "--seed", "5", "--out", str(out)]) == 0
    assert f"{out}: resuming: 1 of 3 chunks done before" in caplog.text
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_a_resumed_generate_run_reads_no_image_again_for_its_key_and_a_changed_image_still_changes_it(
        tiny_model_dir, tmp_path, monkeypatch, caplog, image_sha1_reads):
    """QA: `unime reason generate` hashed every image of the records at every run for its chunks' key, so the re-run
    of a killed run over a million images read them all again just to find the key unchanged. Their digests (by
    path, size and mtime) are kept in the work folder with the chunks and go with them: the re-run reads none and
    writes the uninterrupted file; an image whose bytes changed is read and changes the key."""
    rng = np.random.default_rng(0)
    images, generated, kill_after, argv = _image_records(tmp_path, monkeypatch, tiny_model_dir, 3, 2, rng)
    assert main([*argv, "--out", str(tmp_path / "whole.jsonl")]) == 0
    assert len(image_sha1_reads) == 2 and generated == [2, 2, 2]  # 3 records, both sides: 3 chunks of 2 T-CoTs

    def run(out, *args):
        assert main([*argv, "--out", str(out), *args]) == 0

    check_a_resumed_run_reads_no_image_again(run, out=tmp_path / "t.jsonl", whole=tmp_path / "whole.jsonl",
                                             images=images, calls=generated, kill_after=kill_after,
                                             reads=image_sha1_reads, caplog=caplog, rng=rng,
                                             kept=("image_digests.tsv", "unime-work.json"))


def test_a_finished_generate_run_rerun_with_the_same_options_does_nothing(tiny_world_dir, tiny_model_dir, tmp_path,
                                                                          monkeypatch, caplog):
    """QA: a finished `reason generate` run again (same options, same inputs) generated every T-CoT again; README's
    resume rule says a finished run says so and does nothing. It does now, before the model loads and without
    reading an image again; another option (longer T-CoTs), --overwrite or an output changed since generate again."""
    from unime.reasoning import reasoner as reasoner_mod

    monkeypatch.setattr(reasoner_mod, "TCOTS_PER_CHUNK", 2, raising=False)
    generated, _, _ = _watched_generation(monkeypatch)
    argv = [*_generate_argv(tiny_world_dir, tiny_model_dir, tmp_path), "--out", str(tmp_path / "t.jsonl")]
    assert main(argv) == 0 and generated == [2, 2, 2]
    written = (tmp_path / "t.jsonl").read_bytes()
    loads = []
    real_load = reasoner_mod.Reasoner.from_pretrained
    monkeypatch.setattr(reasoner_mod.Reasoner, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(a) or real_load(*a, **k)))
    generated.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unime"):
        assert main(argv) == 0
    assert generated == [] and loads == [] and (tmp_path / "t.jsonl").read_bytes() == written
    assert f"{tmp_path / 't.jsonl'}: this reason generate run finished earlier (same options and inputs); nothing " \
           "to do" in caplog.text
    assert main([*argv, "--overwrite"]) == 0 and generated == [2, 2, 2]  # asked to generate again
    generated.clear()
    assert main([*argv[:-3], "4", *argv[-2:]]) == 0 and generated == [2, 2, 2]  # --max-new-tokens 4: other T-CoTs
    generated.clear()
    assert main([*argv[:-3], "4", *argv[-2:]]) == 0 and generated == []  # that run finished too
    with open(tmp_path / "t.jsonl", "a", encoding="utf-8") as fh:  # the output changed since: generated again
        fh.write("\n")
    assert main([*argv[:-3], "4", *argv[-2:], "--overwrite"]) == 0 and generated == [2, 2, 2]


def test_a_missing_image_is_named_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """QA: a missing image gave a bare `.../nope.png: No such file or directory` after the model loaded; `reason
    split`, `materialize` and GRPO name the records file, line, id and field before loading. generate does too. A
    side not written (--sides) is not checked."""
    from PIL import Image

    from unime.data.items import Item, Record
    from unime.reasoning import reasoner as reasoner_mod

    Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "a.png")
    write_records([Record(query=Item(text="<|image_1|>\nwhat?", images=("a.png",)), positive=Item(text="red"), id="a"),
                   Record(query=Item(text="find it"), positive=Item(text="<|image_1|>\nthis", images=("nope.png",)),
                          id="b")], tmp_path / "r.jsonl")
    monkeypatch.setattr(reasoner_mod.Reasoner, "from_pretrained",
                        classmethod(lambda cls, *a, **k: pytest.fail("the model loaded before the image check")))
    argv = ["reason", "generate", "--model", tiny_model_dir(), "--records", str(tmp_path / "r.jsonl"), "--out",
            str(tmp_path / "t.jsonl"), "--max-new-tokens", "3"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (f"unime: error: {tmp_path / 'r.jsonl'}, record line 2 (id b), field "
                                               f"'positive.images[0]': image file not found: 'nope.png' (looked in "
                                               f"'{tmp_path.resolve()}')")
    with pytest.raises(pytest.fail.Exception, match="the model loaded before the image check"):
        main([*argv, "--sides", "query"])  # the positive is not read: past the check


def _image_records(tmp_path, monkeypatch, tiny_model_dir, n_records: int, n_images: int, rng):
    """`n_records` records, record i asking about img/(i % n_images).png (PNGs of random pixels from `rng`,
    returned) with a text answer, generated in chunks of 2 T-CoTs (one record, both sides, per chunk; watched:
    `_watched_generation`). Returns (images, generated, kill_after, the command line without --out)."""
    from unime.data.items import Item, Record
    from unime.reasoning import reasoner as reasoner_mod

    images = write_pngs(tmp_path, n_images, rng)
    write_records([Record(query=Item(text=f"<|image_1|>\nwhat is shown {i}?", images=(f"img/{i % n_images}.png",)),
                          positive=Item(text=f"answer {i}"), id=f"r{i}") for i in range(n_records)],
                  tmp_path / "r.jsonl")
    monkeypatch.setattr(reasoner_mod, "TCOTS_PER_CHUNK", 2, raising=False)
    generated, kill_after, _ = _watched_generation(monkeypatch)
    argv = ["reason", "generate", "--model", tiny_model_dir(), "--records", str(tmp_path / "r.jsonl"),
            "--data-root", str(tmp_path), "--max-new-tokens", "3"]
    return images, generated, kill_after, argv


def test_a_resumed_generate_run_opens_only_the_images_of_the_tcots_left_to_generate(
        tiny_model_dir, tmp_path, monkeypatch, image_opens):
    """QA: the re-run of a killed `unime reason generate` opened every image of the records again in its check before
    the model loads, those of the chunks already generated too, where `embed` and `judge --pairs` open only those of
    the work left. Now it does too: 4 records of one image each, a chunk per record, killed after 2 chunks: the
    re-run opens images 2 and 3 only, and writes the file an uninterrupted run writes."""
    images, generated, kill_after, argv = _image_records(tmp_path, monkeypatch, tiny_model_dir, 4, 4,
                                                         np.random.default_rng(0))
    assert main([*argv, "--out", str(tmp_path / "whole.jsonl")]) == 0
    assert sorted(set(image_opens)) == sorted(map(str, images)) and generated == [2, 2, 2, 2]
    out = tmp_path / "t.jsonl"
    kill_after[0], generated[:] = 2, []
    with pytest.raises(Killed):
        main([*argv, "--out", str(out)])
    kill_after[0], generated[:], image_opens[:] = None, [], []
    assert main([*argv, "--out", str(out)]) == 0
    assert generated == [2, 2]
    assert sorted(set(image_opens)) == [str(images[2]), str(images[3])]
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_a_generate_resume_whose_chunks_are_discarded_checks_their_images_before_generating(
        tiny_model_dir, tmp_path, monkeypatch):
    """The first run's check is not weakened by a resume: when the finished chunks are not reused after all (an
    image of the first chunk made corrupt: the key changed), the images of their records are opened before any T-CoT
    is generated, a corrupt one named by its line."""
    images, generated, kill_after, argv = _image_records(tmp_path, monkeypatch, tiny_model_dir, 4, 4,
                                                         np.random.default_rng(0))
    kill_after[0] = 2
    with pytest.raises(Killed):
        main([*argv, "--out", str(tmp_path / "t.jsonl")])
    images[0].write_bytes(b"not a png")  # in the first chunk, generated
    kill_after[0], generated[:] = None, []
    with pytest.raises(DataError) as err:
        generate_tcots(GenerateConfig(model=tiny_model_dir(), records=str(tmp_path / "r.jsonl"),
                                      data_root=str(tmp_path), out=str(tmp_path / "t.jsonl"), max_new_tokens=3))
    assert "record line 1 (id r0)" in str(err.value) and "img/0.png" in str(err.value) and generated == []


def test_a_generate_run_stopped_before_it_recorded_the_data_root_records_it_when_run_again(
        tiny_world_dir, tiny_model_dir, tmp_path, monkeypatch):
    """QA: killed after the T-CoT file was written and the run recorded as finished, but before the records' data
    root was recorded beside it, `reason generate` run again said "nothing to do" and never recorded it: the T-CoT
    file's image paths then resolved against its own folder (materialize, split, train reasoner: image not found).
    The data root is recorded before the run is marked finished."""
    from pathlib import Path

    from unime.data import roots

    argv = [*_generate_argv(tiny_world_dir, tiny_model_dir, tmp_path), "--out", str(tmp_path / "out" / "t.jsonl")]
    real = roots.record_data_root
    monkeypatch.setattr(roots, "record_data_root", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        main(argv)
    monkeypatch.setattr(roots, "record_data_root", real)
    assert main(argv) == 0
    assert Path(roots.resolve_data_root(tmp_path / "out" / "t.jsonl", None)) == Path(tiny_world_dir(0))
