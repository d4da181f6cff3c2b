"""`unime reason generate` resumes a killed run from its finished chunks (`unime.reasoning.reasoner.generate_tcots`,
`unime.models.chunk_work`)."""

from __future__ import annotations

import logging

import pytest

from unime.cli import main
from unime.data.io import read_records, write_records


class Killed(BaseException):
    """Stands for the SIGKILL of a run (no `except Exception` catches it)."""


def test_a_killed_generate_run_resumes_from_its_finished_chunks_and_writes_the_uninterrupted_output(
        tiny_world_dir, tiny_model_dir, tmp_path, monkeypatch, caplog):
    """QA: `unime reason generate` killed mid-way and run again generated every T-CoT again. Its chunks (here of 2
    T-CoTs: 3 records, both sides) are kept beside the output until it is written: the re-run generates only the
    chunks not finished and writes the file an uninterrupted (greedy) run writes."""
    from unime.reasoning import reasoner as reasoner_mod

    world = tiny_world_dir(0)
    write_records(read_records(world / "train" / "records.jsonl")[:3], tmp_path / "r.jsonl")
    monkeypatch.setattr(reasoner_mod, "TCOTS_PER_CHUNK", 2, raising=False)
    generated, kill_after = [], [None]
    real = reasoner_mod.Reasoner.generate_from_segments

    def counted(self, segments_list, **kw):
        if kill_after[0] is not None and len(generated) == kill_after[0]:
            raise Killed()
        generated.append(len(segments_list))
        return real(self, segments_list, **kw)

    monkeypatch.setattr(reasoner_mod.Reasoner, "generate_from_segments", counted)
    argv = ["reason", "generate", "--model", tiny_model_dir(), "--records", str(tmp_path / "r.jsonl"),
            "--data-root", str(world), "--max-new-tokens", "3"]
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
    assert not (tmp_path / ".t.jsonl.unime-work").exists()

    generated.clear()  # other options (longer T-CoTs): the chunks of a killed run are not reused
    kill_after[0] = 1
    with pytest.raises(Killed):
        main([*argv, "--out", str(out), "--overwrite"])
    generated.clear()
    kill_after[0] = None
    assert main([*argv[:-1], "4", "--out", str(out), "--overwrite"]) == 0 and generated == [2, 2, 2]
