"""`unime.models.loading.hub_adapter_config`: is a hub id a PEFT adapter, asked of the local cache first and of
the hub once, without huggingface_hub's retries."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """A hub that refuses every connection (a closed local port), HF_HUB_OFFLINE unset, an empty cache in tmp_path,
    and huggingface_hub's backoff sleeps recorded instead of slept."""
    import huggingface_hub.constants as constants
    import huggingface_hub.utils._http as http

    endpoint = "http://127.0.0.1:9"
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
