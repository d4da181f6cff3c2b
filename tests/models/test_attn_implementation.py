"""`--attn-implementation`: the attention kernel a model loads with (transformers' `attn_implementation`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unime.errors import ModelError


def _items():
    return [{"text": "a red circle"}, {"image": Image.new("RGB", (96, 80), (200, 10, 10))},
            {"text": "a much longer text about a blue square on the left of a small star"}]


def _attn(model) -> str:
    return model.config._attn_implementation


def test_eager_and_sdpa_give_the_same_embeddings_and_the_model_runs_the_one_asked_for(tiny_model_dir):
    from unime import Embedder

    path = tiny_model_dir("qwen2_vl")
    eager = Embedder.from_pretrained(path, device="cpu", attn_implementation="eager")
    sdpa = Embedder.from_pretrained(path, device="cpu", attn_implementation="sdpa")
    assert _attn(eager.model) == "eager" and _attn(sdpa.model) == "sdpa"
    assert _attn(eager.model.model.language_model) == "eager"  # the sub-configs too
    a, b = eager.encode(_items()), sdpa.encode(_items())
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a[0] - a[1]).max() > 1e-3  # the items themselves differ


def test_without_the_option_the_load_is_transformers_default_bit_for_bit(tiny_model_dir, monkeypatch):
    import transformers

    from unime import Embedder

    seen = []
    original = transformers.AutoModelForImageTextToText.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(sorted(kwargs))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", classmethod(spy))
    path = tiny_model_dir("qwen2_vl")
    default = Embedder.from_pretrained(path, device="cpu")
    assert seen == [["dtype"]]  # no attn_implementation keyword at all: transformers picks, as before the option
    plain = transformers.AutoModelForImageTextToText.from_pretrained(path)
    assert _attn(default.model) == _attn(plain) == "sdpa"
    sdpa = Embedder.from_pretrained(path, device="cpu", attn_implementation="sdpa")
    np.testing.assert_array_equal(default.encode(_items()), sdpa.encode(_items()))


def test_the_judge_and_the_reasoner_load_with_the_option(tiny_model_dir):
    from unime.models.judge import JudgeScorer
    from unime.reasoning.reasoner import Reasoner

    path = tiny_model_dir("qwen2_vl")
    assert _attn(JudgeScorer.from_pretrained(path, device="cpu", attn_implementation="eager").model) == "eager"
    assert _attn(Reasoner.from_pretrained(path, device="cpu", attn_implementation="eager").model) == "eager"


def test_an_unknown_name_is_one_line_naming_the_option_and_the_model(tiny_model_dir):
    from unime.models.loading import load_model

    path = tiny_model_dir("qwen2_vl")
    with pytest.raises(ModelError) as e:
        load_model(path, device="cpu", attn_implementation="flash_attn_2")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--attn-implementation flash_attn_2 (model ")
    assert path in msg and "sdpa" in msg and "eager" in msg and "flash_attention_2" in msg


@pytest.mark.parametrize("name", ["flash_attention_2", "flash_attention_3"])
def test_flash_attention_on_a_cpu_is_refused_before_the_weights_load(tiny_model_dir, name, monkeypatch):
    import transformers

    from unime.models.loading import load_model

    def must_not_load(*a, **k):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", must_not_load)
    with pytest.raises(ModelError, match=rf"^--attn-implementation {name} \(model .*\): FlashAttention needs a GPU, "
                                         r"not device='cpu' \(use sdpa or eager\)$"):
        load_model(tiny_model_dir("qwen2_vl"), device="cpu", attn_implementation=name)


def test_flash_attention_without_its_package_is_refused(monkeypatch):
    import transformers.modeling_flash_attention_utils as fa
    import transformers.utils

    from unime.models.loading import check_attn_implementation

    monkeypatch.setitem(fa.FLASH_ATTENTION_COMPATIBILITY_MATRIX, 2,
                        {**fa.FLASH_ATTENTION_COMPATIBILITY_MATRIX[2], "pkg_availability_check": lambda: False})
    monkeypatch.setattr(transformers.utils, "is_kernels_available", lambda: False)
    with pytest.raises(ModelError, match=r"^--attn-implementation flash_attention_2 \(model 'm'\): its package is "
                                         r"not installed \(flash_attention_2: pip install flash-attn"):
        check_attn_implementation("flash_attention_2", "cuda", "m")
    # with the kernels package transformers fetches a build instead: left to it
    monkeypatch.setattr(transformers.utils, "is_kernels_available", lambda: True)
    check_attn_implementation("flash_attention_2", "cuda", "m")
    check_attn_implementation(None, "cpu", "m")
    check_attn_implementation("sdpa", "cpu", "m")


def test_what_transformers_refuses_at_load_is_translated(tiny_model_dir):
    from transformers import AttentionInterface

    from unime.models.loading import load_model

    # the accepted names are transformers' registry: one registered there (a new kernel) loads
    AttentionInterface.register("unime_test_attn", lambda *a, **k: None)
    try:
        assert _attn(load_model(tiny_model_dir("qwen2_vl"), device="cpu",
                                attn_implementation="unime_test_attn").model) == "unime_test_attn"
    finally:
        AttentionInterface._global_mapping.pop("unime_test_attn", None)
    # a hub kernel (ORG/REPO) is left to transformers, whose failure to fetch it (offline) is one line
    with pytest.raises(ModelError, match=r"^--attn-implementation no-such-org/no-such-kernel \(model .*\): "
                                         r"transformers cannot use it \("):
        load_model(tiny_model_dir("qwen2_vl"), device="cpu", attn_implementation="no-such-org/no-such-kernel")
