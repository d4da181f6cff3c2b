"""`unime.models.loading.refuse_unreachable_hub_model`: a hub id that is neither a local folder nor in the local
Hugging Face cache is asked of the hub once, without retries, before its first load; no hub, or no such model
there, is a one-line `ModelError` naming it at once. A cached hub id is asked the same way: no hub switches the
process to the cache only (HF_HUB_OFFLINE), with one warning. No test here reaches the real hub: the probe's HTTP
call is replaced, and the hub's address is a closed local port."""

from __future__ import annotations

import json

import pytest

REPO = "some-org/missing"
URL = f"http://127.0.0.1:9/{REPO}/resolve/main/config.json"
WHERE = f"model {REPO!r}: neither a local folder nor in the local Hugging Face cache, and the Hugging Face hub "


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE unset (as on a user's machine), an empty Hugging Face cache in tmp_path, the hub at a closed
    local port, no id answered for yet; the probe's HTTP call (`get_hf_file_metadata`) and every transformers
    `from_pretrained` recorded. `hub.answer(error)`: the probe's call raises `error` (None: the file exists)."""
    import huggingface_hub
    import huggingface_hub.constants as constants
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    import unime.models.loading as loading

    endpoint = "http://127.0.0.1:9"
    monkeypatch.setenv("HF_HUB_OFFLINE", "")  # recorded: a test that sets it (or the code under test) is undone
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(loading, "_HUB_MODELS_FOUND", set(), raising=False)
    monkeypatch.chdir(tmp_path)

    class Hub:
        probes: list = []
        loads: list = []
        error: BaseException | None = None

        def answer(self, error):
            self.error = error

    state = Hub()
    state.probes, state.loads = [], []

    def metadata(url, *args, **kwargs):
        state.probes.append((url, kwargs))
        if state.error is not None:
            raise state.error
        return None

    def loaded(name):
        def from_pretrained(*args, **kwargs):
            state.loads.append((name, args))
            raise OSError(f"{name}: not loaded in this test")
        return from_pretrained

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    for cls in (AutoModelForImageTextToText, AutoProcessor, AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", loaded(cls.__name__))
    return state


def _http_error(status: int, code: str):
    """The error huggingface_hub raises for a hub answer `status` with the X-Error-Code `code`."""
    from huggingface_hub.utils import hf_raise_for_status

    httpx = pytest.importorskip("httpx2")
    response = httpx.Response(status, headers={"X-Error-Code": code}, request=httpx.Request("HEAD", URL))
    try:
        hf_raise_for_status(response)
    except Exception as e:  # noqa: BLE001 - the error under test
        return e
    raise AssertionError(f"HTTP {status} raised nothing")


def _refusals(model: str) -> list[str]:
    """The `ModelError` messages of every load that reads `model` first."""
    from unime.errors import ModelError
    from unime.models.judge import JudgeScorer
    from unime.models.loading import checkpoint_vocabulary, load_model

    messages = []
    for load in (lambda: load_model(model, device="cpu"), lambda: checkpoint_vocabulary(model),
                 lambda: JudgeScorer.from_pretrained(model, load_weights=False)):
        with pytest.raises(ModelError) as refused:
            load()
        messages.append(str(refused.value))
    return messages


def test_an_uncached_hub_id_without_a_hub_fails_at_once_naming_it(hub):
    """QA: `unime embed --model some-org/missing` offline (HF_HUB_OFFLINE unset) waited 2m31s in transformers' retries
    before Hugging Face's one line, which named no model. Now the hub is asked once, without retries, and the load
    is refused before any `from_pretrained`."""
    httpx = pytest.importorskip("httpx2")
    hub.answer(httpx.ConnectError("[Errno -2] Name or service not known\nmore detail"))
    expected = (WHERE + "could not be reached (ConnectError: [Errno -2] Name or service not known): pass a local "
                "model folder, fetch it on a machine with network (`hf download some-org/missing`, then copy its "
                "cache or folder here), or set HF_HUB_OFFLINE=1 to read only the local cache")
    assert _refusals(REPO) == [expected] * 3
    assert hub.loads == []
    assert [(url, kwargs.get("retry_on_errors")) for url, kwargs in hub.probes] == [(URL, False)] * 3


@pytest.mark.parametrize("error", ["timeout", "connection"])
def test_a_hub_that_times_out_or_refuses_the_connection_is_unreachable(hub, error):
    httpx = pytest.importorskip("httpx2")
    hub.answer(httpx.ConnectTimeout("timed out") if error == "timeout" else ConnectionRefusedError(111, "refused"))
    name = "ConnectTimeout: timed out" if error == "timeout" else "ConnectionRefusedError: [Errno 111] refused"
    assert _refusals(REPO)[0].startswith(WHERE + f"could not be reached ({name}): pass a local model folder")
    assert hub.loads == []


def test_no_such_model_on_the_hub_is_one_line_naming_it(hub):
    hub.answer(_http_error(404, "RepoNotFound"))
    assert _refusals(REPO) == [WHERE + "has no such model (HTTP 404): check the id, or log in (`hf auth login` or "
                                       "HF_TOKEN) if it is a private one"] * 3
    hub.answer(_http_error(401, "RepoNotFound"))  # the hub's answer to a private repo, or none, without a token
    assert _refusals(REPO)[0] == WHERE + ("has no such model (HTTP 401): check the id, or log in (`hf auth login` or "
                                          "HF_TOKEN) if it is a private one")
    assert hub.loads == []


def test_a_gated_model_says_so(hub):
    hub.answer(_http_error(401, "GatedRepo"))
    assert _refusals(REPO)[0] == WHERE + ("refused it: a gated model (accept its terms on its hub page and log in: "
                                          "`hf auth login` or HF_TOKEN)")
    assert hub.loads == []


def test_a_hub_that_answers_changes_nothing_and_is_asked_once(hub):
    """The repo exists (its config.json, or an adapter's repo without one): the load goes on as before; a later
    load of the same id in the process does not ask again."""
    from unime.models.loading import refuse_unreachable_hub_model

    refuse_unreachable_hub_model(REPO)
    refuse_unreachable_hub_model(REPO)
    assert len(hub.probes) == 1
    hub.answer(_http_error(404, "EntryNotFound"))
    refuse_unreachable_hub_model("some-org/an-adapter")
    assert [url for url, _ in hub.probes][1:] == [URL.replace("missing", "an-adapter")]


def _cache(tmp_path, filename: str) -> None:
    """`filename` of REPO in the Hugging Face cache the `hub` fixture points at (its snapshot layout)."""
    repo = tmp_path / "hub" / "models--some-org--missing"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / filename).write_text(json.dumps({}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


@pytest.fixture
def datasets_config(monkeypatch):
    """datasets' own copy of HF_HUB_OFFLINE (read at its import), False, restored after the test."""
    config = pytest.importorskip("datasets.config")
    monkeypatch.setattr(config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(config, "HF_DATASETS_OFFLINE", False)
    return config


@pytest.mark.parametrize("cached", ["config.json", "adapter_config.json"])
def test_a_cached_hub_id_without_a_hub_reads_the_cache_only(hub, tmp_path, caplog, datasets_config, cached):
    """QA: `unime embed --model ORG/NAME` on a cached id offline (HF_HUB_OFFLINE unset) took ~5m50s in transformers'
    retries for the optional files the cache lacks. Now the hub is asked once, without retries; no hub switches the
    process (and its children) to the cache only, as HF_HUB_OFFLINE=1 does, with one warning; nothing is refused."""
    import logging
    import os

    import huggingface_hub.constants as constants
    from transformers.utils.hub import is_offline_mode

    from unime.models.loading import refuse_unreachable_hub_model

    _cache(tmp_path, cached)
    hub.answer(ConnectionRefusedError(111, "refused\nmore detail"))
    with caplog.at_level(logging.WARNING, logger="unime.models.loading"):
        refuse_unreachable_hub_model(REPO)
        refuse_unreachable_hub_model(REPO)
    assert [(url, kwargs.get("retry_on_errors")) for url, kwargs in hub.probes] == [(URL, False)]
    assert (constants.HF_HUB_OFFLINE, is_offline_mode(), os.environ.get("HF_HUB_OFFLINE")) == (True, True, "1")
    assert (datasets_config.HF_HUB_OFFLINE, datasets_config.HF_DATASETS_OFFLINE) == (True, True)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [(
        "WARNING", "the Hugging Face hub cannot be reached (ConnectionRefusedError: [Errno 111] refused): reading "
                   "'some-org/missing' from the local cache only (set HF_HUB_OFFLINE=1 to skip this check)")]
    assert hub.loads == []


@pytest.mark.parametrize("answer", ["the file", "no such file", "no such repo", "server error"])
def test_a_cached_hub_id_with_a_hub_that_answers_changes_nothing(hub, tmp_path, caplog, datasets_config, answer):
    """Whatever the hub answers for a cached id, the process stays online (the load reads the cache and the hub as
    before), nothing is refused or warned, and the id is asked once."""
    import logging
    import os

    import huggingface_hub.constants as constants

    from unime.models.loading import refuse_unreachable_hub_model

    _cache(tmp_path, "config.json")
    hub.answer({"the file": None, "no such file": _http_error(404, "EntryNotFound"),
                "no such repo": _http_error(404, "RepoNotFound"), "server error": _http_error(503, "")}[answer])
    with caplog.at_level(logging.WARNING, logger="unime.models.loading"):
        refuse_unreachable_hub_model(REPO)
        refuse_unreachable_hub_model(REPO)
    assert len(hub.probes) == 1
    assert (constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"), datasets_config.HF_HUB_OFFLINE) == \
        (False, None, False)
    assert caplog.records == []


def test_hf_hub_offline_is_not_asked_of_the_hub(hub, monkeypatch):
    """HF_HUB_OFFLINE=1: only the cache is read; the load says the model is missing there, as before."""
    import huggingface_hub.constants as constants

    from unime.errors import ModelError
    from unime.models.loading import load_model

    hub.answer(ConnectionRefusedError(111, "refused"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as huggingface_hub reads it at import
    with pytest.raises(ModelError, match=r"^model 'some-org/missing': no such local folder.*HF_HUB_OFFLINE is set"):
        load_model(REPO, device="cpu")
    assert hub.probes == []


def test_a_local_path_is_not_asked_of_the_hub(hub, tmp_path):
    """A mistyped local path keeps its own refusal (`refuse_missing_local_model`), without asking the hub."""
    from unime.errors import ModelError
    from unime.models.loading import refuse_unreachable_hub_model

    (tmp_path / "emb" / "merged").mkdir(parents=True)
    hub.answer(ConnectionRefusedError(111, "refused"))
    refuse_unreachable_hub_model(tmp_path / "emb" / "merged")
    with pytest.raises(ModelError, match=r"^model 'emb/mergd': no such folder .*not looked up on the Hugging Face"):
        refuse_unreachable_hub_model("emb/mergd")
    assert hub.probes == []
