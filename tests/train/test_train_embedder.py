"""`unime train embedder` on a tiny Qwen2-VL and the demo world: the three losses train, outputs load,
errors name the record and field, batching, gradient accumulation + GradCache through the Trainer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import HARD_NEGATIVES as K  # hard negatives per query in these tests
from tests.train.helpers import base_config
from unime.cli.failures import describe
from unime.data.items import Item, Record
from unime.errors import DataError, OptionError, UnimeError


def fixed_batch(records: list[Record], n: int = 4) -> list[Record]:
    """n records from n different datasets (images and text on both sides)."""
    seen, out = set(), []
    for r in records:
        if r.dataset not in seen:
            seen.add(r.dataset)
            out.append(r)
        if len(out) == n:
            return out
    raise AssertionError("not enough datasets")


@pytest.fixture(scope="module")
def trained(tiny_model_dir, mined_world, tmp_path_factory):
    """One short run per loss on a fixed batch of 4 queries (js through the CLI, with a YAML config and
    the records in the released UniME-V2 JSON format)."""
    from unime.cli import main
    from unime.data.io import read_records, write_records
    from unime.train.embedder_trainer import train_embedder

    world, records_path = mined_world
    batch = fixed_batch(read_records(records_path))
    batch_file = tmp_path_factory.mktemp("batch") / "batch.jsonl"
    write_records(batch, batch_file)
    model = tiny_model_dir("qwen2_vl")
    results = {}
    for loss in ("symmetric_kl", "infonce"):
        out = tmp_path_factory.mktemp(loss) / "run"
        results[loss] = train_embedder(base_config(model, out, world, loss=loss, records=str(batch_file)))
    out = tmp_path_factory.mktemp("js") / "run"
    cfg = tmp_path_factory.mktemp("cfg") / "js.yaml"
    cfg.write_text(f"loss: js\nhard-negatives: {K}\nbatch_size: 4\nsteps: 8\nlr: 0.002\nwarmup: 0\nlora-r: 8\n"
                   f"lora_alpha: 16\nlora-dropout: 0.0\nlogging-steps: 1\ndevice: cpu\n")
    released = batch_file.with_suffix(".json")
    write_records(batch, released)
    assert json.loads(released.read_text())[0]["hard_negatives_scores"] == batch[0].negative_scores
    assert main(["train", "embedder", "--model", model, "--records", str(released), "--data-root", str(world),
                 "--out", str(out), "--config", str(cfg)]) == 0
    results["js"] = out
    return model, world, batch, results


def _losses(out: Path) -> list[float]:
    from unime.models.curves import read_curves_csv

    return [r["loss"] for r in read_curves_csv(out / "curves.csv") if "loss" in r]


@pytest.mark.parametrize("loss", ["symmetric_kl", "js", "infonce"])
def test_each_loss_decreases_on_a_fixed_batch(trained, loss):
    result = trained[3][loss]
    out = result if isinstance(result, Path) else result.out
    losses = _losses(out)
    assert len(losses) == 8
    assert losses[-1] < 0.7 * losses[0], losses  # a real margin, not noise
    assert min(losses[-3:]) < min(losses[:3])
    assert json.loads((out / "train_config.json").read_text())["loss"] == loss


def test_outputs_load_with_plain_transformers_and_embedder(trained):
    from transformers import AutoModelForImageTextToText

    from unime.models.embedder import Embedder

    model_dir, world, batch, results = trained
    res = results["symmetric_kl"]
    assert res.adapter == res.out / "adapter" and (res.adapter / "adapter_config.json").is_file()
    merged = AutoModelForImageTextToText.from_pretrained(res.merged)
    assert type(merged).__name__ == "Qwen2VLForConditionalGeneration"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (res.merged / "preprocessor_config.json").is_file() or (res.merged / "processor_config.json").is_file()
    items = [batch[0].query, batch[1].positive, batch[2].query]
    v_merged = Embedder.from_pretrained(res.merged, device="cpu", data_root=str(world)).encode(items)
    v_adapter = Embedder.from_pretrained(res.adapter, device="cpu", data_root=str(world)).encode(items)
    v_base = Embedder.from_pretrained(model_dir, device="cpu", data_root=str(world)).encode(items)
    assert abs(v_merged - v_adapter).max() < 1e-4       # merged == base + adapter
    assert abs(v_merged - v_base).max() > 1e-3          # and training changed the model


def test_a_truncated_adapter_weights_file_is_a_model_error_naming_the_adapter_and_the_file(trained, tmp_path):
    """QA: an adapter folder written by `unime train embedder` whose adapter_model.safetensors was cut short (a copy
    cut off) ended in safetensors' traceback when loaded (as the model or as --adapter-path): a `ModelError` names
    the adapter folder and the file, as for a full model's model.safetensors (`test_models`)."""
    import shutil

    from unime.errors import ModelError
    from unime.models.loading import load_model

    model_dir, world, batch, results = trained
    adapter = tmp_path / "adapter"
    shutil.copytree(results["symmetric_kl"].adapter, adapter)
    weights = adapter / "adapter_model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:size // 2])
    for path, adapter_path in ((adapter, None), (model_dir, str(adapter))):
        with pytest.raises(ModelError) as caught:
            load_model(path, device="cpu", adapter_path=adapter_path)
        assert str(caught.value) == f"adapter {str(adapter)!r}: its weights could not be read " \
            f"(adapter_model.safetensors truncated ({size // 2} of {size} bytes))"


