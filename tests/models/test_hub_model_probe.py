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
ADAPTER_URL = URL.replace("config.json", "adapter_config.json")
WHERE = f"model {REPO!r}: neither a local folder nor in the local Hugging Face cache, and the Hugging Face hub "


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE unset (as on a user's machine), an empty Hugging Face cache in tmp_path, the hub at a closed
    local port, no id asked about yet; the probe's HTTP call (`get_hf_file_metadata`), huggingface_hub's
    `hf_hub_download` (an OSError: nothing fetched) and every transformers `from_pretrained` recorded.
    `hub.answer(error, files)`: the probe's call raises `error` (None: the file exists), or for a file named in
    `files`, the error given for it there."""
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
    monkeypatch.setattr(loading, "_HUB_PROBES", {})
    monkeypatch.chdir(tmp_path)

    class Hub:
        probes: list = []
        downloads: list = []
        loads: list = []
        error: BaseException | None = None
        files: dict = {}

        def answer(self, error, files=None):
            self.error, self.files = error, dict(files or {})

    state = Hub()
    state.probes, state.downloads, state.loads = [], [], []

    def metadata(url, *args, **kwargs):
        state.probes.append((url, kwargs))
        error = state.files.get(url.rsplit("/", 1)[-1], state.error)
        if error is not None:
            raise error
        return None

    def download(repo_id, filename, *args, **kwargs):
        state.downloads.append((repo_id, filename))
        raise OSError(f"{filename}: not fetched in this test")

    def loaded(name):
        def from_pretrained(*args, **kwargs):
            state.loads.append((name, args))
            raise OSError(f"{name}: not loaded in this test")
        return from_pretrained

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
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
    is refused before any `from_pretrained`; the id is asked once in the process, not at every load (three
    requests before)."""
    httpx = pytest.importorskip("httpx2")
    hub.answer(httpx.ConnectError("[Errno -2] Name or service not known\nmore detail"))
    expected = (WHERE + "could not be reached (ConnectError: [Errno -2] Name or service not known): pass a local "
                "model folder, fetch it on a machine with network (`hf download some-org/missing`, then copy its "
                "cache or folder here), or set HF_HUB_OFFLINE=1 to read only the local cache")
    assert _refusals(REPO) == [expected] * 3
    assert hub.loads == []
    assert [(url, kwargs.get("retry_on_errors")) for url, kwargs in hub.probes] == [(URL, False)]


@pytest.mark.parametrize("error", ["timeout", "connection"])
def test_a_hub_that_times_out_or_refuses_the_connection_is_unreachable(hub, error):
    httpx = pytest.importorskip("httpx2")
    hub.answer(httpx.ConnectTimeout("timed out") if error == "timeout" else ConnectionRefusedError(111, "refused"))
    name = "ConnectTimeout: timed out" if error == "timeout" else "ConnectionRefusedError: [Errno 111] refused"
    assert _refusals(REPO)[0].startswith(WHERE + f"could not be reached ({name}): pass a local model folder")
    assert hub.loads == []


def test_no_such_model_on_the_hub_is_one_line_naming_it(hub):
    import unime.models.loading as loading

    hub.answer(_http_error(404, "RepoNotFound"))
    assert _refusals(REPO) == [WHERE + "has no such model (HTTP 404): check the id, or log in (`hf auth login` or "
                                       "HF_TOKEN) if it is a private one"] * 3
    loading._HUB_PROBES.clear()  # another process: the id asked again
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


def test_the_adapter_check_and_the_probe_ask_the_hub_once_per_id(hub):
    """A hub id's adapter check (`hub_adapter_config`: a trainer's option checks, then its load) and the probe before
    the load (`refuse_unreachable_hub_model`) share what the hub answered: without a hub, one request in all (three
    before: the check, the probe, the check again); for a model the hub holds, config.json and adapter_config.json
    asked once each, however often the id is checked (three requests before: adapter_config.json at every check)."""
    from unime.errors import ModelError
    from unime.models.loading import peft_adapter_config, refuse_unreachable_hub_model

    hub.answer(ConnectionRefusedError(111, "refused"))
    assert peft_adapter_config(REPO) is None
    with pytest.raises(ModelError, match=r"could not be reached \(ConnectionRefusedError: \[Errno 111\] refused\)"):
        refuse_unreachable_hub_model(REPO)
    assert peft_adapter_config(REPO) is None
    assert [url for url, _ in hub.probes] == [ADAPTER_URL]

    plain, probes = "some-org/plain", len(hub.probes)
    hub.answer(None, {"adapter_config.json": _http_error(404, "EntryNotFound")})
    refuse_unreachable_hub_model(plain)
    assert peft_adapter_config(plain) is None
    assert peft_adapter_config(plain) is None
    refuse_unreachable_hub_model(plain)
    assert [url for url, _ in hub.probes[probes:]] == [URL.replace("missing", "plain"),
                                                       ADAPTER_URL.replace("missing", "plain")]
    assert hub.downloads == [] and hub.loads == []


@pytest.mark.parametrize("answer", ["gated", "no such repo"])
def test_an_id_the_hub_refused_is_not_asked_again_for_its_adapter_config(hub, answer):
    from unime.errors import ModelError
    from unime.models.loading import hub_adapter_config, refuse_unreachable_hub_model

    hub.answer(_http_error(401, "GatedRepo") if answer == "gated" else _http_error(404, "RepoNotFound"))
    with pytest.raises(ModelError, match="gated model" if answer == "gated" else "has no such model"):
        refuse_unreachable_hub_model(REPO)
    assert hub_adapter_config(REPO) is None
    assert [url for url, _ in hub.probes] == [URL]


def test_an_adapter_on_the_hub_is_fetched_after_one_probe_of_each_file(hub):
    """An adapter's repo (no config.json, an adapter_config.json): asked for each file once, then the file fetched."""
    from unime.models.loading import hub_adapter_config, refuse_unreachable_hub_model

    hub.answer(None, {"config.json": _http_error(404, "EntryNotFound")})
    refuse_unreachable_hub_model(REPO)
    assert hub_adapter_config(REPO) is None  # the fetch failed (this test fetches nothing): no adapter config
    assert [url.rsplit("/", 1)[-1] for url, _ in hub.probes] == ["config.json", "adapter_config.json"]
    assert hub.downloads == [(REPO, "adapter_config.json")]


def test_hf_hub_offline_set_after_huggingface_hub_read_it_keeps_the_adapter_check_off_the_hub(hub, monkeypatch):
    """HF_HUB_OFFLINE=1 in the environment, set after huggingface_hub read it at import (its constant still False):
    the adapter check reads only the cache, as the probe does (`_hub_offline`); it asked the hub before."""
    from unime.models.loading import hub_adapter_config, refuse_unreachable_hub_model

    hub.answer(ConnectionRefusedError(111, "refused"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refuse_unreachable_hub_model(REPO)
    assert hub_adapter_config(REPO) is None
    assert hub.probes == [] and hub.downloads == []


TRAIN_COMMANDS = {
    "train embedder": ["train", "embedder"],
    "train reranker": ["train", "reranker"],
    "train judge": ["train", "judge"],
    "train reasoner sft": ["train", "reasoner", "--stage", "sft", "--lora-r", "0"],
}


@pytest.mark.parametrize("command", list(TRAIN_COMMANDS))
def test_a_trainer_on_an_unreachable_hub_id_fails_before_claiming_its_output_folder(hub, tmp_path, capsys, command):
    """QA: `unime train embedder --model ORG/NAME --out OUT` without a hub claimed OUT (train_inputs.json, its lock)
    before the load's probe refused the id: a half-claimed folder was left behind. Now every trainer asks the hub
    with its option checks, before its output folder is claimed: the same one-line error, no OUT, one request."""
    from unime.cli import main

    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"query": {"text": "a red square"}, "positive": {"text": "red"},
                                   "negatives": [{"text": "blue"}]}) + "\n")
    tcots = tmp_path / "tcots.jsonl"
    tcots.write_text(json.dumps({"record_id": "r0", "side": "query", "item": {"text": "a red square"},
                                 "tcot": "<thinking>{}</thinking><rethink>r</rethink><answer>a</answer>"}) + "\n")
    data = ["--tcots", str(tcots)] if "reasoner" in command else ["--records", str(records)]
    hub.answer(ConnectionRefusedError(111, "refused"))
    out = tmp_path / "out"
    assert main([*TRAIN_COMMANDS[command], "--model", REPO, *data, "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert WHERE + "could not be reached (ConnectionRefusedError: [Errno 111] refused)" in err, err
    assert not out.exists()
    assert len(hub.probes) == 1 and hub.loads == []


@pytest.mark.parametrize("option", ["--embedder", "--judge"])
def test_mine_on_an_unreachable_hub_id_fails_after_its_records_and_before_any_load(hub, tmp_path, tiny_model_dir,
                                                                                    capsys, option):
    """QA: `unime mine --judge ORG/NAME` without a hub encoded the whole retrieval and wrote --out before the judge's
    load asked the hub. Now the hub is asked once for each model option after the records are read and checked,
    before any load: the same one-line error, named by its option, and no --out."""
    from unime.cli import main

    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"id": "a", "query": {"text": "q"}, "positive": {"text": "p"}}) + "\n")
    hub.answer(ConnectionRefusedError(111, "refused"))
    models = {"--embedder": tiny_model_dir("qwen2_vl"), "--judge": tiny_model_dir("qwen2_vl"), option: REPO}
    out = tmp_path / "out"
    assert main(["mine", "--records", str(records), *[x for kv in models.items() for x in kv], "--device", "cpu",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"unime: error: {option} {WHERE[len('model '):]}could not be reached (ConnectionRefusedError: " \
           "[Errno 111] refused)" in err, err
    assert not out.exists()
    assert len(hub.probes) == 1 and hub.loads == []
