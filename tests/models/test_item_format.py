"""`--item-format vlm2vec`: items written as VLM2Vec (TIGER-AI-Lab/VLM2Vec) writes them for its Qwen2-VL /
Qwen2.5-VL backbones — raw text, no chat template —, and the format recorded with a trained checkpoint.

The expected strings are written by hand from VLM2Vec's `src/model/processor.py` (`process_input_text`: the image
token, a space, then the instruction) and its MMEB evaluation datasets (`src/data/eval_dataset/image_cls_dataset.py`,
`image_t2i_eval.py`: placeholder removed, `" \\n"` → `"\\n"`, a newline appended; candidates' text as it is;
`msrvtt_dataset.py`: the video token, a space, the text)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from unime.data.items import Item
from unime.errors import DataError, ModelError
from unime.models.adapters import QwenVLAdapter
from unime.models.item_format import FORMAT_FILE, recorded_item_format, resolve_item_format

CLS_QUERY = "<|image_1|>\nRepresent the given image for classification: what object is shown?"


def _adapter(model_type: str = "qwen2_vl") -> QwenVLAdapter:
    adapter = QwenVLAdapter(processor=None)
    adapter.model_type = model_type
    return adapter


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_vlm2vec_text_of_image_query_text_query_and_candidates_is_theirs(model_type):
    a = _adapter(model_type)
    a.check_vlm2vec()
    # MMEB classification query (image_cls_dataset): '<|image_pad|>' + ' ' + '\nRepresent ...', ' \n' → '\n', + '\n'
    assert a.vlm2vec_text(CLS_QUERY, 1, False) == \
        "<|image_pad|>\nRepresent the given image for classification: what object is shown?\n"
    # its candidates: the label text as it is
    assert a.vlm2vec_text("orange triangle", 0, False) == "orange triangle"
    # an image candidate of a t2i task (image_t2i_eval's target side)
    assert a.vlm2vec_text("<|image_1|>\nRepresent the given image.", 1, False) == \
        "<|image_pad|>\nRepresent the given image.\n"
    # a text-only query: its text, no template
    assert a.vlm2vec_text("Find an image that matches the given caption: a red circle.", 0, False) == \
        "Find an image that matches the given caption: a red circle."
    # an image without a placeholder: process_input_text puts the token first, then a space
    assert a.vlm2vec_text("a photo of a cat", 1, False) == "<|image_pad|> a photo of a cat\n"
    # a video (msrvtt_dataset's candidates): the video token, a space, the text, nothing appended
    assert a.vlm2vec_text("Understand the content of the provided video.", 0, True) == \
        "<|video_pad|> Understand the content of the provided video."


def test_vlm2vec_text_of_mmeb_rows_is_the_row_as_vlm2vec_reads_it():
    """MMEB's own rows (TIGER-Lab/MMEB-train `qry` / `pos_text`, MMEB-eval `qry_text` / `tgt_text`) end with a
    newline: `'<|image_1|>\\nRepresent the given image.\\n'`. VLM2Vec's training (src/data/dataset/mmeb_dataset.py,
    data_prepare: `qry_text.replace(VLM_IMAGE_TOKENS[PHI3V], VLM_IMAGE_TOKENS[model_backbone])`, the collator
    passing the text on as it is) and v1 evaluation (EvalDataset.__getitem__, the same replace) feed the row with
    its token swapped, one newline at the end; V2's evaluation rebuilds the same string ("to stay consistent with
    v1 eval"). A text-only row (a t2i query) keeps its newline as it is."""
    a = _adapter()
    assert a.vlm2vec_text("<|image_1|>\nRepresent the given image.\n", 1, False) == \
        "<|image_pad|>\nRepresent the given image.\n"
    assert a.vlm2vec_text("<|image_1|>\nFind a day-to-day image that looks similar to the provided image.\n", 1,
                          False) == "<|image_pad|>\nFind a day-to-day image that looks similar to the provided image.\n"
    assert a.vlm2vec_text("Find me an everyday image that matches the given caption: a red circle.\n", 0, False) == \
        "Find me an everyday image that matches the given caption: a red circle.\n"