def test_a_relative_base_model_is_recorded_absolute_and_loads_from_another_directory(tiny_model_dir, mined_world,
                                                                                     tmp_path, monkeypatch):
    import shutil

    from unime.data.io import read_records
    from unime.models.embedder import Embedder
    from unime.models.loading import model_reference
    from unime.train.embedder_trainer import train_embedder

    world, path = mined_world
    batch = fixed_batch(read_records(path))
    (tmp_path / "job").mkdir()
    (tmp_path / "elsewhere").mkdir()
    shutil.copytree(tiny_model_dir("qwen2_vl"), tmp_path / "job" / "tiny")
    monkeypatch.chdir(tmp_path / "job")
    res = train_embedder(base_config("tiny", Path("run"), world, steps=1), records=batch)
    config = json.loads((res.adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "job" / "tiny").resolve())
    assert f"base_model: {(tmp_path / 'job' / 'tiny').resolve()}" in (res.out / "README.md").read_text()
    monkeypatch.chdir(tmp_path / "elsewhere")
    vecs = Embedder.from_pretrained("../job/run/adapter", device="cpu", data_root=str(world)).encode([batch[0].query])
    assert vecs.shape == (1, 64)
    assert model_reference("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"   # a hub id stays as given


def test_a_run_folder_or_an_adapter_as_model_records_the_base_the_weights_start_from(trained, tmp_path):
    """QA: `train embedder --model RUN` (a trainer's output folder) named RUN as base_model in the model card — no
    model folder; from an adapter folder the card named the adapter. Now: a run folder's merged/ is the base; an
    adapter's own base is, with the adapter trained on named in the card."""
    from transformers import AutoModelForImageTextToText
    from peft import PeftModel

    from unime.train.embedder_trainer import train_embedder

    model_dir, world, batch, results = trained
    run = results["infonce"].out
    cases = {"run": (run, str((run / "merged").resolve()), None),
             "adapter": (run / "adapter", str(Path(model_dir).resolve()), str((run / "adapter").resolve()))}
    for name, (model, expected_base, expected_adapter) in cases.items():
        res = train_embedder(base_config(str(model), tmp_path / name, world, steps=1), records=batch)
        card = (res.out / "README.md").read_text()
        assert f"\nbase_model: {expected_base}\n" in card, name
        assert json.loads((res.adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == \
            expected_base, name
        assert (f"fine_tuning | LoRA, continuing the adapter {expected_adapter} |" in card) == bool(expected_adapter)
        PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(expected_base), str(res.adapter))


def test_the_card_of_a_run_on_a_hub_adapter_shows_the_adapters_own_lora_settings(tiny_model_dir, mined_world,
                                                                                  tmp_path, monkeypatch):
    """QA: with an adapter as --model, the embedder's model card showed an empty LoRA section ({}), though the run
    trained the adapter with its own settings. Now they are read from the adapter on the trained model
    (`LoraSettings.of_peft_model`): here a hub adapter (fake offline cache) made with r 2, alpha 6, q_proj and v_proj,
    which the run's options (r 8, alpha 16, seven projections) are not."""
    from transformers import AutoModelForImageTextToText

    from tests.models.helpers import in_a_hub_cache
    from unime.data.io import read_records
    from unime.models.lora import LoraSettings, apply_lora
    from unime.train.embedder_trainer import train_embedder

    world, path = mined_world
    base = tiny_model_dir("qwen2_vl")
    made = LoraSettings(r=2, alpha=6, dropout=0.0, targets=("q_proj", "v_proj"))
    apply_lora(AutoModelForImageTextToText.from_pretrained(base), made).save_pretrained(tmp_path / "adapter")
    in_a_hub_cache(tmp_path / "adapter", tmp_path / "hub", "someone/an-embedder", monkeypatch)
    res = train_embedder(base_config("someone/an-embedder", tmp_path / "run", world, steps=1),
                         records=fixed_batch(read_records(path)))
    card = (res.out / "README.md").read_text()
    assert "fine_tuning | LoRA, continuing the adapter someone/an-embedder |" in card
    lora = card[card.index("## LoRA"):]
    for row in ("| r | 2 |", "| alpha | 6 |", "| dropout | 0 |", "| targets | q_proj, v_proj |", "| dora | False |",
                "| vision | False |"):
        assert row in lora, lora


def test_model_card_curves_and_metrics(trained):
    from unime.models.curves import read_curves_csv

    res = trained[3]["symmetric_kl"]
    card = (res.out / "README.md").read_text()
    for needle in ("symmetric_kl", "temperature | 0.02", "num_records | 4", "final_loss", "learning_rate | 0.002",
                   "base_model:", "## LoRA", "r | 8"):
        assert needle in card, needle
    assert (res.merged / "README.md").read_text() == card and (res.adapter / "README.md").read_text() == card
    rows = read_curves_csv(res.out / "curves.csv")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"loss", "learning_rate", "group_accuracy", "in_batch_accuracy", "grad_norm"} <= set(rows[0])
    assert all(0.0 <= r["in_batch_accuracy"] <= 1.0 and 0.0 <= r["group_accuracy"] <= 1.0 for r in rows)
    assert (res.out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((res.out / "metrics.json").read_text())
    assert metrics["final_loss"] == pytest.approx(rows[-1]["loss"])
    assert metrics["initial_loss"] == pytest.approx(rows[0]["loss"])
    assert (res.out / "checkpoints").is_dir()


def test_accumulation_and_gradcache_match_one_plain_batch_through_the_trainer(tiny_model_dir, mined_world, tmp_path):
    """SGD steps (weight change = -lr × gradient): batch 4 in one forward vs 2 micro-batches of 2 with
    GradCache chunks of 3 items. Symmetric KL has no in-batch terms, so the gradients must agree."""
    from safetensors.torch import load_file

    from unime.data.io import read_records
    from unime.models.curves import read_curves_csv
    from unime.train.embedder_trainer import train_embedder

    world, path = mined_world
    records = read_records(path)[:8]
    common = dict(optim="sgd", lr=0.5, max_grad_norm=0.0, steps=2, loss="symmetric_kl", kl_eps=0.0, tau=0.1)
    plain = train_embedder(base_config(tiny_model_dir("qwen2_vl"), tmp_path / "plain", world, **common),
                           records=records)
    cached = train_embedder(base_config(tiny_model_dir("qwen2_vl"), tmp_path / "cached", world, batch_size=2,
                                        grad_accum=2, gradcache=True, chunk_size=3, **common), records=records)
    a = load_file(plain.adapter / "adapter_model.safetensors")
    b = load_file(cached.adapter / "adapter_model.safetensors")
    moved = 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
        moved += int(a[key].abs().max() > 0)
    assert moved == len(a)  # lora_B starts at 0: after two steps every tensor has moved
    la = [r["loss"] for r in read_curves_csv(plain.out / "curves.csv")]
    lb = [r["loss"] for r in read_curves_csv(cached.out / "curves.csv")]
    assert lb == pytest.approx(la, rel=1e-5)


def test_records_without_scores_only_train_infonce(tiny_model_dir, mined_world, tmp_path):
    from unime.train.embedder_trainer import prepare_embedder_training

    world, path = mined_world
    from unime.data.io import read_records

    records = read_records(path)[:4]
    bare = [dataclasses.replace(r, positive_score=None, negative_scores=None) for r in records]
    bare[2] = dataclasses.replace(bare[2], id="rec-without-scores")
    bare[:2] = [dataclasses.replace(r, positive_score=1.0, negative_scores=[0.0] * K) for r in records[:2]]
    for loss in ("symmetric_kl", "js"):
        with pytest.raises(DataError) as err:
            prepare_embedder_training(base_config(tiny_model_dir("qwen2_vl"), tmp_path / loss, world, loss=loss,
                                                  records="train.jsonl"), records=bare)
        msg = str(err.value)
        assert "train.jsonl" in msg and "rec-without-scores" in msg and "positive_score" in msg and loss in msg
    no_neg_scores = [dataclasses.replace(r, negative_scores=None) for r in records]
    with pytest.raises(DataError, match="negative_scores"):
        prepare_embedder_training(base_config("unused", tmp_path / "x", world), records=no_neg_scores)
    few = [dataclasses.replace(r, negatives=r.negatives[:1], negative_scores=r.negative_scores[:1]) for r in records]
    with pytest.raises(DataError, match="field 'negatives'.*1 hard negatives"):
        prepare_embedder_training(base_config("unused", tmp_path / "x", world), records=few)
    # the soft-label losses take in-batch negatives only when asked (off as released)
    for in_batch in (None, True):
        run = prepare_embedder_training(base_config(tiny_model_dir("qwen2_vl"), tmp_path / f"ib{in_batch}", world,
                                                    in_batch=in_batch), records=records)
        assert run.trainer.loss_module.name == "symmetric_kl"
        assert run.trainer.loss_module.in_batch is bool(in_batch)
    # infonce trains on records without scores
    run = prepare_embedder_training(base_config(tiny_model_dir("qwen2_vl"), tmp_path / "nce", world, loss="infonce"),
                                    records=bare)
    batch = next(iter(run.trainer.get_train_dataloader()))
    assert "scores" not in batch and batch["group_size"] == 1 + K


def test_checkpoints_of_an_unknown_run_are_not_resumed(tiny_model_dir, mined_world, tmp_path):
    """Checkpoints without the run's train_config.json (options unknown) are neither resumed nor
    discarded without --overwrite."""
    from unime.train.embedder_trainer import prepare_embedder_training

    world, path = mined_world
    (tmp_path / "run" / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "checkpoint-5" / "trainer_state.json").write_text("{}")
    with pytest.raises(UnimeError, match="options are unknown.*pass overwrite=True to start over"):
        prepare_embedder_training(base_config(tiny_model_dir("qwen2_vl"), tmp_path / "run", world, records=str(path)))
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-5" / "trainer_state.json").is_file()


def check_chunks(emb, batch, places, *, size, distinct: bool):
    """The batch encodes each place's item (each distinct item once with `distinct`) in rows ordered by padding
    shape; its chunks are those rows cut at every change of shape and every `size` rows (no smaller pieces),
    each built exactly as the embedder builds those items. `item_index` maps every place to its item's row."""
    from unime.models.embedder import padding_shape

    index = batch["item_index"].tolist()
    assert len(index) == len(places)
    row_item = {}
    for place, row in zip(places, index):
        assert row_item.setdefault(row, place).key == place.key  # a row holds one item
    n = sum(int(c["input_ids"].shape[0]) for c in batch["chunks"])
    assert sorted(row_item) == list(range(n))
    assert n == (len({it.key for it in places}) if distinct else len(places))
    encoded = [row_item[r] for r in range(n)]
    shapes = [padding_shape(it) for it in encoded]
    assert shapes == sorted(shapes)
    start, sizes = 0, []
    for chunk in batch["chunks"]:
        piece = encoded[start:start + int(chunk["input_ids"].shape[0])]
        assert len({padding_shape(it) for it in piece}) == 1
        expect = emb.build_inputs(piece)
        assert chunk.keys() == expect.keys()
        for key in chunk:
            assert torch.equal(chunk[key], expect[key]), key
        start += len(piece)
        sizes.append(len(piece))
    expected = []
    for shape in dict.fromkeys(shapes):
        count = shapes.count(shape)
        expected += [size] * (count // size) + ([count % size] if count % size else [])
    assert sizes == expected


def test_collator_builds_the_inputs_the_embedder_builds(tiny_model_dir, mined_world):
    from unime.data.io import read_records
    from unime.models.embedder import Embedder, padding_shape
    from unime.train.batching import FORWARD_ROWS, EmbedderCollator

    world, path = mined_world
    records = fixed_batch(read_records(path), 3)
    emb = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=str(world))
    items = [r.query for r in records] + [it for r in records for it in [r.positive] + r.negatives[:2]]
    assert len({padding_shape(it) for it in items}) >= 2  # the batch mixes text and image items
    plain = EmbedderCollator(emb, num_negatives=2, with_scores=True, chunk_size=4, source=str(path), dedup=False)
    batch = plain(list(enumerate(records)))
    assert batch["num_queries"] == 3 and batch["group_size"] == 3
    check_chunks(emb, batch, items, size=4, distinct=False)
    torch.testing.assert_close(batch["scores"], torch.tensor(
        [[r.positive_score] + r.negative_scores[:2] for r in records], dtype=torch.float32))
    # dedup (the default): each distinct item encoded once
    twice = [records[0], dataclasses.replace(records[1], negatives=[records[0].positive, records[1].negatives[1]])]
    items = [r.query for r in twice] + [it for r in twice for it in [r.positive] + r.negatives[:2]]
    assert len({it.key for it in items}) == len(items) - 1
    collate = EmbedderCollator(emb, num_negatives=2, with_scores=True, chunk_size=4, source=str(path))
    check_chunks(emb, collate(list(enumerate(twice))), items, size=4, distinct=True)
    # without GradCache (no chunk size): FORWARD_ROWS items per forward at most
    whole = EmbedderCollator(emb, num_negatives=2, with_scores=True, source=str(path))(list(enumerate(twice)))
    check_chunks(emb, whole, items, size=FORWARD_ROWS, distinct=True)
    assert len(whole["chunks"]) == len({padding_shape(it) for it in items})
    # a missing image names the source file, the record and the field
    broken = dataclasses.replace(records[1], negatives=[records[1].negatives[0], Item("x", ("images/missing.png",))])
    with pytest.raises(DataError) as err:
        collate([(0, records[0]), (1, broken)])
    assert str(path) in str(err.value) and broken.id in str(err.value) and "negatives[1].images[0]" in str(err.value)


@pytest.mark.parametrize("loss", ["infonce", "symmetric_kl"])
def test_deduplicated_batch_gives_the_loss_and_gradients_of_the_full_batch(tiny_model_dir, mined_world, tmp_path,
                                                                            loss):
    """A batch whose records share items (a positive that is another record's negative, a query repeated) is
    encoded once per distinct item, in padding order and one forward per padding shape; the trainer's loss and
    every gradient equal those of one forward over every place in batch order."""
    from unime.data.io import read_records
    from unime.models.embedder import padding_shape
    from unime.train.batching import EmbedderCollator
    from unime.train.embedder_trainer import prepare_embedder_training

    world, path = mined_world
    records = fixed_batch(read_records(path), 4)
    shared = [records[0], dataclasses.replace(records[1], negatives=[records[0].positive] + records[1].negatives[1:]),
              dataclasses.replace(records[2], query=records[0].query), records[3]]
    run = prepare_embedder_training(base_config(tiny_model_dir("qwen2_vl"), tmp_path / loss, world, loss=loss,
                                                in_batch=loss == "infonce", lora_r=0, full=True), records=records)
    trainer, model = run.trainer, run.trainer.model
    k = trainer.data_collator.num_negatives

    def loss_and_grads(dedup: bool):
        collate = EmbedderCollator(trainer.data_collator.builder, num_negatives=k, with_scores=True, dedup=dedup)
        batch = collate(list(enumerate(shared)))
        model.zero_grad()
        value = trainer.compute_loss(model, batch)
        value.backward()
        rows = sum(int(c["input_ids"].shape[0]) for c in batch["chunks"])
        return value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, rows

    def one_forward_in_batch_order():
        """The reference: every place in one padded forward, in batch order, straight into the loss."""
        batch = trainer.data_collator(list(enumerate(shared)))
        model.zero_grad()
        reps = trainer.embedder.forward(trainer.data_collator.builder.build_inputs(places))
        value = trainer.loss_module(reps[:4], reps[4:].reshape(4, 1 + k, -1), batch.get("scores"),
                                    candidate_ids=batch["candidate_ids"])
        value.backward()
        return value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    places = [r.query for r in shared] + [it for r in shared for it in [r.positive] + r.negatives[:k]]
    assert len({padding_shape(it) for it in places}) >= 2  # reordered and cut into chunks
    l_full, g_full, rows_full = loss_and_grads(False)
    l_dedup, g_dedup, rows_dedup = loss_and_grads(True)
    l_ref, g_ref = one_forward_in_batch_order()
    assert rows_full == len(places) == 4 * (2 + k)
    assert rows_dedup == len({it.key for it in places}) <= rows_full - 2  # the two planted repeats at least
    for l_other, g_other in ((l_dedup, g_dedup), (l_full, g_full)):
        torch.testing.assert_close(l_other, l_ref, rtol=1e-5, atol=1e-6)
        assert g_other.keys() == g_ref.keys() and len(g_ref) > 0
        for name in g_ref:  # float summation order differs: tolerance relative to the tensor's largest gradient
            scale = float(g_ref[name].abs().max())
            torch.testing.assert_close(g_other[name], g_ref[name], rtol=1e-4, atol=1e-5 * scale + 1e-10,
                                       msg=lambda m: f"{name} (max |g| {scale:.3g}): {m}")


def test_homogeneous_batches_that_leave_no_full_batch_are_refused_naming_the_options(tiny_model_dir, mined_world,
                                                                                     tmp_path, capsys):
    """QA: the refusal said "homogeneous batching with batch size 16", not the options a user gives."""
    from unime.cli import main
    from unime.data.io import read_records

    world, path = mined_world
    per_dataset: dict[str, int] = {}  # in the order the datasets first appear
    for r in read_records(path):
        per_dataset[r.dataset] = per_dataset.get(r.dataset, 0) + 1
    assert max(per_dataset.values()) < 16
    assert main(["train", "embedder", "--model", tiny_model_dir("qwen2_vl"), "--records", str(path), "--data-root",
                 str(world), "--out", str(tmp_path / "e"), "--homogeneous-batches", "--batch-size", "16",
                 "--steps", "1", "--device", "cpu"]) == 2
    sizes = ", ".join(f"{n}: {k}" for n, k in per_dataset.items())
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unime: error: train embedder: --homogeneous-batches with --batch-size 16 leaves no full batch (records per "
        f"dataset: {sizes}): lower --batch-size or drop --homogeneous-batches")


def test_homogeneous_batches(tiny_model_dir, mined_world, tmp_path):
    from accelerate.data_loader import BatchSamplerShard

    from unime.data.io import read_records
    from unime.train.batching import HomogeneousBatchSampler
    from unime.train.embedder_trainer import prepare_embedder_training

    names = ["a"] * 7 + ["b"] * 4 + ["c"] * 2
    sampler = HomogeneousBatchSampler(names, 2, seed=3)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 3 + 2 + 1  # remainders dropped
    assert all(len({names[i] for i in b}) == 1 and len(b) == 2 for b in epoch0)
    assert epoch0 == list(sampler)  # deterministic within an epoch
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    for rank in (0, 1):  # accelerate deals whole batches to processes: still homogeneous per device
        shard = list(BatchSamplerShard(sampler, num_processes=2, process_index=rank))
        assert len(shard) == 3 and all(len({names[i] for i in b}) == 1 for b in shard)
    with pytest.raises(OptionError, match=r"homogeneous_batches with batch_size 2 leaves no full batch \(records per "
                       r"dataset: a: 1, b: 1\)"):
        HomogeneousBatchSampler(["a", "b"], 2)

    world, path = mined_world
    records = read_records(path)
    run = prepare_embedder_training(base_config(tiny_model_dir("qwen2_vl"), tmp_path / "h", world, batch_size=4,
                                                homogeneous_batches=True, records=str(path)), records=records)
    batches = list(run.trainer.get_train_dataloader())
    assert len(batches) == sum(n // 4 for n in [8] * 9)
    for b in batches:
        assert len({records[int(i)].dataset for i in b["record_indices"]}) == 1


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_other_families_train_and_export(tiny_model_dir, mined_world, tmp_path, family):
    from transformers import AutoModelForImageTextToText

    from unime.data.io import read_records
    from unime.models.embedder import Embedder
    from unime.train.embedder_trainer import train_embedder

    world, path = mined_world
    batch = fixed_batch(read_records(path))
    res = train_embedder(base_config(tiny_model_dir(family), tmp_path / "run", world, steps=3, gradcache=True,
                                     chunk_size=5, lora_dropout=0.1), records=batch)
    assert res.metrics["final_loss"] < res.metrics["initial_loss"]
    assert AutoModelForImageTextToText.from_pretrained(res.merged).config.model_type == family
    vecs = Embedder.from_pretrained(res.merged, device="cpu", data_root=str(world)).encode([batch[0].query])
    assert vecs.shape == (1, 64) and abs(float((vecs ** 2).sum()) - 1) < 1e-4


def test_full_fine_tuning_resumes_at_a_step_boundary(tiny_model_dir, mined_world, tmp_path):
    """Full fine-tuning checkpoints every parameter; resuming from checkpoint-1 (the run's later state
    removed, as if it had been interrupted after step 1) ends with the uninterrupted run's weights."""
    import shutil

    from safetensors.torch import load_file

    from unime.data.io import read_records
    from unime.train.embedder_trainer import train_embedder

    world, path = mined_world
    records = read_records(path)[:8]
    cfg = dict(full=True, lr=1e-4, batch_size=4, steps=2, save_steps=1)
    model = tiny_model_dir("qwen2_vl")
    straight = train_embedder(base_config(model, tmp_path / "a", world, **cfg), records=records)
    assert straight.adapter is None and not (tmp_path / "a" / "adapter").exists()
    train_embedder(base_config(model, tmp_path / "b", world, **cfg), records=records)
    for name in ("checkpoints/checkpoint-2", "merged", "README.md", "curves.csv"):
        p = tmp_path / "b" / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-1" / "trainable_state.safetensors").is_file()
    resumed = train_embedder(base_config(model, tmp_path / "b", world, resume=True, **cfg), records=records)
    base = load_file(Path(model) / "model.safetensors")
    a = load_file(straight.merged / "model.safetensors")
    b = load_file(resumed.merged / "model.safetensors")
    assert a.keys() == b.keys()
    changed = 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
        changed += int(key in base and not torch.equal(a[key], base[key]))
    assert changed > len(a) // 2  # full fine-tuning moved most tensors


def test_bad_records_raise_before_training_or_are_skipped_and_counted(tiny_model_dir, mined_world, tmp_path):
    from unime.data.io import read_records, write_records
    from unime.train.embedder_trainer import prepare_embedder_training, train_embedder

    world, path = mined_world
    records = fixed_batch(read_records(path), 6)
    records[1] = dataclasses.replace(records[1], id="no-image", query=Item("<|image_1|> what?", ("images/nope.png",)))
    records[4] = dataclasses.replace(records[4], id="no-scores", positive_score=None)
    bad_file = tmp_path / "bad.jsonl"
    write_records(records, bad_file)
    model = tiny_model_dir("qwen2_vl")
    # default policy: the first bad record stops the run before the model is loaded
    with pytest.raises(DataError) as err:
        prepare_embedder_training(base_config(model, tmp_path / "r1", world, records=str(bad_file)))
    assert "no-scores" in str(err.value) and "positive_score" in str(err.value)
    ok_scores = [dataclasses.replace(r, positive_score=1.0) if r.id == "no-scores" else r for r in records]
    with pytest.raises(DataError) as err:
        prepare_embedder_training(base_config(model, tmp_path / "r2", world, records="mem.jsonl"), records=ok_scores)
    assert "mem.jsonl" in str(err.value) and "no-image" in str(err.value) and "query.images[0]" in str(err.value)
    # skip policy: both left out, counted, and reported in the model card
    res = train_embedder(base_config(model, tmp_path / "r3", world, records=str(bad_file), on_error="skip",
                                     steps=1))
    card = (res.out / "README.md").read_text()
    assert "num_records | 4" in card and "skipped_records | total: 2" in card
    assert "image: 1" in card and "training: 1" in card


def test_bf16_autocast_keeps_lora_weights_in_fp32(tiny_model_dir, mined_world, tmp_path):
    from unime.data.io import read_records
    from unime.train.embedder_trainer import prepare_embedder_training

    world, path = mined_world
    run = prepare_embedder_training(base_config(tiny_model_dir("qwen2_vl"), tmp_path / "bf16", world, dtype="bf16",
                                                steps=2, gradcache=True, chunk_size=6),
                                    records=fixed_batch(read_records(path)))
    assert run.trainer.args.bf16
    dtypes = {("lora_" in n, p.dtype) for n, p in run.embedder.model.named_parameters()}
    assert (False, torch.bfloat16) in dtypes and (True, torch.float32) in dtypes
    run.trainer.train()
    losses = [h["loss"] for h in run.trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_other_modules_register_train_actions():
    from unime.cli import build_parser
    from unime.cli import train as train_cli

    def add(actions):
        p = actions.add_parser("toy", help="a toy trainer")
        p.add_argument("--x", type=int, default=1)
        p.set_defaults(func=lambda args: args.x)

    train_cli.register_train_action("toy", add)
    try:
        args = build_parser().parse_args(["train", "toy", "--x", "3"])
        assert args.func(args) == 3
        assert build_parser().parse_args(["train", "embedder", "--model", "m", "--records", "r", "--out", "o"]).loss \
            == "auto"  # chosen from the records: plain pairs → infonce, judge-scored → symmetric_kl
    finally:
        train_cli._ACTIONS.pop("toy")


def test_full_fine_tuning_with_a_frozen_vision_tower_moves_only_the_language_side(tiny_model_dir, mined_world,
                                                                                   tmp_path):
    """`--full --freeze-vision`: every vision-tower and merger tensor equals the base's, most others moved."""
    from safetensors.torch import load_file

    from unime.data.io import read_records
    from unime.train.embedder_trainer import train_embedder

    world, path = mined_world
    model = tiny_model_dir("qwen2_vl")
    res = train_embedder(base_config(model, tmp_path / "a", world, full=True, freeze_vision=True, lr=1e-3,
                                     batch_size=4, steps=2), records=read_records(path)[:8])
    base = load_file(Path(model) / "model.safetensors")
    after = load_file(res.merged / "model.safetensors")
    vision = [k for k in after if ".visual." in k or k.startswith("visual.")]
    other = [k for k in after if k not in vision and k in base]
    assert vision and any("merger" in k for k in vision)
    assert all(torch.equal(after[k], base[k]) for k in vision)
    assert sum(not torch.equal(after[k], base[k]) for k in other) > len(other) // 2


def test_freeze_vision_needs_full_fine_tuning(tiny_model_dir, mined_world, tmp_path):
    world, _ = mined_world
    with pytest.raises(UnimeError) as caught:
        base_config(tiny_model_dir("qwen2_vl"), tmp_path / "a", world, freeze_vision=True).validate()
    said = "{freeze_vision} is for full fine-tuning ({full}); LoRA leaves the vision tower frozen unless {lora_vision}"
    assert str(caught.value) == said.format(freeze_vision="freeze_vision", full="full", lora_vision="lora_vision")
    assert describe(caught.value) == said.format(freeze_vision="--freeze-vision", full="--full",
                                                 lora_vision="--lora-vision")


def test_fewer_records_than_the_global_batch_are_warned_and_the_card_records_the_batch_that_ran(
        tiny_model_dir, mined_world, tmp_path, caplog):
    """QA: 136 records with --global-batch 1024 trained every step on the 136 queries without a word, and the card
    said global_batch_queries 1024, per_device_batch_size 1024. 4 records with --batch-size 8 on one process: each
    step holds the 4; the start warns, the card records 4 and the configured 8."""
    import logging

    from unime.data.io import read_records, write_records
    from unime.train.embedder_trainer import train_embedder

    world, records_path = mined_world
    records = tmp_path / "four.jsonl"
    write_records(fixed_batch(read_records(records_path)), records)
    with caplog.at_level(logging.WARNING, logger="unime.train.embedder_trainer"):
        res = train_embedder(base_config(tiny_model_dir("qwen2_vl"), tmp_path / "run", world, records=str(records),
                                         batch_size=8, steps=1))
    assert f"{records}: 4 records, fewer than the global batch of 8 queries (batch_size 8 x 1 process(es) x 1 " \
           "accumulation): each optimizer step holds these 4 (4 per device)" in caplog.text
    card = (res.out / "README.md").read_text()
    for needle in ("per_device_batch_size | 4 ", "global_batch_queries | 4 ", "global_batch_configured | 8 "):
        assert needle in card, card


@pytest.mark.parametrize("gradcache", [False, True])
def test_gradient_checkpointing_recomputes_the_decoder_and_trains_the_same_weights(tiny_model_dir, mined_world,
                                                                                    tmp_path, monkeypatch, gradcache):
    """QA: `train embedder` had no --gradient-checkpointing, and `--trainer-arg activation_checkpointing=true` crashed
    (the trainer's model, a wrapper, has no `gradient_checkpointing_enable`). With it, every decoder layer goes
    through transformers' checkpoint, and two SGD steps give the losses and LoRA weights of the run without it (also
    under GradCache, whose replay back-propagates inside the loss's backward). The frozen vision tower (LoRA on the
    language model) stays out of the backward pass: its blocks' MLPs run as often as without checkpointing (a block
    the backward reached would be recomputed)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from tests.train.helpers import count_checkpointed_layers, count_vision_mlp_runs
    from unime.data.io import read_records
    from unime.models.curves import read_curves_csv
    from unime.train.embedder_trainer import train_embedder

    world, path = mined_world
    records = read_records(path)[:8]
    model = tiny_model_dir("qwen2_vl")
    common = dict(optim="sgd", lr=0.5, max_grad_norm=0.0, steps=2, gradcache=gradcache, chunk_size=3)
    runs = {}
    for on in (False, True):
        calls = count_checkpointed_layers(monkeypatch)
        vision_runs = count_vision_mlp_runs(monkeypatch)
        res = train_embedder(base_config(model, tmp_path / str(on), world, gradient_checkpointing=on, **common),
                             records=records)
        monkeypatch.undo()
        runs[on] = (dict(calls), len(vision_runs), load_file(res.adapter / "adapter_model.safetensors"),
                    [r["loss"] for r in read_curves_csv(res.out / "curves.csv") if "loss" in r])
    (off_calls, off_vision, off_weights, off_losses), (on_calls, on_vision, on_weights, on_losses) = \
        runs[False], runs[True]
    layers = AutoConfig.from_pretrained(model).text_config.num_hidden_layers
    assert off_calls == {} and on_calls.get("Qwen2VLDecoderLayer", 0) >= 2 * layers  # each layer, each step
    assert on_calls["Qwen2VLDecoderLayer"] % layers == 0
    assert on_vision == off_vision > 0
    assert on_losses == pytest.approx(off_losses, rel=1e-6, abs=1e-7) and len(on_losses) == 2
    assert on_weights.keys() == off_weights.keys()
    for key in off_weights:
        torch.testing.assert_close(on_weights[key], off_weights[key], rtol=1e-5, atol=1e-6)
    assert all(off_weights[k].abs().max() > 0 for k in off_weights if "lora_B" in k)  # the steps moved them


@pytest.mark.parametrize("mode,gradcache", [("full", False), ("full", True), ("full_freeze_vision", False),
                                            ("lora_vision", False), ("lora_vision", True)])
def test_gradient_checkpointing_trains_the_same_weights_in_full_and_vision_lora_runs(tiny_model_dir, mined_world,
                                                                                     tmp_path, monkeypatch, mode,
                                                                                     gradcache):
    """--gradient-checkpointing with --full (the vision tower trained, or frozen by --freeze-vision) and with
    --lora-vision (LoRA in the vision tower too), where the vision tower's blocks are checkpointed and back-propagated
    through (and so recomputed: their MLPs run more often; as often with --freeze-vision, which keeps the tower out of
    the backward pass): two SGD steps give the losses and weights of the run without it, and the vision tower's
    trained tensors moved, or stayed the base's with --freeze-vision."""
    from tests.train.helpers import (assert_same_weights_and_vision_trained, count_checkpointed_layers,
                                      count_vision_mlp_runs, trained_run)
    from unime.data.io import read_records
    from unime.train.embedder_trainer import train_embedder

    world, path = mined_world
    records = read_records(path)[:8]
    model = tiny_model_dir("qwen2_vl")
    own = {"full": dict(full=True, lr=1e-3), "full_freeze_vision": dict(full=True, freeze_vision=True, lr=1e-3),
           "lora_vision": dict(lora_vision=True, lora_targets=("q_proj", "v_proj", "qkv", "fc1"), lr=0.5)}[mode]
    common = dict(optim="sgd", max_grad_norm=0.0, steps=2, gradcache=gradcache, chunk_size=3, **own)
    runs = {}
    for on in (False, True):
        calls, vision_runs = count_checkpointed_layers(monkeypatch), count_vision_mlp_runs(monkeypatch)
        res = train_embedder(base_config(model, tmp_path / str(on), world, gradient_checkpointing=on, **common),
                             records=records)
        monkeypatch.undo()
        runs[on] = trained_run(res.out, mode, calls, vision_runs)
    (off_calls, off_vision, off_weights, off_losses), (on_calls, on_vision, on_weights, on_losses) = \
        runs[False], runs[True]
    assert off_calls == {} and on_calls["Qwen2VLDecoderLayer"] > 0 and on_calls["Qwen2VLVisionBlock"] > 0
    assert (on_vision == off_vision > 0) if mode == "full_freeze_vision" else (on_vision > off_vision > 0)
    assert on_losses == pytest.approx(off_losses, rel=1e-6, abs=1e-7) and len(on_losses) == 2
    assert_same_weights_and_vision_trained(on_weights, off_weights, model, mode)
