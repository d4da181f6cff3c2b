"""Tiny-model factory and Embedder, for every family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import FAMILIES


def _items():
    red = Image.new("RGB", (96, 80), (200, 10, 10))
    blue = Image.new("RGB", (64, 64), (10, 10, 200))
    return [
        {"text": "a red circle"},
        {"image": red},
        {"text": "<|image_1|>\nRepresent the given image", "image": blue},
        {"text": "a red circle"},
        {"text": "a much longer text about a blue square on the left of a small star"},
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_build_tiny_saves_an_ordinary_hf_folder(tiny_model_dir, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_model_dir(family)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.config.model_type == family
    tok = processor.tokenizer
    assert len(tok.encode("Yes", add_special_tokens=False)) == 1
    assert len(tok.encode("No", add_special_tokens=False)) == 1
    # the image placeholder of the family is a single special token known to the model config
    assert tok.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id


# the releases' image normalisation, patch and merge sizes (their preprocessor_config.json on the hub:
# Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct: CLIP's mean / std, patch 14; Qwen/Qwen3-VL-4B-Instruct:
# 0.5 / 0.5, patch 16), merge size 2, 2 frames per temporal patch, the image processor class Qwen2VLImageProcessor
_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
RELEASE_IMAGES = {"qwen2_vl": (_CLIP_MEAN, _CLIP_STD, 14), "qwen2_5_vl": (_CLIP_MEAN, _CLIP_STD, 14),
                  "qwen3_vl": ([0.5] * 3, [0.5] * 3, 16)}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_image_processor_is_the_releases(tiny_model_dir, family):
    """Before, the tiny Qwen3-VL normalised images with CLIP's mean / std (the image processor's default), while the
    release (and the tiny folder's own video processor) use 0.5 / 0.5."""
    from transformers import AutoProcessor

    mean, std, patch = RELEASE_IMAGES[family]
    processor = AutoProcessor.from_pretrained(tiny_model_dir(family))
    for part in (processor.image_processor, processor.video_processor):
        assert [*part.image_mean, *part.image_std] == pytest.approx([*mean, *std], abs=1e-8), type(part)
        assert (part.patch_size, part.merge_size, part.temporal_patch_size) == (patch, 2, 2)
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    pixels = processor.image_processor(Image.new("RGB", (64, 64), (255, 0, 0)), return_tensors="pt").pixel_values
    # a pure red image: each channel's one value, normalised by the release's mean / std
    red = sorted({round(float(v), 4) for v in pixels.flatten()})
    assert red == sorted({round((c - m) / s, 4) for c, m, s in zip((1.0, 0.0, 0.0), mean, std)})


def test_tiny_qwen2_5_vl_video_time_positions_are_the_releases(tiny_model_dir):
    """Before, the tiny Qwen2.5-VL had transformers' default tokens_per_second 4; the releases' config.json (and
    the known-checkpoints table) have 2, which sets the M-RoPE time positions of a video's frames."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from unime.models.known_checkpoints import known_checkpoint

    config = AutoConfig.from_pretrained(tiny_model_dir("qwen2_5_vl"))
    assert config.vision_config.tokens_per_second == 2
    assert known_checkpoint("Qwen/Qwen2.5-VL-7B-Instruct").vision["tokens_per_second"] == 2
    # one text token, then a video of 4 temporal patches of one merged token each (8 frames at 2 fps: 1 s per
    # patch): its time positions are 1 + 2 s x 2 tokens per second x patch index, not 1 + 4 x index
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_5_vl"))
    positions, _ = model.model.get_rope_index(torch.zeros(1, 5, dtype=torch.long),
                                              torch.tensor([[0, 2, 2, 2, 2]], dtype=torch.int32),
                                              video_grid_thw=torch.tensor([[4, 2, 2]]),
                                              second_per_grid_ts=torch.tensor([1.0]))
    assert positions[0, 0].tolist() == [0, 1, 3, 5, 7]


@pytest.mark.parametrize("name", ["Qwen/Qwen2-VL-7B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct",
                                  "Qwen/Qwen3-VL-4B-Instruct"])
def test_known_checkpoint_processor_normalises_as_the_release(tiny_model_dir, name):
    from transformers import AutoTokenizer

    from unime.models.known_checkpoints import known_checkpoint

    ckpt = known_checkpoint(name)
    mean, std, patch = RELEASE_IMAGES[ckpt.family]
    processor = ckpt.processor(AutoTokenizer.from_pretrained(tiny_model_dir("qwen2_vl")))
    for part in (processor.image_processor, processor.video_processor):
        assert [*part.image_mean, *part.image_std] == pytest.approx([*mean, *std], abs=1e-8), type(part)
    assert (processor.image_processor.patch_size, processor.image_processor.merge_size) == (patch, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_reload_gives_same_outputs(tiny_model_dir, family, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_model_dir(family)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    model.save_pretrained(tmp_path / "copy")
    processor.save_pretrained(tmp_path / "copy")
    model2 = AutoModelForImageTextToText.from_pretrained(tmp_path / "copy").eval()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a red circle"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.new("RGB", (80, 80), (1, 200, 3))], return_tensors="pt")
    with torch.no_grad():
        a, b = model(**inputs).logits, model2(**inputs).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_embedder_normalised_deduplicated_and_padding_invariant(tiny_model_dir, family):
    from unime import Embedder

    emb = Embedder.from_pretrained(tiny_model_dir(family), device="cpu")
    items = _items()
    calls = []
    original = emb.forward
    emb.forward = lambda inputs, **kw: (calls.append(inputs["input_ids"].shape[0]), original(inputs, **kw))[1]
    batched = emb.encode(items, batch_size=8)
    assert batched.dtype == np.float32 and batched.shape == (5, emb.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert calls == [4]  # 5 items, 4 distinct
    np.testing.assert_array_equal(batched[0], batched[3])
    single = np.stack([emb.encode([x])[0] for x in items])
    for side in ("left", "right"):
        emb.processor.tokenizer.padding_side = side
        np.testing.assert_allclose(emb.encode(items, batch_size=8), single, atol=2e-5)
    # different inputs give different embeddings
    assert np.abs(batched[0] - batched[1]).max() > 1e-3


def test_padding_order_groups_items_by_shape_then_text_length():
    from unime.data.items import Item
    from unime.models.embedder import padding_order, padding_shape

    items = [Item("long text here", ("a.png",)), Item("t"), Item("xx", video=("v.mp4",)), Item("abc"),
             Item("", ("a.png", "b.png")), Item("q", ("c.png",)), Item("b")]
    # text only by length (ties keep their order), one image by length, two images, video
    assert padding_order(items) == [1, 6, 3, 5, 0, 4, 2]
    assert [padding_shape(items[i]) for i in (1, 5, 4, 2)] == [(False, 0), (False, 1), (False, 2), (True, 0)]
    assert padding_order([]) == []
    # with the loaded pixels: larger images after smaller ones of the same shape, before longer texts decide
    assert padding_order(items, [40 * 40, 0, 8 * 64 * 64, 0, 2 * 112 * 112, 112 * 112, 0]) == [1, 6, 3, 0, 5, 4, 2]


def test_embedder_encodes_in_padding_order_and_returns_the_callers_order(tiny_model_dir):
    from unime import Embedder
    from unime.data.items import Item

    emb = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu")
    image = Image.new("RGB", (96, 80), (200, 10, 10))
    items = [Item("a red circle seen from far above the table", (image,)), Item("red"), Item("x", (image,)),
             Item("a much longer text item than the other one")]
    calls = []
    original = emb.forward
    emb.forward = lambda inputs, **kw: (calls.append((len(inputs["attention_mask"]), "pixel_values" in inputs)),
                                        original(inputs, **kw))[1]
    batched = emb.encode(items, batch_size=2)
    emb.forward = original
    assert calls == [(2, False), (2, True)]  # in the callers' order each batch would mix text and image
    single = np.stack([emb.encode([x])[0] for x in items])
    np.testing.assert_allclose(batched, single, atol=2e-5)


def test_embedder_emb_token_pooling(tiny_model_dir):
    from unime import Embedder
    from unime.models.prompts import EMB_TOKEN

    emb = Embedder.from_pretrained(tiny_model_dir("qwen2_vl", (EMB_TOKEN,)), device="cpu")
    assert emb.pooling == "emb"
    from unime import Item

    inputs = emb.build_inputs([Item(text="a red circle"), Item(text="blue")])
    pos = emb.pool_positions(inputs["input_ids"], inputs["attention_mask"])
    ids = inputs["input_ids"][torch.arange(2), pos]
    assert (ids == emb.processor.tokenizer.convert_tokens_to_ids(EMB_TOKEN)).all()


def test_placeholder_mapping_errors_name_the_field():
    from unime.errors import DataError
    from unime.models.adapters import item_segments

    segs = item_segments("<|image_1|>\nRepresent the image", ["IMG"])
    assert [(s.kind, s.value) for s in segs] == [("image", "IMG"), ("text", "Represent the image")]
    segs = item_segments("caption only", ["A", "B"])
    assert [s.kind for s in segs] == ["image", "image", "text"]
    with pytest.raises(DataError, match="placeholder.*1 image"):
        item_segments("<|image_2|> x", ["A"], record=7)


@pytest.mark.parametrize("family", FAMILIES)
def test_build_tiny_init_std_sets_the_weight_scale(family, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from unime.models.tiny import TinySize, build_tiny

    stds = {}
    for init in (0.02, 0.1):
        out = build_tiny(family, tmp_path / f"m{init}", seed=0, size=TinySize(hidden=64, init_std=init))
        w = load_file(out / "model.safetensors")
        text = next(v for k, v in w.items() if k.endswith("layers.0.self_attn.q_proj.weight"))
        vision = next(v for k, v in w.items() if "visual" in k and ".blocks.0." in k and k.endswith("qkv.weight"))
        stds[init] = (float(text.std()), float(vision.std()))
        assert AutoConfig.from_pretrained(out).text_config.initializer_range == init
    for init, (t, v) in stds.items():  # normal(0, init) over thousands of weights: within 10 %
        assert abs(t - init) < 0.1 * init and abs(v - init) < 0.1 * init, (init, t, v)


def test_a_device_the_machine_lacks_is_one_line_naming_it(monkeypatch, tmp_path, capsys):
    """QA: `--device cuda` on a machine without CUDA ended in a traceback (or, in the trainer, `cuda:1` trained on
    another device than asked). A torch.device is taken as well as a string."""
    import torch

    from unime.cli import main
    from unime.errors import UsageError
    from unime.models.loading import resolve_device, trainer_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == "cpu" and resolve_device(torch.device("cpu")) == "cpu"
    # from Python the device is named as the keyword is given (QA: "--device", a flag of the command line)
    with pytest.raises(UsageError, match=r"^device='cuda': torch sees no CUDA device on this machine "
                                         r"\(use device='cpu'\)$"):
        resolve_device("cuda")
    with pytest.raises(UsageError, match=r"^device='gpu' is not a torch device"):
        resolve_device("gpu")
    (tmp_path / "i.jsonl").write_text('{"text": "a"}\n')
    assert main(["embed", "--model", "m", "--items", str(tmp_path / "i.jsonl"), "--out", str(tmp_path / "x.npy"),
                 "--device", "cuda:1"]) == 2
    assert capsys.readouterr().err.strip() == \
        "unime: error: --device cuda:1: torch sees no CUDA device on this machine (use --device cpu)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1" and trainer_device("cuda") == "cuda" == trainer_device("cuda:0")[:4]
    with pytest.raises(UsageError, match="^device='cuda:2': this machine has 2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(UsageError, match="^device='cuda:1': a training run .* CUDA_VISIBLE_DEVICES=1 and "
                                         "device='cuda'$"):
        trainer_device("cuda:1")


def test_a_non_cuda_device_the_machine_lacks_is_refused_naming_it(monkeypatch):
    """QA (Python API): `Embedder.from_pretrained(path, device="mps")` on a machine without MPS loaded the weights,
    then failed in torch's `Module.to` ("PyTorch is not linked with support for mps devices"), and `train_embedder`
    in transformers' TrainingArguments ("Your setup doesn't support bf16/gpu"); `meta` or `xpu` were taken too. A
    device type other than cpu and cuda is taken only when torch says its backend is available."""
    import torch

    from unime.errors import UsageError
    from unime.models.loading import resolve_device, trainer_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    for device in ("mps", "mps:0", torch.device("mps"), "xpu", "meta"):
        with pytest.raises(UsageError, match=rf"^device='{device}': torch has no {str(device)[:3]}\w* device on this "
                                             r"machine \(use device='cpu'\)$"):
            resolve_device(device)
    with pytest.raises(UsageError, match=r"^device='mps': torch has no mps device"):
        trainer_device("mps")
    assert resolve_device("cpu:0") == "cpu:0" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    assert resolve_device("mps") == "mps" and resolve_device(torch.device("mps")) == "mps"
    assert resolve_device("xpu:0") == "xpu:0"


def test_a_model_that_cannot_be_found_is_named(tmp_path, monkeypatch):
    """QA: offline, every command said Hugging Face's one line ("We couldn't connect to 'https://huggingface.co'")
    whatever the model, a mistyped local folder included."""
    from unime.errors import ModelError
    from unime.models.loading import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"^model 'no_such_dir/model': no such local folder, and the Hugging Face hub"):
        load_model("no_such_dir/model", device="cpu")


def test_a_file_given_as_the_model_is_named_as_a_file(tmp_path, capsys):
    """QA (Python API): `Embedder.from_pretrained("base/config.json")` (a file of the model, not its folder) said
    "its folder could not be read as a model (Repo id must be in the form 'repo_name' or 'namespace/repo_name' ...)"
    — huggingface_hub's words for a hub id —; mine's --embedder FILE likewise. A file is refused as one, before any
    load, by every loader and option alike."""
    from unime.cli import main
    from unime.errors import ModelError
    from unime.models.embedder import Embedder
    from unime.models.judge import JudgeScorer
    from unime.models.loading import load_model

    config = tmp_path / "base" / "config.json"
    config.parent.mkdir()
    config.write_text("{}")
    said = rf"^model '{config}': a file, not a model folder \(give the folder that holds the model's config.json, " \
        r"or a PEFT adapter's adapter_config.json\)$"
    for load in (load_model, Embedder.from_pretrained, JudgeScorer.from_pretrained):
        with pytest.raises(ModelError, match=said):
            load(config, device="cpu")
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"id": "a", "query": {"text": "q"}, "positive": {"text": "p"}}) + "\n")
    assert main(["mine", "--records", str(records), "--embedder", str(config), "--judge", str(config.parent),
                 "--out", str(tmp_path / "mined")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"unime: error: --embedder '{config}': a file, not a model " \
        "folder (give the folder that holds the model's config.json, or a PEFT adapter's adapter_config.json)"


def test_a_keyword_no_loader_takes_is_refused_before_the_weights_load(tiny_model_dir, monkeypatch):
    """QA (Python API): `Embedder.from_pretrained(path, devcie="cpu")` (or `torch_dtype=`, as transformers spells it)
    loaded the whole model — on the GPU when there is one, minutes for a real checkpoint — and then said
    "Embedder.__init__() got an unexpected keyword argument 'devcie'"; so did JudgeScorer's and Reranker's. A keyword
    neither `from_pretrained` nor the class takes is a TypeError naming `from_pretrained` (and the keyword meant,
    when one is close) before anything loads; the class's own keywords still pass through."""
    import unime.models.embedder as embedder_module
    import unime.models.judge as judge_module
    import unime.models.reranker as reranker_module
    from unime.models.embedder import Embedder
    from unime.models.judge import JudgeScorer
    from unime.models.reranker import Reranker

    model = tiny_model_dir("qwen2_vl")
    real, loads = embedder_module.load_model, []

    def counted(*args, **kw):
        loads.append(args)
        return real(*args, **kw)

    for module in (embedder_module, judge_module, reranker_module):
        monkeypatch.setattr(module, "load_model", counted)
    for cls, typo, meant in ((Embedder, "devcie", " (did you mean 'device'?)"),
                             (Embedder, "torch_dtype", " (did you mean 'dtype'?)"),
                             (Embedder, "name", " (from_pretrained sets it)"),
                             (Embedder, "processor", " (from_pretrained sets it)"),
                             (JudgeScorer, "batch_size", " (did you mean 'chunk_size'?)"),
                             (Reranker, "num_candidate", " (did you mean 'num_candidates'?)")):
        with pytest.raises(TypeError) as refused:
            cls.from_pretrained(model, device="cpu", **{typo: 1})
        assert str(refused.value) == f"{cls.__name__}.from_pretrained() got an unexpected keyword argument " \
                                     f"{typo!r}{meant}"
    assert loads == []
    emb = Embedder.from_pretrained(model, device="cpu", batch_size=3, instruction_suffix=" Q")
    assert (emb.batch_size, emb.instruction_suffix) == (3, " Q")
    assert JudgeScorer.from_pretrained(model, device="cpu", chunk_size=5).engine.chunk_size == 5
    assert Reranker.from_pretrained(model, device="cpu", batch_size=2, max_new_tokens=4).batch_size == 2
    assert len(loads) == 3


def _no_hub_calls(monkeypatch) -> list:
    """Make every Hugging Face hub download (and its HTTP retries) raise, and list the calls (a caller that catches
    the error still leaves its call in the list)."""
    import huggingface_hub
    import huggingface_hub.file_download as file_download
    import transformers.utils.hub as transformers_hub

    calls: list = []

    def called(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError(f"the hub was asked: {args!r}")

    for module in (huggingface_hub, file_download, transformers_hub):
        for name in ("hf_hub_download", "snapshot_download", "get_hf_file_metadata", "cached_files", "cached_file"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, called)
    monkeypatch.setattr(file_download, "http_backoff", called, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as a user's machine: the hub asked
    return calls


def test_a_mistyped_local_model_path_fails_at_once(tmp_path, monkeypatch):
    """QA: `Embedder.from_pretrained("emb/mergd")` (for the local emb/merged) spent 144.8 s in hub retries before
    its error: a missing path whose first part is a local folder is a local typo, refused without asking the hub,
    naming the existing folder and its entries nearest to the missing one."""
    from unime.errors import ModelError
    from unime.models.embedder import Embedder
    from unime.models.judge import JudgeScorer
    from unime.models.loading import checkpoint_vocabulary, load_model

    (tmp_path / "emb" / "merged").mkdir(parents=True)
    (tmp_path / "emb" / "zzz").mkdir()
    monkeypatch.chdir(tmp_path)
    calls = _no_hub_calls(monkeypatch)
    expected = (r"^model 'emb/mergd': no such folder \(the folder 'emb' exists; nearest there: 'merged'\); "
                r"not looked up on the Hugging Face hub")
    with pytest.raises(ModelError, match=expected):
        Embedder.from_pretrained("emb/mergd", device="cpu")
    with pytest.raises(ModelError, match=expected):
        checkpoint_vocabulary("emb/mergd")
    with pytest.raises(ModelError, match=expected):
        JudgeScorer.from_pretrained("emb/mergd", load_weights=False)  # asked whether it is a hub adapter first
    with pytest.raises(ModelError, match=r"^model 'emb/a/b': no such folder \(the folder 'emb' exists\)$"):
        load_model("emb/a/b", device="cpu")
    assert calls == []


def test_a_hub_id_whose_owner_is_no_local_folder_is_still_asked_of_the_hub(tmp_path, monkeypatch):
    from unime.models.loading import refuse_missing_local_model

    (tmp_path / "emb").mkdir()
    monkeypatch.chdir(tmp_path)
    refuse_missing_local_model("Qwen/Qwen2-VL-2B-Instruct", only_mistyped=True)  # no local 'Qwen': may be a hub id
    refuse_missing_local_model("emb", only_mistyped=True)  # exists


def test_a_missing_absolute_model_path_says_no_such_folder_and_where_it_stops(tmp_path, monkeypatch):
    """An absolute missing path (/data/ckpt) said "... not looked up on the Hugging Face hub, as its first part is a
    local folder" (its first part being '/'); the load and the command options' check (--rerank) now say the one
    thing: no such folder, and the deepest folder of it that exists with its nearest entries."""
    from unime.errors import ModelError
    from unime.models.loading import load_model, refuse_missing_local_model

    (tmp_path / "runs" / "ckpt-100").mkdir(parents=True)
    calls = _no_hub_calls(monkeypatch)
    missing = tmp_path / "runs" / "ckpt-10"
    expected = f"model {str(missing)!r}: no such folder (the folder {str(tmp_path / 'runs')!r} exists; nearest " \
               "there: 'ckpt-100')"
    with pytest.raises(ModelError) as refused:
        load_model(missing, device="cpu")
    assert str(refused.value) == expected
    with pytest.raises(ModelError) as refused:
        refuse_missing_local_model(missing, "--rerank")
    assert str(refused.value) == expected.replace("model ", "--rerank ", 1)
    # a hub-like path whose first part is a local folder still says why the hub was not asked
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as refused:
        refuse_missing_local_model("runs/ckpt-1")
    assert str(refused.value) == ("model 'runs/ckpt-1': no such folder (the folder 'runs' exists; nearest there: "
                                  "'ckpt-100'); not looked up on the Hugging Face hub, as its first part is a local "
                                  "folder")
    assert calls == []


def test_an_offline_hub_miss_says_hf_hub_offline(tmp_path, monkeypatch):
    from unime.errors import ModelError
    from unime.models.loading import load_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"^model 'someorg/somemodel': no such local folder.*HF_HUB_OFFLINE is set"):
        load_model("someorg/somemodel", device="cpu")


def test_a_training_run_on_a_mistyped_local_model_path_fails_at_once(tmp_path, monkeypatch):
    """QA: `train_embedder(EmbedderTrainingConfig(model=...))` on a mistyped local path spent ~2 minutes in hub
    retries; refused now without asking the hub, before the run writes anything in its folder."""
    from unime.errors import ModelError
    from unime.train.embedder_trainer import EmbedderTrainingConfig, train_embedder

    (tmp_path / "emb" / "merged").mkdir(parents=True)
    (tmp_path / "r.jsonl").write_text('{"query": {"text": "a"}, "positive": {"text": "b"}}\n')
    monkeypatch.chdir(tmp_path)
    calls = _no_hub_calls(monkeypatch)
    config = EmbedderTrainingConfig(model="emb/mergd", records="r.jsonl", out="out", device="cpu", loss="infonce",
                                    hard_negatives=0)
    with pytest.raises(ModelError, match=r"^model 'emb/mergd': no such folder \(the folder 'emb' exists"):
        train_embedder(config)
    assert not (tmp_path / "out").exists() and calls == []


def test_a_truncated_weights_file_is_a_model_error_naming_it(tiny_model_dir, tmp_path):
    """QA: `unime embed --model M` with M/model.safetensors cut short (a copy or download cut off) ended in
    safetensors' traceback ('incomplete metadata, file not fully covered'): a `ModelError` (one line) names the
    model and the file."""
    import shutil

    from unime.errors import ModelError
    from unime.models.loading import load_model

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir("qwen2_vl"), model)
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:size // 2])
    with pytest.raises(ModelError) as caught:
        load_model(model, device="cpu")
    assert str(model) in str(caught.value)
    assert f"model.safetensors truncated ({size // 2} of {size} bytes)" in str(caught.value)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("missing, said", [
    ("config.json", "the folder holds no model (no config.json"),
    ("tokenizer.json", "its tokenizer has no vocabulary"),
    ("chat_template.jinja", "its processor has no chat template"),
])
def test_a_model_folder_missing_one_file_is_a_model_error_naming_it(tiny_model_dir, tmp_path, family, missing, said):
    """QA: `unime reason generate --model M` with one file of M deleted ended in a traceback: without config.json
    transformers' ValueError ('Unrecognized model'); without tokenizer.json transformers 5 loaded a tokenizer of its
    special tokens alone (14 tokens, every text encoded to none), and the run failed mid-generation ('Image features
    and image tokens do not match'); without chat_template.jinja at the first prompt ('Cannot use
    apply_chat_template'). Each is a `ModelError` naming the model and what is missing, before the weights load."""
    import shutil

    from transformers import AutoModelForImageTextToText

    from unime.errors import ModelError
    from unime.models.loading import load_model

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir(family), model)
    (model / missing).unlink()
    loads = []
    real = AutoModelForImageTextToText.from_pretrained.__func__

    def counted(cls, *args, **kw):
        loads.append(args)
        return real(cls, *args, **kw)

    import unittest.mock

    with unittest.mock.patch.object(AutoModelForImageTextToText, "from_pretrained", classmethod(counted)):
        with pytest.raises(ModelError) as caught:
            load_model(model, device="cpu")
    assert f"model {str(model)!r}: " in str(caught.value) and said in str(caught.value)
    assert missing.split(".")[0] in str(caught.value)
    assert loads == []  # refused before the weights load