def test_vlm2vec_refuses_what_their_format_does_not_define():
    a = _adapter()
    with pytest.raises(DataError, match="one image or one video per item.*2 images"):
        a.vlm2vec_text("<|image_1|> and <|image_2|>", 2, False)
    with pytest.raises(DataError, match="1 images and a video"):
        a.vlm2vec_text("<|image_1|>", 1, True)
    with pytest.raises(ModelError, match="model_type 'qwen3_vl'"):
        _adapter("qwen3_vl").check_vlm2vec()


def test_embedder_renders_vlm2vec_and_keeps_chat_as_it_was(tiny_model_dir, tmp_path):
    from unime.models.embedder import Embedder

    Image.new("RGB", (56, 56), (200, 30, 30)).save(tmp_path / "red.png")
    item = Item(text=CLS_QUERY, images=("red.png",))
    chat = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=str(tmp_path))
    assert chat.item_format == "chat"
    assert chat.render(chat.segments(item), item) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Represent the given image for classification: what object is "
        "shown?<|im_end|>\n<|im_start|>assistant\n")
    raw = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=str(tmp_path),
                                   item_format="vlm2vec")
    assert raw.render(raw.segments(item), item) == \
        "<|image_pad|>\nRepresent the given image for classification: what object is shown?\n"
    with pytest.raises(ModelError, match="qwen3_vl"):
        Embedder.from_pretrained(tiny_model_dir("qwen3_vl"), device="cpu", item_format="vlm2vec")


def _vlm2vec_reference(model, processor, texts, images):
    """VLM2Vec's Qwen2-VL encoding, written from its code (`Qwen2_VL_process_fn`: the processor per item, then
    `tokenizer.pad`; `MMEBModel.encode_input` with pooling 'eos' / last and normalize true), independent of unime's
    input assembly."""
    import torch

    tok = processor.tokenizer
    ids, types, pixels, grids = [], [], [], []
    for text, image in zip(texts, images):
        out = processor(text=[text], images=[image] if image is not None else None, return_tensors="np")
        ids.append(out["input_ids"][0].tolist())
        types.append(out["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in out else [0] * len(ids[-1]))
        if image is not None:
            pixels.append(torch.from_numpy(out["pixel_values"]))
            grids.append(torch.from_numpy(out["image_grid_thw"]))
    batch = tok.pad({"input_ids": ids}, return_tensors="pt")
    width = batch["input_ids"].shape[1]
    left = tok.padding_side == "left"
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "mm_token_type_ids": torch.tensor([[0] * (width - len(t)) + t if left else t + [0] * (width - len(t))
                                                 for t in types])}
    if pixels:
        kwargs.update(pixel_values=torch.cat(pixels), image_grid_thw=torch.cat(grids))
    with torch.no_grad():
        hidden = model(**kwargs, output_hidden_states=True, return_dict=True).hidden_states[-1]
    last = batch["attention_mask"].sum(dim=1) - 1 if not left else torch.full((len(ids),), width - 1)
    reps = hidden[torch.arange(len(ids)), last]
    return torch.nn.functional.normalize(reps.float(), dim=-1).numpy()


def test_vlm2vec_vectors_equal_their_pipeline_on_hand_written_text(tiny_model_dir, tmp_path):
    from unime.models.embedder import Embedder

    Image.new("RGB", (56, 84), (30, 30, 200)).save(tmp_path / "blue.png")
    emb = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=str(tmp_path),
                                   item_format="vlm2vec")
    items = [Item(text=CLS_QUERY, images=("blue.png",)), Item(text="orange triangle"), Item(text="blue")]
    ours = emb.encode(items)
    image = Image.open(tmp_path / "blue.png").convert("RGB")
    theirs = _vlm2vec_reference(emb.model, emb.processor,
                                ["<|image_pad|>\nRepresent the given image for classification: what object is shown?\n",
                                 "orange triangle", "blue"], [image, None, None])
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    chat = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=str(tmp_path)).encode(items)
    assert float(np.abs(chat - theirs).max()) > 1e-2  # the chat template gives other vectors


