"""`unime.models.loading.hub_adapter_config`: is a hub id a PEFT adapter, asked of the local cache first and of
the hub once, without huggingface_hub's retries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """A hub that refuses every connection (a closed local port), HF_HUB_OFFLINE unset (huggingface_hub's constant
    and the environment variable), no id asked about yet, an empty cache in tmp_path, and huggingface_hub's backoff
    sleeps recorded instead of slept."""
    import huggingface_hub.constants as constants
    import huggingface_hub.utils._http as http

    import unime.models.loading as loading

    endpoint = "http://127.0.0.1:9"
    monkeypatch.setenv("HF_HUB_OFFLINE", "")  # recorded: restored after the test
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(loading, "_HUB_PROBES", {})
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    sleeps: list[float] = []
    monkeypatch.setattr(http.time, "sleep", sleeps.append)
    return sleeps


def test_an_uncached_hub_id_is_asked_of_the_hub_once_without_retries(unreachable_hub):
    """QA: without network and without HF_HUB_OFFLINE the check took ~23 s for any hub id (huggingface_hub retried
    the request 5 times, sleeping 1+2+4+8+8 s). Now it asks once: no backoff, no adapter."""
    from unime.models.loading import hub_adapter_config

    assert hub_adapter_config("someone/a-model") is None
    assert unreachable_hub == []


def test_a_cached_hub_adapter_is_read_from_the_cache(unreachable_hub, tmp_path):
    from unime.models.loading import hub_adapter_config

    config = {"peft_type": "LORA", "r": 8, "base_model_name_or_path": "someone/the-base"}
    repo = tmp_path / "hub" / "models--someone--an-adapter"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "adapter_config.json").write_text(json.dumps(config))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert hub_adapter_config("someone/an-adapter") == config
    assert unreachable_hub == []


def test_a_hub_adapter_is_fetched_without_the_rest_of_its_repo(tiny_model_dir, tmp_path, monkeypatch):
    """QA: `adapter_folder` fetched a hub adapter's whole repo (snapshot_download), a merged model or checkpoints
    beside the adapter too. Now only the files of an adapter folder (as unime writes one: adapter, processor, chat
    template, unime_*.json): a repo whose listing names a 5 GB merged/ and an optimizer state the cache lacks loads
    offline, from the adapter's files (before: the snapshot was incomplete, the load an error)."""
    import torch

    from tests.models.helpers import in_a_hub_cache
    from unime.models.export import ModelCard, export_final
    from unime.models.image_budget import ImageBudget
    from unime.models.loading import adapter_folder, load_model
    from unime.models.lora import LoraSettings, apply_lora

    base = tiny_model_dir("qwen2_vl")
    loaded = load_model(base, device="cpu")
    model = apply_lora(loaded.model, LoraSettings(r=2, alpha=4, dropout=0.0))
    export_final(model, loaded.processor, tmp_path / "run", card=ModelCard(title="t", base_model=base, summary="s",
                                                                          usage="u"),
                 merged=False, image_budget=ImageBudget(image_size=(64, 64)))
    in_a_hub_cache(tmp_path / "run" / "adapter", tmp_path / "hub", "someone/an-adapter", monkeypatch,
                   not_fetched={"merged/model.safetensors": 5 * 10 ** 9, "checkpoint-100/optimizer.pt": 10 ** 9})
    folder = adapter_folder("someone/an-adapter")
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(p.name for p in (tmp_path / "run" / "adapter")
                                                                    .iterdir())
    hub = load_model("someone/an-adapter", device="cpu")
    assert (hub.base_path, hub.peft_path, hub.image_budget) == (base, "someone/an-adapter",
                                                                ImageBudget(image_size=(64, 64)))
    local = load_model(tmp_path / "run" / "adapter", device="cpu").model.state_dict()
    assert all(torch.equal(v, local[k]) for k, v in hub.model.state_dict().items())