def test_emb_pooling_on_a_folder_without_its_tokenizer_file_says_so(tiny_model_dir, tmp_path):
    """QA: `train reasoner --stage grpo --embedder E` with E/tokenizer.json deleted was told to add the <emb> token
    (`reason add-emb`), which E has: its tokenizer, of the special tokens alone, was what was wrong."""
    import shutil

    from unime.errors import ModelError
    from unime.models.embedder import check_emb_pooling

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir("qwen2_5_vl", extra_tokens=("<emb>",)), model)
    check_emb_pooling(model)  # whole: accepted
    (model / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"its tokenizer has no vocabulary .*the folder lacks tokenizer\.json"):
        check_emb_pooling(model, "--embedder")


def test_a_checkpoint_given_by_another_option_than_model_is_named_by_that_option(tiny_model_dir, tmp_path, capsys):
    """QA: `--reranker photos` (a folder of images, or no such folder) was refused as `model 'photos': ...`, which
    reads as the command's --model; so were mine's --judge and --embedder. Each is named by the option given:
    mine refuses either before any work (no output folder), serve's reranker as it loads, and a load of a hub id
    that is not there (`loading_as`) too."""
    from unime.cli import main
    from unime.errors import ModelError
    from unime.models.loading import loading_as
    from unime.models.reranker import Reranker

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"png")
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"id": "a", "query": {"text": "q"}, "positive": {"text": "p"}}) + "\n")
    model = tiny_model_dir("qwen2_vl")
    holds_no_model = f"'{photos}': the folder holds no model (no config.json or adapter_config.json"
    for option, argv in (("--judge", ["--embedder", model, "--judge", str(photos)]),
                         ("--embedder", ["--embedder", str(photos), "--judge", model])):
        assert main(["mine", "--records", str(records), *argv, "--out", str(tmp_path / "mined")]) == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith(f"unime: error: {option} {holds_no_model}")
        assert not (tmp_path / "mined").exists()
    assert main(["serve", "--model", model, "--reranker", str(photos), "--no-auth", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"unime: error: --reranker {holds_no_model}")
    for name, said in ((str(tmp_path / "gone"), "no such folder"),  # a local path
                       ("no-such-reranker", "no such local folder, and the Hugging Face hub did not give it")):
        with pytest.raises(ModelError) as caught, loading_as("--reranker"):
            Reranker.from_pretrained(name, device="cpu")
        assert str(caught.value).startswith(f"--reranker '{name}': {said}")