def test_the_format_is_found_beside_a_checkpoint_and_in_its_run_folder(tmp_path):
    run = tmp_path / "run"
    for sub in ("merged", "adapter"):
        (run / sub).mkdir(parents=True)
    (run / FORMAT_FILE).write_text(json.dumps({"item_format": "vlm2vec"}))
    assert recorded_item_format(run / "merged") == "vlm2vec"
    assert resolve_item_format(run / "adapter", None) == "vlm2vec"
    assert resolve_item_format(run / "adapter", "chat") == "chat"  # given explicitly, it wins
    assert resolve_item_format(tmp_path / "elsewhere", None) == "chat"  # no record (a hub checkpoint): chat
    (run / FORMAT_FILE).write_text(json.dumps({"item_format": "xml"}))
    with pytest.raises(ModelError, match="bad item format record"):
        recorded_item_format(run)


def test_the_embedding_cache_key_holds_a_non_default_format(tiny_model_dir):
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import embedding_settings

    chat = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu")
    raw = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", item_format="vlm2vec")
    assert "item_format" not in embedding_settings(chat)  # chat: the key as before the option
    assert embedding_settings(raw)["item_format"] == "vlm2vec"
    # the first vlm2vec rendering's key (before small images were enlarged and MMEB rows kept their one newline):
    # vectors cached under it must not be taken for today's
    first = {k: v for k, v in embedding_settings(raw).items() if k != "item_format_revision"}
    assert embedding_settings(raw) != first and embedding_settings(raw)["item_format_revision"] == 2


