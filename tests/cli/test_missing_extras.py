"""A command whose optional requirements (a pip extra) are not installed ends with the one-line error naming the
extra to install (`unime.errors.require_extra`), exit code 2, before any work; before, a raw traceback
(`ModuleNotFoundError: No module named 'uvicorn'`), for some commands after the models had loaded."""

from __future__ import annotations

import sys

import pytest

from unime.cli import main


def hide(monkeypatch, *modules: str) -> None:
    """Make `import MODULE` fail as for a module that is not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("hidden, argv, feature, module, extra", [
    (("uvicorn",), ["serve", "--model", "m", "--no-auth"], "unime serve", "uvicorn", "serve"),
    (("fastapi",), ["serve", "--model", "m", "--no-auth"], "unime serve", "fastapi", "serve"),
    (("ray",), ["serve", "--model", "m", "--no-auth", "--ray"], "unime serve --ray", "ray", "ray"),
    (("datasets",), ["data", "import", "--hf-dataset", "saved", "--out", "out.jsonl"],
     "reading a `datasets` folder (--hf-dataset)", "datasets", "data"),
    (("trl",), ["train", "reasoner", "--stage", "sft", "--model", "m", "--tcots", "t.jsonl", "--out", "sft"],
     "train reasoner", "trl", "rl"),
    (("trl",), ["train", "reasoner", "--stage", "grpo", "--model", "m", "--records", "r.jsonl", "--embedder", "e",
                "--out", "grpo"], "train reasoner", "trl", "rl"),
    (("ray",), ["mine", "--records", "r.jsonl", "--embedder", "e", "--judge", "j", "--out", "mined",
                "--backend", "ray"], "the ray backend (--backend ray)", "ray", "ray"),
    (("vllm",), ["mine", "--records", "r.jsonl", "--embedder", "e", "--judge", "j", "--out", "mined",
                 "--backend", "vllm"], "the vllm backend (--backend vllm)", "vllm", "vllm"),
])
def test_a_missing_extra_is_one_line_naming_it(hidden, argv, feature, module, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "saved").mkdir()
    hide(monkeypatch, *hidden)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"unime: error: {feature} needs {module}, which is not installed: "
                                f"pip install 'unime[{extra}]'"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no output folder left behind
