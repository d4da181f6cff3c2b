"""`unime plan`: the memory plan against the measured tensors of a tiny model's training step (within
20 %), the judge's KV cache per token exactly, and the plans of the real recipes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from unime.train.memory_plan import GiB, model_shapes, parse_memory, plan_embedder, plan_judge


def _measure_training_step(model_dir: str, *, r: int, dropout: float, texts=("a red square", "a red square"),
                           dora: bool = False):
    """Bytes of parameters, gradients and AdamW states after one step, and of the tensors autograd saves
    in the forward of one chunk of 2 sequences (224x224 image + text) and still holds when it ends (a graph the
    forward drops, as DoRA's weight norm, frees its tensors), for the embedder + LoRA (or DoRA) in fp32."""
    import weakref

    from unime.data.items import Item
    from unime.models.embedder import Embedder
    from unime.models.lora import LoraSettings, apply_lora

    torch.manual_seed(0)
    emb = Embedder.from_pretrained(model_dir, device="cpu", dtype="fp32", trainable=True)
    emb.model = apply_lora(emb.model, LoraSettings(r=r, alpha=2 * r, dropout=dropout, dora=dora))
    emb.model.train()
    items = [Item.from_dict({"text": t, "image": Image.new("RGB", (224, 224), c)})
             for t, c in zip(texts, ("red", "blue"))]
    inputs = emb.build_inputs(items)
    own = {t.untyped_storage().data_ptr() for t in [*emb.model.parameters(), *emb.model.buffers()]}
    packed = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            packed.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        reps = emb.forward(inputs)
    saved = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (ref() for ref in packed)
             if t is not None}
    reps.sum().backward()
    trainable = [p for p in emb.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    opt.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    states = [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0]
    return {"params": nbytes(emb.model.parameters()), "grads": nbytes(p.grad for p in trainable),
            "optimizer": nbytes(states), "activations": sum(saved.values()),
            "seq": int(inputs["input_ids"].shape[1]),
            "visual": emb.adapter.count_visual_tokens(inputs["input_ids"]) // 2}


LONG = "a red square left of a large blue circle in the upper corner of a grey picture"
# QA: DoRA was planned as LoRA (half of its measured activations): it keeps 2 values per output feature of each
# adapted linear and token (`activation_bytes_per_token`'s dora_outputs)
DORA = [(16, 0.1, ("a red square",) * 2, True), (8, 0.0, ("a red square", LONG), True),
        (16, 0.1, ("a red square", LONG), True)]
CASES = {"qwen2_vl": [(8, 0.0, ("a red square",) * 2), (16, 0.1, ("a red square",) * 2),
                      (8, 0.0, ("a red square", LONG)), (16, 0.1, ("a red square", LONG)), *DORA],
         "qwen2_5_vl": [(16, 0.1, ("a red square",) * 2), (16, 0.1, ("a red square", LONG))],
         "qwen3_vl": [(16, 0.1, ("a red square",) * 2), (16, 0.1, ("a red square", LONG))]}


@pytest.mark.parametrize("family", sorted(CASES))
def test_plan_is_within_20_percent_of_a_measured_tiny_training_step(tiny_model_dir, family):
    model = tiny_model_dir(family)
    for r, dropout, texts, *dora in CASES[family]:
        dora = bool(dora and dora[0])
        m = _measure_training_step(model, r=r, dropout=dropout, texts=texts, dora=dora)
        padded = texts[0] != texts[1]  # rows of different lengths: padding, an attention mask, expanded K/V
        plan = plan_embedder(model, {"dtype": "fp32", "lora_r": r, "lora_dropout": dropout, "gradcache": True,
                                     "dora": dora,
                                     "chunk_size": 2, "batch_size": 1, "hard_negatives": 0, "image_size": 224},
                             text_tokens=m["seq"] - m["visual"], padded=padded)
        rows = dict(plan.rows)
        # the sequence the plan assumes is the one measured (224x224 -> 8x8 = 64 merged tokens; 7x7 = 49 at
        # Qwen3-VL's patch 16)
        assert m["visual"] == {"qwen3_vl": 49}.get(family, 64)
        assert any(f"sequence ~{m['seq']} tokens" in f for f in plan.facts)
        planned_params = rows["weights (fp32, frozen)"] + rows["trainable weights (fp32)"]
        assert abs(planned_params - m["params"]) / m["params"] < 0.01
        assert rows["gradients (fp32)"] == m["grads"]
        assert rows["optimizer states (adamw_torch, fp32 x2)"] == m["optimizer"]
        act = rows["activations per GradCache chunk (2 sequences)"]
        assert abs(act - m["activations"]) / m["activations"] < 0.20, (r, dropout, dora, padded, act,
                                                                        m["activations"])
        print(f"tiny {family} r={r} dropout={dropout} padded={padded}: activations planned {act} measured "
              f"{m['activations']} ({act / m['activations'] - 1:+.1%}); total planned {plan.total:.0f} measured "
              f"{m['params'] + m['grads'] + m['optimizer'] + m['activations']}")
        measured = m["params"] + m["grads"] + m["optimizer"] + m["activations"]
        assert abs(plan.total - measured) / measured < 0.20


def test_judge_kv_cache_per_token_is_the_models_own(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    model_dir = tiny_model_dir("qwen2_5_vl")
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    ids = torch.arange(10, 40).unsqueeze(0)
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    measured = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    plan = plan_judge(model_dir, {"dtype": "fp32", "chunk_size": 1, "k": 0}, text_tokens=0, images_per_item=0)
    prefix_row = dict(plan.rows)["KV cache: shared query prefix"]
    assert prefix_row / 80 == measured / ids.shape[1]  # 80 prompt tokens at the model's bytes per token


def test_real_recipe_plans_are_consistent():
    shapes = model_shapes("Qwen/Qwen2-VL-2B-Instruct")
    assert (shapes.layers, shapes.hidden, round(shapes.params_total / 1e9, 2)) == (28, 1536, 2.21)
    o = {"dtype": "bf16", "lora_r": 16, "lora_alpha": 64, "lora_dropout": 0.1, "gradcache": True, "chunk_size": 2,
         "global_batch": 1024, "hard_negatives": 8, "image_size": 672}
    plan = plan_embedder("Qwen/Qwen2-VL-2B-Instruct", o, gpus=8, gpu_memory_gib=80)
    rows = dict(plan.rows)
    assert rows["weights (bf16, frozen)"] == shapes.params_total * 2
    # LoRA r=16 on q,k,v,o,gate,up,down of 28 layers (h 1536, 2 KV heads x 128, MLP 8960), by hand
    per_layer = 16 * ((1536 + 1536) + 2 * (1536 + 256) + (1536 + 1536) + 2 * (1536 + 8960) + (8960 + 1536))
    assert rows["trainable weights (fp32)"] == 28 * per_layer * 4
    assert plan.tokens_per_step == 1024 * 10 * (64 + 576)
    # GradCache: the batch changes nothing but the cached representations
    bigger = plan_embedder("Qwen/Qwen2-VL-2B-Instruct", {**o, "global_batch": 2048}, gpus=8)
    assert dict(bigger.rows)["activations per GradCache chunk (2 sequences)"] == \
        rows["activations per GradCache chunk (2 sequences)"]
    assert plan.total / GiB < 80
    assert parse_memory("80GB") == 80.0 and parse_memory("40 GiB") == 40.0


def test_unime_plan_cli_prints_the_recipe_plan(capsys):
    from unime.cli import main

    assert main(["plan", "--recipe", "unime-v2/judge-qwen2.5-vl-7b", "--gpus", "8", "--gpu-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    assert "judge Qwen/Qwen2.5-VL-7B-Instruct: 8.29 B parameters" in out
    # 2 (K, V) x 28 layers x 4 KV heads x 128 x 2 bytes = 57344 bytes = 56 KiB per token
    assert "56 KiB of KV per token" in out and "fits" in out


def test_every_recipe_plans_and_the_embedder_without_a_recipe_plans_at_the_records_most_negatives(capsys):
    """QA: `unime plan --recipe embed-rl/...` and `unime plan --stage embedder` (K left to the records: None) died
    with a TypeError. The Embed-RL contrastive stage trains on pairs (K 0); without K the plan takes the most
    the records can give the trainer, 8, and says so."""
    from unime.cli import main
    from unime.cli.recipes import list_recipes

    for name in list_recipes():
        assert main(["plan", "--recipe", name, "--gpus", "8", "--gpu-memory", "80GB"]) == 0, name
        capsys.readouterr()
    assert main(["plan", "--recipe", "embed-rl/qwen3-vl-2b", "--gpus", "8", "--gpu-memory", "80GB"]) == 0
    assert "8 queries x 2 sequences (query, positive, 0 negatives)" in capsys.readouterr().out
    assert main(["plan", "--stage", "embedder", "--model", "Qwen/Qwen2-VL-2B-Instruct"]) == 0
    out = capsys.readouterr().out
    assert "x 10 sequences (query, positive, 8 negatives; K left to the records, planned at their most, 8)" in out
    unset = plan_embedder("Qwen/Qwen2-VL-2B-Instruct", {"hard_negatives": None})
    assert unset.rows == plan_embedder("Qwen/Qwen2-VL-2B-Instruct", {"hard_negatives": 8}).rows


def test_bad_plan_options_are_one_line_errors(capsys):
    """QA: `--gpus 0` ended in ZeroDivisionError, `--gpu-memory 80XB` in a ValueError traceback."""
    from unime.cli import main

    assert main(["plan", "--recipe", "unime-v2/qwen2-vl-2b", "--gpus", "0"]) == 2
    assert capsys.readouterr().err.strip() == "unime: error: plan: --gpus must be >= 1, got 0"
    assert main(["plan", "--recipe", "unime-v2/qwen2-vl-2b", "--gpu-memory", "80XB"]) == 2
    assert capsys.readouterr().err.strip() == \
        "unime: error: plan: --gpu-memory '80XB': a positive size in GiB such as 80GB, 40GiB or 80, or nvidia-smi's " \
        "81920MiB"


def test_a_global_batch_the_trainer_refuses_is_refused_by_the_plan_too(capsys):
    """QA: `unime plan` planned --global-batch 1024 on 3 devices as 341 queries each (1023 in all), a run the trainer
    refuses; now it is refused with the trainer's own message (`per_device_batch`)."""
    from unime.cli import main
    from unime.errors import UnimeError

    with pytest.raises(UnimeError, match="--global-batch 1024 is not a multiple of 3 processes x 1 accumulation"):
        plan_embedder("Qwen/Qwen2-VL-2B-Instruct", {"global_batch": 1024}, gpus=3)
    with pytest.raises(UnimeError, match="--global-batch 4 is not a multiple of 2 processes x 4 accumulation"):
        plan_embedder("Qwen/Qwen2-VL-2B-Instruct", {"global_batch": 4, "grad_accum": 4}, gpus=2)
    assert main(["plan", "--recipe", "unime-v2/qwen2-vl-2b", "--gpus", "6"]) == 2
    assert capsys.readouterr().err.strip() == \
        "unime: error: --global-batch 1024 is not a multiple of 6 processes x 1 accumulation steps"
    # 1024 = 4 devices x 2 accumulation steps x 128 queries
    assert "per device 128 queries" in plan_embedder("Qwen/Qwen2-VL-2B-Instruct", {"global_batch": 1024,
                                                                                  "grad_accum": 2}, gpus=4).facts[1]


def test_the_verdict_says_it_keeps_2_gib_for_the_cuda_context():
    """QA: 'DOES NOT FIT' on a device with room for the plan's total did not say that 2 GiB are kept free."""
    from unime.train.memory_plan import Plan

    def verdict(memory_gb):
        plan = Plan(title="t", facts=[], rows=[("activations", 7 * GiB)], tokens_per_step=1, tokens_note="",
                    gpu_memory_gib=memory_gb)
        return plan.fits, next(line for line in plan.render().splitlines() if "total" in line).split("GiB: ")[1]

    assert verdict(8.5) == (False, "DOES NOT FIT (it needs 9.0 GiB with the 2 GiB kept for the CUDA context and "
                                   "fragmentation)")
    assert verdict(9.5) == (True, "fits (2.5 GiB left for the CUDA context and fragmentation)")
    assert Plan(title="t", facts=[], rows=[("a", GiB)], tokens_per_step=1, tokens_note="").fits is None


def test_hub_ids_of_known_releases_match_in_any_case(capsys):
    """QA: `unime plan --model qwen/qwen2-vl-2b-instruct` was an unknown checkpoint, though the Hub serves that repo
    id in any case; another owner's repo of the same name stays unknown."""
    from unime.cli import main
    from unime.errors import UnimeError
    from unime.models.known_checkpoints import known_checkpoint

    assert known_checkpoint("qwen/qwen2-vl-2b-instruct").name == "Qwen/Qwen2-VL-2B-Instruct"
    assert known_checkpoint("QWEN/QWEN2.5-VL-7B-INSTRUCT").name == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert known_checkpoint("qwen3-vl-2b-instruct").name == "Qwen/Qwen3-VL-2B-Instruct"  # the short name, as before
    with pytest.raises(UnimeError, match="unknown checkpoint 'someone/qwen2-vl-2b-instruct'"):
        known_checkpoint("someone/qwen2-vl-2b-instruct")
    assert main(["plan", "--stage", "embedder", "--model", "qwen/qwen2-vl-2b-instruct"]) == 0
    assert "model Qwen/Qwen2-VL-2B-Instruct: 2.21 B parameters" in capsys.readouterr().out


def test_a_plan_that_does_not_fit_hints_only_at_what_the_run_does_not_do_yet(capsys):
    """QA: `unime plan --recipe unime-v2/qwen2-vl-2b --gpus 8 --gpu-memory 8GB` (GradCache on, chunk 2) said "use
    --gradcache", and a reranker already at --gradient-checkpointing and batch 1 was told to use both."""
    from unime.cli import main
    from unime.train.memory_plan import plan_reranker

    assert main(["plan", "--recipe", "unime-v2/qwen2-vl-2b", "--gpus", "8", "--gpu-memory", "8GB"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "hint: try a smaller --chunk-size (now 2), --gradient-checkpointing or --max-pixels / --image-size to " \
        "shorten sequences"
    o = {"gradcache": True, "chunk_size": 1, "global_batch": 64, "hard_negatives": 8, "gradient_checkpointing": True}
    assert plan_embedder("Qwen/Qwen2-VL-2B-Instruct", o, gpus=8, gpu_memory_gib=4).hints == \
        ["try --max-pixels / --image-size to shorten sequences"]
    assert plan_embedder("Qwen/Qwen2-VL-2B-Instruct", {**o, "gradcache": False, "gradient_checkpointing": False},
                         gpus=8, gpu_memory_gib=4).hints == \
        ["try --gradcache with a small --chunk-size (activations then scale with the chunk, not the batch), "
         "--gradient-checkpointing, more devices (they split the --global-batch) or --max-pixels / --image-size to "
         "shorten sequences"]
    done = {"gradient_checkpointing": True, "batch_size": 1}
    assert plan_reranker("Qwen/Qwen2-VL-2B-Instruct", done, gpu_memory_gib=4).hints == \
        ["try --max-pixels to shorten sequences"]
    assert plan_reranker("Qwen/Qwen2-VL-2B-Instruct", {"batch_size": 2}, gpu_memory_gib=4).hints == \
        ["try --gradient-checkpointing, a smaller --batch-size (now 2) with --grad-accum or --max-pixels to shorten "
         "sequences"]


def test_gpu_memory_is_in_gib_as_nvidia_smi_reports_a_card(capsys):
    """QA: `--gpu-memory` was documented as GB 'as printed on the card' but compared as GiB. It is GiB, the unit of
    the verdict: a card sold as 80GB is 80 GiB to nvidia-smi (an A100 80GB: 81920 MiB), and nvidia-smi's own MiB
    are taken as they are (an H100 80GB: 81559 MiB = 79.65 GiB)."""
    import json

    from unime.cli import main
    from unime.train.memory_plan import Plan

    assert parse_memory("80GB") == parse_memory("80") == parse_memory("80 GiB") == parse_memory("81920MiB") == 80.0
    assert parse_memory("81559 MiB") == 81559 / 1024
    plan = Plan(title="t", facts=[], rows=[("activations", 70 * GiB)], tokens_per_step=1, tokens_note="",
                gpu_memory_gib=parse_memory("81559 MiB"))
    assert "  of 79.65 GiB: fits (9.6 GiB left" in plan.render()
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    assert "memory per device in GiB" in " ".join(capsys.readouterr().out.split())
    assert main(["plan", "--recipe", "unime-v2/qwen2-vl-2b", "--gpus", "8", "--gpu-memory", "81920MiB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["gpu_memory_gib"], out["fits"]) == (80.0, True)


def test_set_takes_each_option_kind_as_a_config_file_does(capsys):
    """QA: `--set gradcache=false` ended in argparse's "unrecognized arguments: false" (a store_true flag takes no
    value), so a recipe's flag could not be turned off. --set values now go through the option's own rules."""
    from unime.cli import main
    from unime.cli.plan import _command_options

    recipe = "unime-v2/qwen2-vl-2b"  # sets gradcache true, dora true, chunk-size 2
    off = _command_options("train embedder", recipe, ["gradcache=false", "dora=False", "chunk-size=4"])
    assert (off["gradcache"], off["dora"], off["chunk_size"]) == (False, False, 4)
    assert _command_options("train embedder", recipe, [])["gradcache"] is True
    on = _command_options("train reranker", None, ["gradient-checkpointing", "train-module=lm_head",
                                                   "train-module=embed_tokens", "skip-bad-records=true"])
    assert (on["gradient_checkpointing"], on["train_modules"], on["on_error"]) == \
        (True, ["lm_head", "embed_tokens"], "skip")
    assert _command_options("train reranker", None, ["gradient-checkpointing=false"])["gradient_checkpointing"] is False
    # without GradCache the recipe's 1024 queries x 10 sequences go through one forward
    assert main(["plan", "--recipe", recipe, "--set", "gradcache=false"]) == 0
    assert "activations (10240 sequences in one forward)" in capsys.readouterr().out
    for sets, line in ((["gradcache=maybe"], "--set: key 'gradcache': expected true or false, got 'maybe'"),
                       (["chunk-size=2", "chunk-size=3"], "--set: key 'chunk-size': expected a single value, got "
                                                          "list ['2', '3']"),
                       (["nope=1"], "--set: unknown key for `unime train embedder`: 'nope'"),
                       (["batchsize=3"], "--set: unknown key for `unime train embedder`: 'batchsize' (did you mean "
                                         "batch_size?)")):
        assert main(["plan", "--recipe", recipe, *(a for s in sets for a in ("--set", s))]) == 2
        assert capsys.readouterr().err.strip() == f"unime: error: {line}"


def test_a_set_per_device_batch_size_drops_the_recipes_global_batch(capsys):
    """QA: `unime plan --recipe unime-v2/qwen2-vl-2b --set batch-size=4` planned the recipe's --global-batch 1024
    (128 queries per device on 8) and ignored the batch size. A --set batch-size drops the recipe's global batch as
    the embedder's command line does; --set of both is refused in one line."""
    from unime.cli import main

    recipe = "unime-v2/qwen2-vl-2b"  # --global-batch 1024, 8 negatives, 672x672 images: 640 tokens per sequence
    assert main(["plan", "--recipe", recipe, "--gpus", "8", "--set", "batch-size=4"]) == 0
    out = capsys.readouterr().out
    # 4 per device x 8 devices = 32 queries x (query, positive, 8 negatives) x 640 tokens
    assert "per device 4 queries" in out and "(32 queries x 10 sequences x 640 tokens)" in out
    assert main(["plan", "--recipe", recipe, "--gpus", "8", "--set", "global-batch=64"]) == 0
    assert "per device 8 queries" in capsys.readouterr().out  # 64 / 8 devices
    assert main(["plan", "--recipe", recipe, "--set", "batch-size=4", "--set", "global-batch=64"]) == 2
    assert capsys.readouterr().err.strip() == \
        "unime: error: plan: give --batch-size (per device) or --global-batch (over all processes), not both"


def test_all_linear_plans_the_language_model_and_the_vision_tower_only_with_lora_vision(capsys):
    """QA: `--set lora-targets=all-linear` planned 29.2 M trainable parameters "on the language model" (the vision
    tower's too), with or without lora-vision. Qwen2-VL-2B's language model: 28 layers of q,k,v,o,gate,up,down
    (h 1536, 2 KV heads x 128, MLP 8960); its vision tower: 32 blocks of qkv 1280->3840, proj 1280->1280, fc1
    1280->5120, fc2 5120->1280 and the merger's 5120->5120, 5120->1536; LoRA r=16 adds r x (in + out) per linear."""
    from unime.cli import main

    language = 28 * 16 * ((1536 + 1536) + 2 * (1536 + 256) + (1536 + 1536) + 2 * (1536 + 8960) + (8960 + 1536))
    vision = 32 * 16 * ((1280 + 3840) + (1280 + 1280) + (1280 + 5120) + (5120 + 1280)) + \
        16 * ((5120 + 5120) + (5120 + 1536))
    plan = ["plan", "--stage", "embedder", "--model", "Qwen/Qwen2-VL-2B-Instruct", "--set", "lora-targets=all-linear"]
    assert main(plan) == 0
    assert f"LoRA r=16 on the language model: {language / 1e6:.1f} M trainable parameters" in capsys.readouterr().out
    assert main(plan + ["--set", "lora-vision"]) == 0
    out = capsys.readouterr().out
    assert f"LoRA r=16 on the language model + vision: {(language + vision) / 1e6:.1f} M trainable parameters" in out
    # the activations of all-linear are those of the 7 projections, the default targets
    o = {"dtype": "bf16", "lora_r": 16, "lora_dropout": 0.1, "hard_negatives": 8, "batch_size": 2}
    rows = [dict(plan_embedder("Qwen/Qwen2-VL-2B-Instruct", {**o, **t}).rows)
            for t in ({}, {"lora_targets": "all-linear"})]
    assert rows[0]["activations (20 sequences in one forward)"] == rows[1]["activations (20 sequences in one forward)"]


def _sequence_fact(out: str) -> str:
    return next(line.strip() for line in out.splitlines() if line.strip().startswith("sequence ~"))


def test_a_local_checkpoint_is_planned_with_its_recorded_images_and_an_adapter_from_its_base(tiny_model_dir,
                                                                                             tmp_path, capsys):
    """QA: a checkpoint trained with --image-size 64 (its unime_images.json) was planned with 1280x720 images, and an
    adapter folder as --model was an "unknown checkpoint". The recorded size is what every command loading the
    checkpoint uses, as --image-size 64 would; an adapter is planned on its base with its own LoRA (its trainable
    parameters are its file's, as training continues it with its own settings)."""
    import shutil

    from transformers import AutoModelForImageTextToText

    from unime.cli import main
    from unime.models.image_budget import ImageBudget
    from unime.models.lora import LoraSettings, apply_lora

    base = tiny_model_dir("qwen2_vl")
    plan = ["plan", "--stage", "embedder", "--model"]
    assert main(plan + [base]) == 0
    default = _sequence_fact(capsys.readouterr().out)
    assert main(plan + [base, "--set", "image-size=64"]) == 0
    at_64 = _sequence_fact(capsys.readouterr().out)
    assert "64x64 image" in at_64 and at_64 != default
    trained = tmp_path / "trained"
    shutil.copytree(base, trained)
    ImageBudget(image_size=(64, 64)).save(trained)
    assert main(plan + [str(trained)]) == 0
    assert _sequence_fact(capsys.readouterr().out) == at_64
    # an adapter (r 4, the language model's 7 projections) on the tiny base, recorded with its run's image size
    peft = apply_lora(AutoModelForImageTextToText.from_pretrained(base), LoraSettings(r=4, alpha=8, dropout=0.0))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    run = tmp_path / "run"
    peft.save_pretrained(run / "adapter")
    ImageBudget(image_size=(64, 64)).save(run)
    for model in (run / "adapter", run):
        assert main(plan + [str(model)]) == 0
        out = capsys.readouterr().out
        assert f"PEFT adapter {run / 'adapter'} on {base}" in out, out
        assert 1e3 <= trainable < 1e6  # a tiny adapter's count is in thousands
        assert f"LoRA r=4 of the adapter (its own settings) on the language model: {trainable / 1e3:.1f} K " \
               "trainable parameters" in out, out
        assert _sequence_fact(out) == at_64
    # a base that is neither a known release nor a local folder: what to pass
    config = run / "adapter" / "adapter_config.json"
    config.write_text(config.read_text().replace(base, "someone/unknown-vl"))
    assert main(plan + [str(run / "adapter")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"unime: error: {run / 'adapter'} is a PEFT adapter on 'someone/unknown-vl', neither a known "
                   "release nor a local folder with a config.json: give --model its base (a known release or a "
                   "local checkpoint folder of the same shapes)"), err


def test_parameter_counts_are_in_the_unit_that_shows_them(tiny_model_dir, capsys):
    """QA: `unime plan` printed a tiny model's parameters as "0.00 B parameters"."""
    import re

    from unime.cli import main
    from unime.train.memory_plan import parameter_count

    counts = (2_208_985_600, 999_999_999, 29_196_288, 1_000_000, 999_999, 12_345, 1_000, 999, 0)
    assert [parameter_count(n) for n in counts] == \
        ["2.21 B", "1.00 B", "29.2 M", "1.0 M", "1.0 M", "12.3 K", "1.0 K", "999", "0"]
    assert main(["plan", "--stage", "embedder", "--model", tiny_model_dir("qwen2_vl")]) == 0
    out = capsys.readouterr().out
    assert re.search(r": \d+\.\d [MK] parameters \(vision \d+\.\d [MK]\)", out) and "0.00 B" not in out, out


def test_a_lora_option_set_on_an_adapter_is_refused_as_training_refuses_it(tiny_model_dir, tmp_path, capsys):
    """`unime plan --model ADAPTER --set lora-r=8` planned the adapter's own r quietly, where the trainer refuses
    --lora-r with an adapter as --model (`refuse_lora_options_on_an_adapter`): the plan refuses it with the
    trainer's message; without the option it plans the adapter's own LoRA."""
    from transformers import AutoModelForImageTextToText

    from unime.cli import main
    from unime.models.lora import LoraSettings, apply_lora

    base = tiny_model_dir("qwen2_vl")
    peft = apply_lora(AutoModelForImageTextToText.from_pretrained(base), LoraSettings(r=4, alpha=8, dropout=0.0))
    adapter = tmp_path / "run" / "adapter"
    peft.save_pretrained(adapter)
    capsys.readouterr()  # the progress of the save
    for stage in ("embedder", "reranker"):
        assert main(["plan", "--stage", stage, "--model", str(adapter), "--set", "lora-r=8"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"unime: error: plan: --lora-r (command line (--set)) does nothing with --model {adapter}, a "
                       f"PEFT adapter trained with its own LoRA (r 4; for a new adapter, give its base model {base} "
                       "as --model): drop --lora-r"), err
        assert main(["plan", "--stage", stage, "--model", str(adapter)]) == 0
        assert "LoRA r=4 of the adapter (its own settings)" in capsys.readouterr().out


def test_the_reranker_recipe_as_shipped_fits_eight_80_gib_devices(capsys):
    """QA: `unime plan --recipe unime-v2/reranker-qwen2.5-vl-7b --gpus 8 --gpu-memory 80` said 275.67 GiB: DOES NOT
    FIT (4 records of 2 pairwise prompts ~1360 tokens + a listwise prompt ~3920 tokens, every layer's activations
    kept); the recipe now sets --gradient-checkpointing, so only each layer's input is kept."""
    from unime.cli import main

    assert main(["plan", "--recipe", "unime-v2/reranker-qwen2.5-vl-7b", "--gpus", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "activations (gradient checkpointing)" in out and "of 80 GiB: fits" in out, out


def test_dora_adds_two_values_per_adapted_output_feature_to_the_real_recipe_plan(capsys):
    """QA: `unime plan --recipe unime-v2/qwen2-vl-2b` printed the same activations (5.50 GiB) with and without
    `--set dora=false`. DoRA keeps, per token and decoder layer, the base and the LoRA output of each adapted linear:
    on Qwen2-VL-2B (28 layers, h 1536, 2 KV heads x 128, MLP 8960) 2 x (1536 + 256 + 256 + 1536 + 8960 + 8960 +
    1536) = 46080 values, in bf16, for a GradCache chunk of 2 sequences of 640 tokens (672x672 images)."""
    from unime.cli.plan import _command_options

    recipe = "unime-v2/qwen2-vl-2b"  # dora true
    label = "activations per GradCache chunk (2 sequences)"
    dora, lora = (dict(plan_embedder("Qwen/Qwen2-VL-2B-Instruct", _command_options("train embedder", recipe, s)).rows)
                  for s in ([], ["dora=false"]))
    assert dora[label] - lora[label] == 2 * 640 * 28 * 2 * 46080


def _planned_recipes() -> list[tuple[str, list[str]]]:
    """Each recipe with a plan, at its own stage, and at the reasoner's two stages where it names a reasoner."""
    from unime.cli.recipes import list_recipes, load_recipe

    return [(name, stage) for name in list_recipes() if load_recipe(name).plan
            for stage in ([[]] + ([["--stage", "reasoner-sft"], ["--stage", "reasoner-grpo"]]
                                  if load_recipe(name).plan.get("reasoner") else []))]


@pytest.mark.parametrize("recipe,stage", _planned_recipes())
def test_every_recipe_as_shipped_fits_eight_80_gib_devices_by_its_own_plan(recipe, stage, capsys):
    """QA: `unime plan --recipe embed-rl/qwen3-vl-4b --gpus 8 --gpu-memory 80` said 123.44 GiB: DOES NOT FIT (8
    queries x 2 sequences of ~944 tokens in one forward at unime's default batch and image bounds); the recipe now
    sets --gradcache with chunks of 2 sequences (23.2 GiB). A recipe a user launches as shipped must fit the paper's
    hardware class by the plan unime itself prints. Also the reasoner's stages (QA: SFT 140 GiB, 8 sequences with
    every layer's activations kept; GRPO 1078 GiB, the 8B fully fine-tuned on 40 completions in one forward): the
    recipes now set --gradient-checkpointing, LoRA and --micro-batch 4 (the release's micro-batch)."""
    from unime.cli import main

    assert main(["plan", "--recipe", recipe, *stage, "--gpus", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "of 80 GiB: fits" in out, out


def test_a_hub_adapter_is_planned_on_its_base_with_its_own_lora(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """QA: a PEFT adapter given to `unime plan` as a hub id was an unknown checkpoint, while training loads it as an
    adapter (`adapter_folder`). Now it is planned as its local folder is: on its base, with its own LoRA and the
    image size recorded with it. Offline, from a hub cache laid out as huggingface_hub lays it out."""
    from transformers import AutoModelForImageTextToText

    from tests.models.helpers import in_a_hub_cache
    from unime.cli import main
    from unime.models.image_budget import ImageBudget
    from unime.models.lora import LoraSettings, apply_lora

    base = tiny_model_dir("qwen2_vl")
    peft = apply_lora(AutoModelForImageTextToText.from_pretrained(base), LoraSettings(r=4, alpha=8, dropout=0.0))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    peft.save_pretrained(tmp_path / "adapter")
    ImageBudget(image_size=(64, 64)).save(tmp_path / "adapter")
    plan = ["plan", "--stage", "embedder", "--model"]
    assert main(plan + [base, "--set", "image-size=64"]) == 0
    at_64 = _sequence_fact(capsys.readouterr().out)
    in_a_hub_cache(tmp_path / "adapter", tmp_path / "hub", "someone/an-adapter", monkeypatch)
    assert main(plan + ["someone/an-adapter"]) == 0
    out = capsys.readouterr().out
    assert f"PEFT adapter someone/an-adapter on {base}" in out, out
    assert 1e3 <= trainable < 1e6  # a tiny adapter's count is in thousands (it was "0.0 M")
    assert f"LoRA r=4 of the adapter (its own settings) on the language model: {trainable / 1e3:.1f} K " \
           "trainable parameters" in out, out
    assert _sequence_fact(out) == at_64


def test_dora_plans_peft_weight_norm_transient_of_the_largest_adapted_linear(tiny_model_dir):
    """QA: the plan left out DoRA's weight-norm transient. PEFT's DoRA forward rebuilds each adapted linear's LoRA
    weight from an identity (in x in, fp32) and adds the scaled product to the weight before the norm (3 out x in
    matrices). Tiny Qwen2-VL (h 64, MLP 128, 4 heads x 16, 2 KV heads): down_proj (128 -> 64) is the largest."""
    model = tiny_model_dir("qwen2_vl")
    o = {"dtype": "fp32", "lora_r": 8, "gradcache": True, "chunk_size": 2, "batch_size": 1, "hard_negatives": 0}
    label = "DoRA weight-norm transient (largest adapted linear)"
    assert dict(plan_embedder(model, {**o, "dora": True}).rows)[label] == 128 * 128 * 4 + 3 * 64 * 128 * 4
    # bf16: the three out x in matrices at 2 bytes; down_proj's identity still the largest
    assert dict(plan_embedder(model, {**o, "dtype": "bf16", "dora": True}).rows)[label] == \
        128 * 128 * 4 + 3 * 64 * 128 * 2
    # q_proj and v_proj only: q_proj (64 -> 64) is the larger
    assert dict(plan_embedder(model, {**o, "dora": True, "lora_targets": "q_proj,v_proj"}).rows)[label] == \
        64 * 64 * 4 + 3 * 64 * 64 * 4
    assert label not in dict(plan_embedder(model, o).rows)


def test_an_embed_rl_embedder_is_planned_with_each_items_tcot_and_evidence_crops(tiny_model_dir, capsys):
    """QA: the Embed-RL embedder trains on reasoned items (the item, its T-CoT and the evidence crops its boxes cut:
    `reasoned_item`), but the plan sized the bare item. Qwen3-VL-2B under the recipe's 131072..786432 pixels (factor
    32): a 1280x720 photo is scaled by sqrt(921600 / 786432) to 36 x 20 = 720 tokens, a 640x360 crop rounds to
    640x352, 20 x 11 = 220 tokens; 64 text + 720 + 256 T-CoT (the reasoner's longest) + 220 = 1260."""
    from unime.cli import main

    assert main(["plan", "--recipe", "embed-rl/qwen3-vl-2b", "--gpus", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "sequence ~1260 tokens: 64 text/template + 1 x 720 visual" in out and \
        "+ 256 T-CoT + 1 x 220 evidence crop (640x360 image" in out, out
    model = tiny_model_dir("qwen2_vl")  # 224x224 -> 8 x 8 = 64 visual tokens, a crop too (the fixed resize)
    o = {"dtype": "fp32", "image_size": 224, "batch_size": 2, "hard_negatives": 0}
    assert plan_embedder(model, o).tokens_per_step == 2 * 2 * (64 + 64)  # no <emb> pooling: the bare item
    assert plan_embedder(model, {**o, "pooling": "emb"}).tokens_per_step == 2 * 2 * (64 + 64 + 256 + 64)
    assert plan_embedder(model, {**o, "pooling": "emb"}, tcot_tokens=100, evidence_crops=2).tokens_per_step == \
        2 * 2 * (64 + 64 + 100 + 2 * 64)
    assert main(["plan", "--recipe", "unime-v2/judge-qwen2.5-vl-7b", "--tcot-tokens", "5"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "unime: error: plan: --tcot-tokens: the judge stage " \
        "reads no T-CoT " \
        "(planned stages that do: embedder, reasoner-sft, reasoner-grpo)"


def _tiny_counts(model_dir: str, r: int) -> tuple[int, int]:
    """(all parameters, LoRA-trainable parameters) of the real tiny model, counted on its weights."""
    from transformers import AutoModelForImageTextToText

    from unime.models.lora import LoraSettings, apply_lora

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    total = sum(p.numel() for p in model.parameters())
    peft = apply_lora(model, LoraSettings(r=r, alpha=2 * r, dropout=0.0))
    return total, sum(p.numel() for p in peft.parameters() if p.requires_grad)


# tiny Qwen2-VL: hidden 64, MLP 128, 2 layers, 4 heads x 16, 2 KV heads, vocabulary 745; a 224x224 image: 64 tokens;
# the reasoning instruction: (270 + 123 characters + 20 for "Query: see above. ") // 4 = 103 tokens
TINY_PROMPT = 64 + 64 + 103


def test_the_reasoner_sft_plan_counts_the_policy_its_lora_and_trls_fused_lm_head(tiny_model_dir):
    from unime.train.memory_plan import plan_reasoner_sft

    model = tiny_model_dir("qwen2_vl")
    total, lora = _tiny_counts(model, 8)
    # LoRA r=8 on q, k, v, o, gate, up, down of 2 layers: 8 x ((64+64) + 2 (64+32) + (64+64) + 3 (64+128)) x 2
    assert lora == 8 * (128 + 2 * 96 + 128 + 3 * 192) * 2 == 16384
    o = {"dtype": "fp32", "lora_r": 8, "lora_dropout": 0.0, "batch_size": 2, "image_size": 224}
    plan = plan_reasoner_sft(model, o, tcot_tokens=100)
    rows, seq = dict(plan.rows), TINY_PROMPT + 100
    assert rows["weights (fp32, frozen)"] == total * 4 and rows["trainable weights (fp32)"] == lora * 4
    assert rows["optimizer states (adamw_torch, fp32 x2)"] == lora * 4 * 2
    assert plan.tokens_per_step == 2 * seq
    # QA: planned as the logits of every token (745 wide) with fp32 copies, 2 x seq x 745 x 12 bytes. TRL's SFTTrainer
    # scores the 2 x 100 T-CoT tokens with its fused LM head: one tile of 200 tokens x 32768 logits, their hidden
    # states (64 wide) saved, their fp32 gradient and its cast (4 + 4 + 4 bytes in fp32); the LoRA run's head is frozen
    assert rows["TRL's fused LM head (200 T-CoT tokens)"] == 200 * 32768 * 4 + 200 * 64 * (4 + 4 + 4)
    # full fine-tuning (--lora-r 0) in bf16: fp32 master weights, their gradients and AdamW's two states, all fp32 (QA:
    # planned as bf16 weights trained in place, which lost most updates of a small learning rate)
    full = dict(plan_reasoner_sft(model, {**o, "lora_r": 0, "dtype": "bf16"}, tcot_tokens=100).rows)
    assert (full["weights (fp32 master copy)"], full["gradients (fp32)"],
            full["optimizer states (adamw_torch, fp32 x2)"]) == (total * 4, total * 4, total * 4 * 2)
    # ... whose trained head (745 x 64) gets its gradient in fp32, then cast to bf16
    assert full["TRL's fused LM head (200 T-CoT tokens)"] == \
        200 * 32768 * 2 + 200 * 64 * (2 + 4 + 2) + 745 * 64 * (4 + 2)


def test_the_reasoner_grpo_plan_holds_the_policy_its_reference_the_reward_embedder_and_the_judge(tiny_model_dir):
    from unime.train.memory_plan import plan_reasoner_grpo

    model = tiny_model_dir("qwen2_vl")
    total, lora = _tiny_counts(model, 8)
    o = {"dtype": "fp32", "lora_r": 0, "num_generations": 4, "pairs_per_batch": 2, "max_completion_length": 32,
         "beta": 0.01, "embedder": model, "weights": "0.05,0.8,0.2", "hard_negative_pairs": 1, "image_size": 224}
    plan = plan_reasoner_grpo(model, o)
    rows = dict(plan.rows)
    assert rows["reference policy (frozen copy, fp32)"] == total * 4  # beta > 0, full fine-tuning: TRL's copy
    assert rows[f"reward embedder {model} (frozen)"] == rows[f"process judge {model} (frozen)"] == total * 4
    # 2 x 2 pairs x 4 generations = 16 completions of (prompt + 32) tokens; KV: 2 (K, V) x 2 layers x 2 heads x 16 x 4 B
    completions, seq = 16, TINY_PROMPT + 32
    assert plan.tokens_per_step == completions * seq
    assert f"generation, decoding: KV cache of the completions {completions * seq * 512 / GiB:.2f}" in plan.facts[-1]
    assert sum(1 for name in rows if name.startswith("largest phase: ")) == 1
    # LoRA: the reference policy is TRL's copy of the adapter; no process weight: no judge; beta 0: no reference
    lora_rows = dict(plan_reasoner_grpo(model, {**o, "lora_r": 8, "lora_dropout": 0.0}).rows)
    assert lora_rows["reference policy (TRL: LoRA adapter copy, fp32)"] == lora * 4
    bare = dict(plan_reasoner_grpo(model, {**o, "weights": "0.05,0.8,0", "beta": 0.0}).rows)
    assert not [name for name in bare if name.startswith(("process judge", "reference policy"))]
    # full fine-tuning in bf16 (the GPU default): fp32 master weights, gradients and optimizer states, as the trainer
    # holds them; TRL's reference policy and the frozen models in bf16
    bf16 = dict(plan_reasoner_grpo(model, {**o, "dtype": "bf16"}).rows)
    assert (bf16["weights (fp32 master copy)"], bf16["gradients (fp32)"],
            bf16["optimizer states (adamw_torch, fp32 x2)"]) == (total * 4, total * 4, total * 4 * 2)
    assert bf16["reference policy (frozen copy, bf16)"] == bf16[f"reward embedder {model} (frozen)"] == total * 2
    assert not [name for name in bf16 if "in place" in name]


def test_unime_plan_plans_the_reasoner_stages_of_an_embed_rl_recipe(capsys):
    """The recipe names its reasoner (Qwen3-VL-8B) for the reasoner stages; the recipe's --lora-r 16 for both (else
    each stage's own default: sft 16, grpo 0, full fine-tuning), and GRPO's reward embedder is the recipe's embedder
    (Qwen3-VL-2B)."""
    from unime.cli import main

    recipe = ["plan", "--recipe", "embed-rl/qwen3-vl-2b", "--stage"]
    assert main(recipe + ["reasoner-sft"]) == 0
    out = capsys.readouterr().out
    assert "reasoner Qwen/Qwen3-VL-8B-Instruct: 8.77 B parameters" in out and "LoRA r=16 on the language model" in out
    assert main(recipe + ["reasoner-grpo"]) == 0
    out = capsys.readouterr().out
    assert "LoRA r=16 on the language model" in out and "reward embedder Qwen/Qwen3-VL-2B-Instruct (frozen)" in out
    assert "10 prompts (5 pairs) x 4 generations = 40 completions of <= 2048 tokens" in out, out
    assert main(recipe + ["reasoner-grpo", "--set", "lora-r=0"]) == 0
    assert "full fine-tuning: 8.77 B" in capsys.readouterr().out
    assert main(["plan", "--stage", "reasoner-grpo", "--model", "Qwen/Qwen3-VL-8B-Instruct"]) == 2
    assert "give the reward embedder: --set embedder=CHECKPOINT" in capsys.readouterr().err


def test_the_embedder_plan_keeps_only_each_layers_input_with_gradient_checkpointing():
    """`train embedder --gradient-checkpointing` (new) was planned with every layer's activations kept. With it, per
    sequence token only each decoder layer's input is kept (Qwen2-VL-2B: 28 layers x hidden 1536, bf16) plus one
    layer's activations at a time (1/28 of the run without it); a GradCache chunk the same way, and the hint names it
    only while it is off."""
    o = {"batch_size": 2, "hard_negatives": 2, "dtype": "bf16"}
    for extra, label in (({}, "activations (8 sequences in one forward)"),
                         ({"gradcache": True, "chunk_size": 2}, "activations per GradCache chunk (2 sequences)")):
        off = plan_embedder("Qwen/Qwen2-VL-2B-Instruct", {**o, **extra}, text_tokens=64, images_per_item=1.0,
                            gpu_memory_gib=1)
        on = plan_embedder("Qwen/Qwen2-VL-2B-Instruct", {**o, **extra, "gradient_checkpointing": True},
                           text_tokens=64, images_per_item=1.0, gpu_memory_gib=1)
        sequences = 8 if not extra else 2
        seq = int(next(f for f in off.facts if f.startswith("sequence ~")).split("~")[1].split()[0])
        tokens = sequences * seq
        assert dict(on.rows)[label + " (gradient checkpointing)"] == \
            pytest.approx(tokens * 1536 * 2 * 28 + dict(off.rows)[label] / 28)
        assert "--gradient-checkpointing" in off.hints[0] and "--gradient-checkpointing" not in on.hints[0]


def test_the_reasoner_plans_keep_only_each_layers_input_with_gradient_checkpointing():
    """`train reasoner --gradient-checkpointing` (new; TRL's default of on had been turned off): SFT's activations of
    8 sequences, and GRPO's policy phase (2 x 2 prompts x 4 completions), each layer's input only (Qwen2-VL-2B: 28
    layers x hidden 1536, bf16) plus 1/28 of the activations without it; the logits are the same."""
    from unime.train.memory_plan import plan_reasoner_grpo, plan_reasoner_sft

    model, o = "Qwen/Qwen2-VL-2B-Instruct", {"batch_size": 8, "lora_r": 16}
    off, on = (plan_reasoner_sft(model, {**o, "gradient_checkpointing": c}, tcot_tokens=100) for c in (False, True))
    seq = int(next(f for f in off.facts if "sequences of ~" in f).split("sequences of ~")[1].split()[0])
    label = "activations (8 sequences in one forward)"
    assert dict(on.rows)[label + " (gradient checkpointing)"] == \
        pytest.approx(8 * seq * 1536 * 2 * 28 + dict(off.rows)[label] / 28)
    logits = "TRL's fused LM head (800 T-CoT tokens)"
    assert dict(on.rows)[logits] == dict(off.rows)[logits]
    o = {"lora_r": 16, "embedder": model, "max_completion_length": 64, "weights": "0.05,0.8,0"}
    off, on = (plan_reasoner_grpo(model, {**o, "gradient_checkpointing": c}) for c in (False, True))
    phase = "largest phase: policy forward + backward of 16 completions: activations"
    (off_label, off_bytes), = [(k, v) for k, v in off.rows if k.startswith(phase)]
    (on_label, on_bytes), = [(k, v) for k, v in on.rows if k.startswith(phase)]
    assert on_label == phase + " (gradient checkpointing) + TRL's fused LM head" and off_label != on_label
    assert on_bytes < off_bytes


def test_the_grpo_policy_phase_counts_trls_fused_lm_head_not_the_completion_logits():
    """QA: `unime plan --recipe embed-rl/qwen3-vl-2b --stage reasoner-grpo` planned the logits of the 40 x 2048
    completion tokens over Qwen3-VL-8B's 151,936-word vocabulary with fp32 copies (40 x 2048 x 151936 x 10 B = 116
    GiB). TRL's GRPOTrainer (>= 1.16, `add_fused_lm_head`) never builds them: one tile of 4096 tokens x 32768 logits
    (bf16), the 81,920 completion tokens' hidden states (4096 wide) saved, their gradient in fp32 and its bf16 cast,
    and, the head being trained (full fine-tuning), its 151936 x 4096 weight gradient in fp32 and its bf16 cast."""
    from unime.cli.plan import _command_options
    from unime.train.memory_plan import activation_bytes_per_token, model_shapes, plan_reasoner_grpo

    model = "Qwen/Qwen3-VL-8B-Instruct"
    o = {**_command_options("train reasoner", "embed-rl/qwen3-vl-2b", []), "embedder": "Qwen/Qwen3-VL-2B-Instruct",
         "lora_r": 0, "gradient_checkpointing": False, "micro_batch": None}
    plan = plan_reasoner_grpo(model, o)
    (label, phase), = [(k, v) for k, v in plan.rows if k.startswith("largest phase: policy")]
    assert label == "largest phase: policy forward + backward of 40 completions: activations + TRL's fused LM head"
    seq = int(next(f for f in plan.facts if "prompt ~" in f).split("prompt ~")[1].split()[0]) + 2048
    per_tok = activation_bytes_per_token(model_shapes(model), seq_len=seq, act_bytes=2, lora_r=0, n_lora=0,
                                         lora_dropout=0.0, autocast_bf16=True)
    fused = 4096 * 32768 * 2 + 40 * 2048 * 4096 * (2 + 4 + 2) + 151936 * 4096 * (4 + 2)
    assert phase == pytest.approx(40 * seq * per_tok + fused)


def test_the_fused_lm_head_tile_sizes_are_the_installed_trls():
    """`fused_lm_head_bytes` copies TRL's tile sizes (planning does not import trl): the installed TRL's."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    from unime.train.memory_plan import TRL_TOKEN_CHUNK, TRL_VOCAB_CHUNK

    assert (TRL_TOKEN_CHUNK, TRL_VOCAB_CHUNK) == (chunked_logprob.TOKEN_CHUNK_SIZE,
                                                  trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE)


def test_the_grpo_policy_phase_is_one_micro_batch_and_generation_still_holds_every_completion():
    """`train reasoner --micro-batch 4` (new): TRL runs the policy's loss on per_device_train_batch_size = 4 of the
    step's 2 x 5 x 4 = 40 completions at a time (`embed_rl_grpo_config`), but generates all 40 together. The policy
    phase is then that of 4 completions: 4 x seq tokens of activations and 4 x 2048 tokens through the fused LM head;
    the generation phase's KV cache still holds 40 x seq tokens (36 layers x 2 x 8 KV heads x 128 x 2 B a token)."""
    from unime.cli.plan import _command_options
    from unime.train.memory_plan import activation_bytes_per_token, model_shapes, plan_reasoner_grpo

    model = "Qwen/Qwen3-VL-8B-Instruct"
    o = {**_command_options("train reasoner", "embed-rl/qwen3-vl-2b", []), "embedder": "Qwen/Qwen3-VL-2B-Instruct",
         "lora_r": 0, "gradient_checkpointing": False, "micro_batch": 4}
    plan = plan_reasoner_grpo(model, o)
    seq = int(next(f for f in plan.facts if "prompt ~" in f).split("prompt ~")[1].split()[0]) + 2048
    per_tok = activation_bytes_per_token(model_shapes(model), seq_len=seq, act_bytes=2, lora_r=0, n_lora=0,
                                         lora_dropout=0.0, autocast_bf16=True)
    fused = 4096 * 32768 * 2 + 4 * 2048 * 4096 * (2 + 4 + 2) + 151936 * 4096 * (4 + 2)
    phase = "policy forward + backward of 4 completions: activations + TRL's fused LM head"
    phases = plan.facts[-1]
    assert f"{phase} {(4 * seq * per_tok + fused) / GiB:.2f}" in phases, phases
    kv = 40 * seq * 36 * 2 * 8 * 128 * 2
    assert f"generation, decoding: KV cache of the completions {kv / GiB:.2f}" in phases, phases
    assert "the policy's loss on 4 at a time (10 accumulated forward + backward)" in plan.facts[-3], plan.facts
    assert plan.tokens_per_step == 40 * 8 // 8 * seq  # one device: all 40 completions, as without micro-batches


def test_the_reasoner_plans_hint_as_the_embedder_plan_does(capsys):
    """Review: `unime plan --stage reasoner-sft --gpu-memory 80` said DOES NOT FIT without a hint line (the embedder and
    reranker plans name what would help). Both reasoner stages now hint through the same writer: the ways the run does
    not take yet, and LoRA (--lora-r N) while it fine-tunes fully (GRPO's default --lora-r 0); GRPO a smaller
    --micro-batch while the policy's loss runs on more than one completion at a time."""
    from unime.cli import main
    from unime.train.memory_plan import plan_reasoner_grpo, plan_reasoner_sft

    model = "Qwen/Qwen2-VL-2B-Instruct"
    assert plan_reasoner_sft(model, {"lora_r": 16}, gpu_memory_gib=4).hints == \
        ["try --gradient-checkpointing, a smaller --batch-size (now 8) with --grad-accum or --max-pixels to shorten "
         "sequences"]
    assert plan_reasoner_sft(model, {"lora_r": 0, "batch_size": 1, "gradient_checkpointing": True},
                             gpu_memory_gib=4).hints == \
        ["try --lora-r N (LoRA: no full gradients and optimizer states) or --max-pixels to shorten sequences"]
    grpo = {"lora_r": 0, "embedder": model}  # 2 x 2 pairs x 4 generations: 16 completions in one micro-batch
    assert plan_reasoner_grpo(model, grpo, gpu_memory_gib=4).hints == \
        ["try --gradient-checkpointing, --lora-r N (LoRA: no full gradients and optimizer states), a smaller "
         "--micro-batch (now 16) or --max-pixels to shorten sequences"]
    done = {**grpo, "lora_r": 16, "gradient_checkpointing": True, "micro_batch": 1}
    assert plan_reasoner_grpo(model, done, gpu_memory_gib=4).hints == ["try --max-pixels to shorten sequences"]
    assert plan_reasoner_sft(model, {"lora_r": 16}, gpu_memory_gib=1000).hints == []  # it fits: no hint
    assert main(["plan", "--stage", "reasoner-grpo", "--model", model, "--set", f"embedder={model}",
                 "--gpu-memory", "40"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "hint: try --gradient-checkpointing, --lora-r N (LoRA: no full gradients and optimizer states), a smaller " \
        "--micro-batch (now 16) or --max-pixels to shorten sequences"


def test_the_judge_plan_hints_as_the_other_stages_do(capsys):
    """Review: `unime plan --recipe unime-v2/judge-qwen2.5-vl-7b --gpu-memory 16` said DOES NOT FIT without a hint line
    (the other stages name what would help). The judge's hint names the `unime mine` options that reduce it and by how
    much: --chunk-size 1 instead of 16 keeps 1/16 of the chunk's KV cache and transients, --dtype bf16 halves every
    row of an fp32 judge, and shorter sequences. By hand for Qwen2.5-VL-7B (28 layers, 4 KV heads x 128, hidden 3584,
    MLP 18944) at 672x672 (576 visual tokens): prefix 80 + 64 + 576 = 720 tokens, continuations 64 + 576 + 8 = 648."""
    from unime.cli import main

    model = "Qwen/Qwen2.5-VL-7B-Instruct"
    o = {"dtype": "fp32", "image_size": 672, "chunk_size": 16}
    plan = plan_judge(model, o, gpu_memory_gib=16)
    kv_chunk = 16 * (720 + 648) * (2 * 28 * 4 * 128 * 4)
    transients = 16 * 648 * (2 * 18944 + 4 * 3584) * 4
    assert (kv_chunk, transients) == (2510290944, 2165833728)
    saved_by_chunk_1 = (kv_chunk + transients) * 15 / 16
    saved_by_bf16 = plan.total - plan_judge(model, {**o, "dtype": "bf16"}).total
    assert saved_by_bf16 == pytest.approx(plan.total / 2)
    assert plan.hints == [f"try a smaller --chunk-size (now 16: --chunk-size 1 saves {saved_by_chunk_1 / GiB:.2f} "
                          f"GiB), --dtype bf16 (now fp32: saves {saved_by_bf16 / GiB:.2f} GiB, half of every row) or "
                          "--max-pixels / --image-size to shorten sequences"]
    assert f"{saved_by_chunk_1 / GiB:.2f}" == "4.08"
    # what the run already does is not suggested; a judge that fits gets no hint
    assert plan_judge(model, {**o, "dtype": "bf16", "chunk_size": 1}, gpu_memory_gib=16).hints == \
        ["try --max-pixels / --image-size to shorten sequences"]
    assert plan_judge(model, o, gpu_memory_gib=80).hints == []
    assert main(["plan", "--recipe", "unime-v2/judge-qwen2.5-vl-7b", "--gpu-memory", "16"]) == 0
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and out.splitlines()[-1].startswith("hint: try a smaller --chunk-size (now 16: "
                                                                     "--chunk-size 1 saves ")


def test_the_grpo_process_judge_phase_is_its_prefill_kv_cache_and_one_layers_transients():
    """Review: the process judge phase counted only the KV cache of its listwise prompts (20.97 GiB on the embed-rl
    recipes, the step's largest phase). Each reasoning is counted at --max-completion-length, which is what the judge
    reads at most: `EmbedRLReward.process` shows it every completion's full decoded text (TRL cuts them at that length),
    the judged rollout and its n + hard-negative-pairs candidates in one prompt, 8 prompts per `generate` call
    (`Reasoner.batch_size`), padded to the longest. But the judge reads them in one prefill forward: at its last
    layer every layer's KV cache is held and that layer's intermediates over all the batch's tokens, as the reward
    embedder's and the mining judge's forwards are planned (`forward_transient_bytes`). By hand for the recipe's
    Qwen3-VL-8B judge (36 layers, 8 KV heads x 128, hidden 4096, MLP 12288, bf16): prompts of 80 + 9 x (64 + 2048) =
    19088 tokens, 8 of them."""
    from unime.cli.plan import _command_options
    from unime.train.memory_plan import plan_reasoner_grpo

    model = "Qwen/Qwen3-VL-8B-Instruct"
    o = {**_command_options("train reasoner", "embed-rl/qwen3-vl-2b", []), "embedder": "Qwen/Qwen3-VL-2B-Instruct",
         "lora_r": 16}
    plan = plan_reasoner_grpo(model, o)
    tokens = 8 * (80 + 9 * (64 + 2048))
    kv = tokens * 2 * 36 * 8 * 128 * 2
    transients = tokens * (2 * 12288 + 4 * 4096) * 2
    assert (tokens, kv, transients) == (152704, 22517121024, 12509511680)
    phase = ("process judge (--process-pick generate): 8 listwise prompts' KV cache + the prefill's transients "
             "(one layer)")
    assert f"{phase} {(kv + transients) / GiB:.2f}" in plan.facts[-1], plan.facts[-1]
    assert dict(plan.rows)[f"largest phase: {phase}"] == kv + transients


def test_the_grpo_generation_phase_is_the_larger_of_its_prefill_and_its_decoding():
    """Review: the generation phase counted only the completions' KV cache at the end of decoding. Before it, the
    policy reads the step's prompts in one prefill forward (TRL's `generate` with the KV cache on: gradient
    checkpointing is off while it generates), which at its last layer holds every layer's KV cache of the prompts and
    that layer's intermediates over all of them (`forward_transient_bytes`, as the process judge's prefill). Those
    transients are freed before the completions' cache grows, so the phase is the larger of the two, not their sum.
    By hand for Qwen3-VL-8B (36 layers, 8 KV heads x 128, hidden 4096, MLP 12288, bf16): 40 prompts of 887 tokens
    (64 text + 720 visual + 103 instruction); a token's KV 147456 B, its one-layer transients 81920 B."""
    from unime.cli.plan import _command_options
    from unime.train.memory_plan import plan_reasoner_grpo

    model = "Qwen/Qwen3-VL-8B-Instruct"
    o = {**_command_options("train reasoner", "embed-rl/qwen3-vl-2b", []), "embedder": "Qwen/Qwen3-VL-2B-Instruct",
         "lora_r": 16, "weights": "0.05,0.8,0"}
    prefill = "generation, prefill: the prompts' KV cache + one layer's transients"
    decoding = "generation, decoding: KV cache of the completions"
    # the recipe's 2048-token completions: decoding's cache is the larger, the phase as before
    plan = plan_reasoner_grpo(model, o)
    assert "prompt ~887 tokens" in plan.facts[-3], plan.facts
    assert (40 * 887 * (147456 + 81920), 40 * (887 + 2048) * 147456) == (8138260480, 17311334400)
    assert f"{prefill} {8138260480 / GiB:.2f}, " in plan.facts[-1], plan.facts[-1]
    assert f"{decoding} {17311334400 / GiB:.2f}, " in plan.facts[-1], plan.facts[-1]
    assert dict(plan.rows)[f"largest phase: {decoding}"] == 17311334400
    # 256-token completions (the stage's default): the prefill is the larger, 7.58 GiB against 6.28
    short = plan_reasoner_grpo(model, {**o, "max_completion_length": 256})
    assert 40 * (887 + 256) * 147456 == 6741688320
    assert f"{decoding} {6741688320 / GiB:.2f}, " in short.facts[-1], short.facts[-1]
    assert dict(short.rows)[f"largest phase: {prefill}"] == 8138260480


# the process judge of the scored-pick tests: Qwen2-VL-2B (28 layers, 2 KV heads x 128, hidden 1536, MLP 8960) in fp32
SCORED_JUDGE = "Qwen/Qwen2-VL-2B-Instruct"
JUDGE_KV_TOKEN, JUDGE_TRANSIENT_TOKEN = 2 * 28 * 2 * 128 * 4, (2 * 8960 + 4 * 1536) * 4


def test_the_grpo_process_judge_phase_follows_the_pick_the_options_select(tiny_model_dir):
    """Review: `--process-pick score` (`ScoredPick`, the demo's Embed-RL group) was planned as the generative pick's 8
    listwise prompts. A Yes/No judge scores every (query rollout, candidate) pair instead (`JudgeScorer.score_pairs`):
    per rollout, the query's prefix run once with its KV cache, then its n + hard-negative-pairs candidates in chunks
    of at most 16 (JudgeScorer's), each chunk with a cache holding a prefix copy per row plus the continuations and
    one layer's transients over the continuation tokens, as mining's judge is planned. Each side is its item (text and
    images) followed by its T-CoT (`tcot_judge_item`), the reasoning at its longest. By hand: a tiny policy and
    embedder, the 2B judge in fp32, 224x224 images (8 x 8 = 64 visual tokens), 32-token completions: items of 64 text
    + 64 visual + 32 T-CoT = 160 tokens; prefix 80 + 160 (the prompt's instruction and template), continuation
    160 + 8 (the prompt's end and the assistant's opening)."""
    from unime.train.memory_plan import plan_reasoner_grpo

    model = tiny_model_dir("qwen2_vl")
    o = {"dtype": "fp32", "lora_r": 8, "lora_dropout": 0.0, "num_generations": 4, "pairs_per_batch": 2,
         "max_completion_length": 32, "micro_batch": 1, "beta": 0.0, "embedder": model, "process_judge": SCORED_JUDGE,
         "weights": "0.05,0.8,0.2", "hard_negative_pairs": 1, "image_size": 224}
    prefix, cont = 80 + 160, 160 + 8

    def scored(chunk: int) -> int:
        return (prefix * JUDGE_KV_TOKEN + chunk * (prefix + cont) * JUDGE_KV_TOKEN
                + chunk * cont * JUDGE_TRANSIENT_TOKEN)

    def phase(chunk: int) -> str:
        return (f"largest phase: process judge (--process-pick score): the query prefix's KV cache + a chunk of "
                f"{chunk} candidates' KV cache (a prefix copy per row) + the chunk's transients (one layer)")

    # 4 generations + 1 hard negative pair: 5 candidates a rollout, one chunk
    assert scored(5) == 211599360
    assert dict(plan_reasoner_grpo(model, {**o, "process_pick": "score"}).rows)[phase(5)] == 211599360
    # 16 generations + 1: 17 candidates, chunks of 16 (and 1): the phase is a 16-row chunk's
    assert scored(16) == 646840320
    many = {**o, "process_pick": "score", "num_generations": 16}
    assert dict(plan_reasoner_grpo(model, many).rows)[phase(16)] == 646840320
    # generate (the default) as before: 8 listwise prompts of 80 + (1 + 4 + 1) x (64 text + 32 reasoning) tokens
    listwise = 8 * (80 + 6 * (64 + 32))
    assert listwise * (JUDGE_KV_TOKEN + JUDGE_TRANSIENT_TOKEN) == 806092800
    generate = ("largest phase: process judge (--process-pick generate): 8 listwise prompts' KV cache + the "
                "prefill's transients (one layer)")
    for pick in ({}, {"process_pick": "generate"}):
        assert dict(plan_reasoner_grpo(model, {**o, **pick}).rows)[generate] == 806092800


def test_unime_plan_takes_the_process_pick_from_set_and_from_a_recipe(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`unime plan --stage reasoner-grpo` plans the process pick the planned command would make: the stage's default
    (generate), `--set process-pick=score`, or a recipe's `process-pick`."""
    import shutil
    from importlib import resources
    from pathlib import Path

    import yaml

    from unime.cli import main

    model = tiny_model_dir("qwen2_vl")
    grpo = ["plan", "--stage", "reasoner-grpo", "--model", model, "--set", f"embedder={model}",
            "--set", f"process-judge={SCORED_JUDGE}", "--set", "image-size=224", "--set", "micro-batch=1"]
    for sets, pick in (([], "generate"), (["--set", "process-pick=score"], "score"),
                       (["--set", "process_pick=score"], "score"), (["--set", "process-pick=generate"], "generate")):
        assert main(grpo + sets) == 0
        out = capsys.readouterr().out
        assert f"largest phase: process judge (--process-pick {pick})" in out, (sets, out)
    # a recipe that sets it (the shipped ones keep the paper's generate): a copy of the recipes with one more
    root = tmp_path / "recipes"
    shutil.copytree(Path(str(resources.files("unime.cli.recipes"))), root)
    raw = yaml.safe_load((root / "embed-rl" / "qwen3-vl-2b.yaml").read_text())
    raw["commands"]["train reasoner"]["process-pick"] = {"value": "score", "source": "a test"}
    (root / "embed-rl" / "scored.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr("unime.cli.recipes._root", lambda: root)
    recipe = ["plan", "--recipe", "embed-rl/scored", "--stage", "reasoner-grpo"]
    assert main(recipe) == 0
    assert "process judge (--process-pick score): the query prefix's KV cache" in capsys.readouterr().out
    assert main(recipe + ["--set", "process-pick=generate"]) == 0
    assert "process judge (--process-pick generate): 8 listwise prompts" in capsys.readouterr().out


@pytest.mark.parametrize("sets,line", [
    (["gradcache=false", "chunk-size=4"], "plan: --chunk-size (command line (--set)) does nothing without --gradcache: "
                                          "add --gradcache or drop --chunk-size"),
    (["full", "lora-r=8"], "plan: --lora-r (command line (--set)) does nothing with --full: drop one of them"),
])
def test_a_set_option_the_trainer_refuses_as_doing_nothing_is_refused(sets, line, capsys):
    """QA (README's `unime plan --recipe unime-v2/qwen2-vl-2b --set gradcache=false --set chunk-size=4`): the plan
    ignored the chunk size and planned one forward of every sequence, where `unime train embedder` with the same
    options refuses --chunk-size without --gradcache. The plan refuses a --set option the planned trainer refuses as
    doing nothing; the recipe's own chunk size with --set gradcache=false stays quiet, as on the trainer."""
    from unime.cli import main

    argv = ["plan", "--recipe", "unime-v2/qwen2-vl-2b", *(a for s in sets for a in ("--set", s))]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"unime: error: {line}"
    assert main(["plan", "--recipe", "unime-v2/qwen2-vl-2b", "--set", "gradcache=false"]) == 0


def test_a_set_option_of_the_other_reasoner_stage_is_refused(capsys):
    """`train reasoner --stage sft --beta 0.1` is refused (--beta acts only with --stage grpo); so is its plan."""
    from unime.cli import main

    assert main(["plan", "--recipe", "embed-rl/qwen3-vl-2b", "--stage", "reasoner-sft", "--set", "beta=0.1"]) == 2
    assert capsys.readouterr().err.strip() == ("unime: error: plan: --beta (command line (--set)) does nothing with "
                                               "--stage sft: it acts only with --stage grpo; drop --beta")


def test_the_readme_plan_commands_run(capsys):
    """Every `unime plan` command of the README's code blocks plans (exit 0)."""
    import shlex
    from pathlib import Path

    from unime.cli import main

    readme = Path(__file__).resolve().parents[2] / "README.md"
    commands = [shlex.split(line, comments=True)[1:] for line in readme.read_text(encoding="utf-8").splitlines()
                if line.startswith("unime plan ")]
    assert len(commands) >= 2
    for argv in commands:
        assert main(argv) == 0, argv