@pytest.mark.slow
def test_train_records_vlm2vec_and_eval_encodes_with_it(tiny_model_dir, tmp_path, monkeypatch):
    from unime.cli import main
    from unime.models.embedder import Embedder

    world = tmp_path / "world"
    world.mkdir()
    Image.new("RGB", (56, 56), (200, 30, 30)).save(world / "red.png")
    Image.new("RGB", (56, 56), (30, 30, 200)).save(world / "blue.png")
    recs = [{"id": f"r{i}", "dataset": "d", "query": {"text": text}, "positive": {"text": "", "images": [img]},
             "negatives": []} for i, (text, img) in enumerate([("a red square", "red.png"), ("a blue square",
                                                                                           "blue.png")] * 2)]
    (world / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = [{"qry_text": "a red square", "qry_img_path": "", "tgt_text": ["", ""],
             "tgt_img_path": ["red.png", "blue.png"]}]
    (world / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (world / "eval_tasks.yaml").write_text(
        "tasks:\n  - {name: pick, format: mmeb, path: task.jsonl, meta_task: retrieval, split: IND}\n")
    out = tmp_path / "emb"
    fed: list[str] = []  # the texts training built its inputs from (the collator's input builder)
    real_render = Embedder.render
    monkeypatch.setattr(Embedder, "render", lambda self, segs, item=None: fed.append(real_render(self, segs, item))
                        or fed[-1])
    assert main(["train", "embedder", "--model", tiny_model_dir("qwen2_vl"), "--records", str(world / "records.jsonl"),
                 "--out", str(out), "--loss", "infonce", "--hard-negatives", "0", "--batch-size", "2", "--steps", "2",
                 "--lora-r", "4", "--device", "cpu", "--item-format", "vlm2vec", "--save-steps", "100"]) == 0
    assert "a red square" in fed and "<|image_pad|> \n" in fed and not any("<|im_start|>" in t for t in fed)
    monkeypatch.undo()
    for folder in (out, out / "adapter", out / "merged"):
        assert json.loads((folder / FORMAT_FILE).read_text()) == {"item_format": "vlm2vec"}, folder

    def eval_format(model, *extra):
        dest = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        assert main(["eval", "--model", str(model), "--tasks", str(world), "--out", str(dest), "--no-cache",
                     "--device", "cpu", *extra]) == 0
        return json.loads((dest / "summary.json").read_text())["meta"]["item_format"]

    assert eval_format(out / "merged") == "vlm2vec"  # as it was trained
    assert eval_format(out / "adapter") == "vlm2vec"
    assert eval_format(out / "merged", "--item-format", "chat") == "chat"  # given explicitly, it wins
    assert eval_format(tiny_model_dir("qwen2_vl")) == "chat"  # no record: chat
    # training continued from the adapter, without the option: trained and recorded the way it started
    more = tmp_path / "more"
    assert main(["train", "embedder", "--model", str(out / "adapter"), "--records", str(world / "records.jsonl"),
                 "--out", str(more), "--loss", "infonce", "--hard-negatives", "0", "--batch-size", "2", "--steps", "1",
                 "--device", "cpu", "--save-steps", "100"]) == 0
    assert json.loads((more / "merged" / FORMAT_FILE).read_text()) == {"item_format": "vlm2vec"}


def test_vlm2vec_enlarges_an_image_with_a_side_under_28_px_to_56_square(tiny_model_dir, tmp_path):
    """VLM2Vec's `Qwen2_VL_process_fn` (src/model/processor.py): `if image.size[0] < 28 or image.size[1] < 28:
    image = image.resize((56, 56))`, then the processor. 56 px = 4 patches of 14: grid (1, 4, 4). A 28 px side is
    not under 28: as it is. `chat` keeps the image as it was read. The collator resizes to `--image-size` first.
    """
    from unime.models.embedder import Embedder

    assert _adapter().vlm2vec_image(Image.new("RGB", (27, 300))).size == (56, 56)
    assert _adapter().vlm2vec_image(Image.new("RGB", (300, 10))).size == (56, 56)
    assert _adapter().vlm2vec_image(Image.new("RGB", (28, 300))).size == (28, 300)
    noise = np.random.default_rng(0).integers(0, 256, (84, 20, 3), dtype=np.uint8)  # resizes show in its pixels
    Image.fromarray(noise).save(tmp_path / "thin.png")
    item = Item(text=CLS_QUERY, images=("thin.png",))
    raw = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=str(tmp_path),
                                   item_format="vlm2vec")
    assert raw.build_inputs([item])["image_grid_thw"].tolist() == [[1, 4, 4]]
    chat = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=str(tmp_path))
    seen = chat.segments(item)[0].value
    assert seen.size == (20, 84)
    want = chat.processor.image_processor(images=[seen], return_tensors="pt")["image_grid_thw"].tolist()
    assert chat.build_inputs([item])["image_grid_thw"].tolist() == want != [[1, 4, 4]]
    # their collator's fixed resize (`--image-size`) comes first: 20x84 -> 112x112, no side under 28, not enlarged
    from unime.models.image_budget import ImageBudget

    sized = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=str(tmp_path),
                                     item_format="vlm2vec", image_budget=ImageBudget(image_size=(112, 112)))
    direct = seen.resize((112, 112), Image.Resampling.BICUBIC)
    expect = sized.processor.image_processor(images=[direct], return_tensors="pt")["pixel_values"]
    assert np.array_equal(sized.build_inputs([item])["pixel_values"].numpy(), expect.numpy())


def test_vlm2vec_takes_a_videos_frames_as_vlm2vec_does(tiny_model_dir, tmp_path):
    """VLM2Vec-V2's video tasks (experiments/public/eval/video.yaml: max_frames_saved 64, num_frames 8;
    src/utils/vision_utils/vision_utils.py save_frames + process_video_frames): of a 100-frame file, frames
    floor(9i * 100 / 64) = 0, 14, 28, 42, 56, 70, 84, 98; of a 5-frame file all 5 (the processor pads to 6: 3
    temporal patches). `chat` keeps unime's round(i * 99 / 7) and 4 frames of 5."""
    pytest.importorskip("av")
    from tests.data.helpers import write_clip
    from unime.data.video import FRAME_CACHE
    from unime.models.embedder import Embedder

    write_clip(tmp_path / "long.mp4", n=100, size=(32, 32))
    write_clip(tmp_path / "short.mp4", n=5, size=(32, 32))
    FRAME_CACHE.clear()
    long_, short = Item(text="clip", video=("long.mp4",)), Item(text="clip", video=("short.mp4",))
    raw = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=str(tmp_path),
                                   item_format="vlm2vec")
    assert raw.segments(long_)[0].value.frame_indices == (0, 14, 28, 42, 56, 70, 84, 98)
    assert raw.segments(short)[0].value.frame_indices == (0, 1, 2, 3, 4)
    assert raw.build_inputs([short])["video_grid_thw"][0, 0].item() == 3
    chat = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=str(tmp_path))
    assert chat.segments(long_)[0].value.frame_indices == (0, 14, 28, 42, 57, 71, 85, 99)
    assert chat.segments(short)[0].value.frame_indices == (0, 1, 3, 4)
    assert chat.image_loader.video_sampling is None  # chat's sampling, and so its cache key, as before
    from unime.data.video import VideoSampling
    from unime.models.embedding_cache import embedding_settings

    assert embedding_settings(raw)["video_sampling"]["frame_rule"] == "vlm2vec"
    four = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu",
                                    video_sampling=VideoSampling(num_frames=4))
    before = dataclasses.asdict(VideoSampling(num_frames=4))  # chat's key: the fields before the rule existed
    del before["frame_rule"]
    assert embedding_settings(four)["video_sampling"] == before

    with pytest.raises(ModelError, match="--video-fps"):
        Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", item_format="vlm2vec",
                                 video_sampling=VideoSampling(num_frames=None, fps=2.0))
    FRAME_CACHE.clear()


def test_an_item_vlm2vec_cannot_write_is_named_by_its_file_line_id_and_field(tiny_model_dir, tmp_path, capsys):
    """QA: `--item-format vlm2vec` refused an item with an image and a video with only `field 'images': ...`: no
    file, line or record id. `unime embed`, `unime index build` and a training batch (the records file, its line and
    id, and query / positive) name where the item was read, as other errors of an item do."""
    from tests.data.helpers import write_clip
    from unime.cli import main
    from unime.data.io import read_records
    from unime.models.embedder import Embedder
    from unime.train.batching import EmbedderCollator

    Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "red.png")
    write_clip(tmp_path / "a.mp4", n=8, fps=8)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(x) + "\n" for x in
                             [{"id": "t", "text": "hi"}, {"id": "both", "image": "red.png", "video": "a.mp4"}]))
    model = tiny_model_dir("qwen2_vl")
    refusal = ("--item-format vlm2vec takes one image or one video per item (VLM2Vec's Qwen2-VL input), this item "
               "has 1 images and a video; use --item-format chat")
    capsys.readouterr()
    assert main(["embed", "--model", model, "--items", str(items), "--out", str(tmp_path / "a.npy"), "--device", "cpu",
                 "--item-format", "vlm2vec"]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"unime: error: {items}, record line 2 (id both), field 'item.images': {refusal}"
    assert main(["index", "build", "--model", model, "--items", str(items), "--out", str(tmp_path / "idx"),
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--item-format", "vlm2vec"]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"unime: error: {items}, record line 2 (id both), field 'item.images': {refusal}"
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "r1", "query": {"text": "red"}, "positive": {"image": "red.png"}},
        {"id": "r2", "query": {"text": "red"}, "positive": {"image": "red.png", "video": "a.mp4"}}]))
    emb = Embedder.from_pretrained(model, device="cpu", data_root=str(tmp_path), item_format="vlm2vec")
    collate = EmbedderCollator(emb, num_negatives=0, with_scores=False, source=str(records))
    with pytest.raises(DataError) as e:
        collate(list(enumerate(read_records(records))))
    assert str(e.value) == f"{records}, record line 2 (id r2), field 'positive.images': {refusal}"
