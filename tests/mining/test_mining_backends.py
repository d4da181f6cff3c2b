"""Judge backends: Ray (local 2-worker cluster) equals local; vLLM request/response mapping with fake vLLM objects."""

from __future__ import annotations

import math
import re
import signal
import sys
import types
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.mining.helpers import run_ray_driver
from unime.data.items import Item
from unime.errors import ModelError
from unime.mining.backends import JudgeSpec, make_backend
from unime.mining.backends.vllm import VLLMBackend, score_from_logprobs


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_score_from_logprobs_hand_worked():
    yes, no = 11, 12
    lp = {yes: SimpleNamespace(logprob=-0.1), no: SimpleNamespace(logprob=-2.5), 3: SimpleNamespace(logprob=-4.0)}
    assert score_from_logprobs(lp, yes, no) == pytest.approx(_sig(2.4), abs=1e-12)
    counts = Counter()
    # Yes missing: it is at most the smallest returned logprob (-3.2) → an upper bound of the score
    assert score_from_logprobs({no: -0.05, 7: -3.2}, yes, no, counts=counts) == pytest.approx(_sig(-3.15))
    # No missing: a lower bound
    assert score_from_logprobs({yes: -1.0, 7: -1.5}, yes, no, counts=counts) == pytest.approx(_sig(0.5))
    assert score_from_logprobs({7: -0.1, 8: -3.0}, yes, no, counts=counts) == 0.5
    assert counts == {"yes_missing": 1, "no_missing": 1, "both_missing": 1}
    with pytest.raises(ModelError, match="request 4: Yes not among the 2 returned"):
        score_from_logprobs({no: -0.05, 7: -3.2}, yes, no, missing="error", where="request 4")


def _img(seed, size=(64, 48)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _groups():
    q1 = Item(text="<|image_1|>\nwhat colour is shown?", images=(_img(1),))
    q2 = Item(text="a small red circle")
    return [
        (q1, [Item(text="red"), Item(text="a large blue square"), Item(images=(_img(2),)), Item(text="red")]),
        (q2, [Item(text="x", images=(_img(3, (80, 80)),)), Item(text="a red circle")]),
        (q1, [Item(text="green")]),
    ]


class FakeVLLM:
    """Stands in for `vllm.LLM`: answers each request with the top-K logprobs of the first generated
    token, computed by a full forward of the same HF checkpoint (what vLLM computes on a GPU)."""

    def __init__(self, judge, k):
        self.judge, self.k = judge, k
        self.seen = []

    def generate(self, requests, params, use_tqdm=False):
        self.seen.append((requests, params))
        outs = []
        for r in requests:
            images = (r.get("multi_modal_data") or {}).get("image", [])
            kwargs = {"images": images} if images else {}
            inputs = self.judge.processor(text=[r["prompt"]], return_tensors="pt", **kwargs)
            with torch.no_grad():
                logits = self.judge.model(**inputs).logits[0, -1].float()
            lp = torch.log_softmax(logits, dim=-1)
            top = torch.topk(lp, min(params.logprobs, lp.numel()))
            first = {int(t): SimpleNamespace(logprob=float(v), rank=i + 1, decoded_token="")
                     for i, (t, v) in enumerate(zip(top.indices, top.values))}
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=[int(top.indices[0])], logprobs=[first])]))
        return outs


@pytest.fixture()
def fake_vllm_module(monkeypatch):
    mod = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)
            self.kwargs = kw

    mod.SamplingParams = SamplingParams
    mod.LLM = lambda *a, **k: (_ for _ in ()).throw(AssertionError("the test injects the engine"))
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def test_vllm_backend_maps_requests_and_logprobs(tiny_model_dir, fake_vllm_module):
    from unime.mining.backends.local import LocalBackend

    path = tiny_model_dir("qwen2_vl")
    spec = JudgeSpec(path=path, device="cpu")
    local = LocalBackend(spec)
    engine = FakeVLLM(local.judge, k=10_000)
    backend = make_backend("vllm", spec, logprobs=10_000, llm=engine)
    assert isinstance(backend, VLLMBackend) and backend.prompter.model is None  # prompts only, no weights
    groups = _groups()
    got = backend.score_groups(groups)
    (requests, params), = engine.seen
    assert params.kwargs == {"max_tokens": 1, "logprobs": 10_000, "temperature": 0.0}
    # distinct pairs only: (q1, "red") twice in group 0 → 6 requests for 7 candidates
    assert len(requests) == 6
    q1, cands = groups[0]
    assert requests[0]["prompt"] == local.judge.prompt(q1, cands[0])
    assert len(requests[0]["multi_modal_data"]["image"]) == 1
    q2, cands2 = groups[1]
    assert requests[4] == {"prompt": local.judge.prompt(q2, cands2[1])}  # text only: no multi_modal_data
    assert requests[2]["prompt"] == local.judge.prompt(q1, cands[2])
    assert len(requests[2]["multi_modal_data"]["image"]) == 2  # the query's and the candidate's image
    expected = local.score_groups(groups)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=1e-5)
    assert got[0][0] == got[0][3]
    assert backend.stats()["logprobs"] == 10_000 and "yes_missing" not in backend.stats()


def test_vllm_backend_with_a_small_top_k_counts_missing_tokens(tiny_model_dir, fake_vllm_module):
    from unime.mining.backends.local import LocalBackend

    spec = JudgeSpec(path=tiny_model_dir("qwen2_vl"), device="cpu")
    judge = LocalBackend(spec).judge
    backend = VLLMBackend(spec, logprobs=2, llm=FakeVLLM(judge, k=2))
    scores = backend.score_groups(_groups()[:1])[0]
    missing = sum(backend.counts.values())
    assert missing > 0  # a random tiny model rarely puts Yes and No in its top 2
    assert np.all((scores >= 0) & (scores <= 1))
    with pytest.raises(ModelError, match="not among the 2 returned logprobs"):
        VLLMBackend(spec, logprobs=2, missing="error", llm=FakeVLLM(judge, k=2)).score_groups(_groups()[:1])


def test_vllm_engine_loads_a_trainer_output_folder_as_the_transformers_backend_does(tiny_model_dir, tmp_path,
                                                                                    fake_vllm_module):
    """QA: the vllm backend gave vLLM the output folder itself (merged/, adapter/ and a marker file in it), which is
    no model folder; the transformers backend loads its merged/ (`trained_model_folder`)."""
    import shutil

    from transformers import AutoModelForImageTextToText

    from unime.models.loading import trained_model_folder
    from unime.models.lora import LoraSettings, apply_lora

    base, out = tiny_model_dir("qwen2_vl"), tmp_path / "judge"
    lora = apply_lora(AutoModelForImageTextToText.from_pretrained(base), LoraSettings(r=2, alpha=4, dropout=0.0))
    lora.save_pretrained(out / "adapter")
    shutil.copytree(base, out / "merged")
    (out / "unime_reranker.json").write_text('{"role": "judge"}')
    engines = []
    fake_vllm_module.LLM = lambda **kw: engines.append(kw) or FakeVLLM(None, k=2)
    backend = VLLMBackend(JudgeSpec(path=str(out), device="cpu"))
    assert backend.llm is not None and engines[0]["model"] == str(out / "merged") == trained_model_folder(out)
    from unime.mining.backends.vllm import engine_model

    assert engine_model(JudgeSpec(path=base)) == base  # a model folder as it is
    shutil.rmtree(out / "merged")  # the adapter alone: vLLM cannot load it as a model, refused before any work
    with pytest.raises(ModelError, match=re.escape(f"{out / 'adapter'} is a PEFT adapter: give the judge with the "
                                                   "adapter merged in")):
        VLLMBackend(JudgeSpec(path=str(out), device="cpu"))


def test_vllm_engine_refuses_a_hub_adapter_as_it_refuses_an_adapter_folder(tiny_model_dir, tmp_path, monkeypatch):
    """QA: a PEFT adapter given as a hub id went to vLLM as a model (only a local adapter folder was refused), and
    the judge's prompts-only load read its processor and config as a model's. Now the hub id resolves as the
    trainers resolve it (`peft_adapter_config` / `adapter_folder`): refused before any work, naming it; the prompts
    are its base's. Offline, from a hub cache laid out as huggingface_hub lays it out."""
    from transformers import AutoModelForImageTextToText

    from tests.models.helpers import in_a_hub_cache
    from unime.mining.backends.vllm import engine_model
    from unime.models.judge import JudgeScorer
    from unime.models.lora import LoraSettings, apply_lora

    base = tiny_model_dir("qwen2_vl")
    lora = apply_lora(AutoModelForImageTextToText.from_pretrained(base), LoraSettings(r=2, alpha=4, dropout=0.0))
    lora.save_pretrained(tmp_path / "adapter")
    in_a_hub_cache(tmp_path / "adapter", tmp_path / "hub", "someone/a-judge", monkeypatch)
    with pytest.raises(ModelError, match=re.escape("someone/a-judge is a PEFT adapter: give the judge with the "
                                                   "adapter merged in")):
        engine_model(JudgeSpec(path="someone/a-judge"))
    prompter = JudgeScorer.from_pretrained("someone/a-judge", load_weights=False)
    own = JudgeScorer.from_pretrained(base, load_weights=False)
    assert (prompter.yes_id, prompter.no_id, type(prompter.adapter)) == (own.yes_id, own.no_id, type(own.adapter))


def test_vllm_engine_gets_the_judge_dtype_under_vllms_name(tiny_model_dir, fake_vllm_module):
    """vLLM's `LLM(dtype=)` takes auto / half / float16 / bfloat16 / float / float32: unime's --dtype bf16 was
    passed as 'bf16'. auto is vLLM's own default, left out."""
    engines = []
    fake_vllm_module.LLM = lambda **kw: engines.append(kw) or FakeVLLM(None, k=2)
    for dtype in ("bf16", "fp16", "fp32", "bfloat16", "auto", None):
        assert VLLMBackend(JudgeSpec(path=tiny_model_dir("qwen2_vl"), device="cpu", dtype=dtype)).llm is not None
    assert [e.get("dtype") for e in engines] == ["bfloat16", "float16", "float32", "bfloat16", None, None]


def test_vllm_judge_says_it_does_not_run_transformers_attention_kernel(tiny_model_dir, fake_vllm_module, caplog):
    """--attn-implementation is transformers' `attn_implementation`; vLLM picks its own kernels, so the judge it
    runs does not take the option: a WARNING says so (`unime mine`'s embedder still loads with it)."""
    fake_vllm_module.LLM = lambda **kw: FakeVLLM(None, k=2)
    with caplog.at_level("WARNING", logger="unime.mining.backends.vllm"):
        VLLMBackend(JudgeSpec(path=tiny_model_dir("qwen2_vl"), device="cpu"))
        assert caplog.messages == []
        VLLMBackend(JudgeSpec(path=tiny_model_dir("qwen2_vl"), device="cpu", attn_implementation="flash_attention_2"))
    assert caplog.messages == ["--attn-implementation flash_attention_2: the vllm backend's judge runs vLLM's own "
                               "attention kernels (choose them with VLLM_ATTENTION_BACKEND), not transformers'"]


def _runs(pid: int) -> bool:
    """Whether process `pid` is a running `sleep 600` (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return state != "Z" and cmdline == b"sleep\x00600\x00"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("hang", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_ray_driver_process_that_dies_or_hangs_fails_the_test_and_leaves_no_process(tmp_path, hang):
    """The Ray tests' driver process (`run_ray_driver`) stands in for the test's own process, which Ray may end: a
    driver that exits without its result (3, as Ray's core worker does) or that runs past the timeout (then ended
    with SIGTERM) is the test's failure with its stderr, and no process of the driver's group survives it. (The
    timeout leaves a busy machine's driver the time to start its child first.)"""
    run = run_ray_driver("crash", tmp_path, cwd=tmp_path, timeout=20 if hang else 300, pid_file=str(tmp_path / "pid"),
                         hang=hang)
    pid = int((tmp_path / "pid").read_text())
    assert (run.returncode, run.result) == ((-signal.SIGTERM if hang else 3), None)
    assert run.stderr == "a driver's last words\n"
    with pytest.raises(AssertionError, match=f"exited with {run.returncode}:\na driver's last words"):
        run.check()
    assert not _runs(pid)


@pytest.mark.slow
def test_ray_backend_with_two_workers_equals_local(tiny_model_dir, tmp_path):
    """The Ray driver runs as its own process (`tests/mining/ray_driver.py`): Ray may end a driver's process."""
    pytest.importorskip("ray")
    from unime.mining.backends.local import LocalBackend

    spec = JudgeSpec(path=tiny_model_dir("qwen2_5_vl"), device="cpu", chunk_size=2)
    groups = _groups()
    expected = LocalBackend(spec).score_groups(groups)
    # two shards streamed through one pipeline, as the mining pipeline uses it
    run = run_ray_driver("two_workers", tmp_path, cwd=tmp_path, spec=spec, shards=[(7, groups[:2]), (9, groups[2:])],
                         num_workers=2, num_cpus=2)
    out = run.check()
    got = out["scores"]
    assert sorted(got) == [7, 9] and out["nodes"] == 1
    assert len(got[7] + got[9]) == len(expected)
    for g, e in zip(got[7] + got[9], expected):
        np.testing.assert_allclose(g, e, atol=1e-5)
    assert out["initialized_after_close"] is False


@pytest.mark.slow
def test_ray_backend_on_a_cluster_started_elsewhere_sends_absolute_paths_and_raises_a_workers_error(
        tiny_model_dir, tmp_path, monkeypatch):
    """The user started the cluster in one folder and runs mining from another with relative --judge /
    --data-root: the workers (whose working directory is the cluster's) get absolute paths; a worker's own error
    reaches the driver as itself (the CLI's one line), not as Ray's wrapping with the worker's traceback as text.
    The Ray driver (which starts the cluster in tmp_path) runs as its own process (`tests/mining/ray_driver.py`):
    in CI the pytest-xdist worker running it in-process died once, after its `ray.shutdown()`."""
    pytest.importorskip("ray")
    from unime.mining.backends.local import LocalBackend

    sub = tmp_path / "sub"
    (sub / "world").mkdir(parents=True)
    (sub / "judge").symlink_to(tiny_model_dir("qwen2_vl"))
    _img(5).save(sub / "world" / "cat.png")
    groups = [(Item(text="<|image_1|>\nwhat is shown?", images=("cat.png",)), [Item(text="red"), Item(text="a cat")])]
    spec = JudgeSpec(path="judge", device="cpu", data_root="world")
    monkeypatch.chdir(sub)
    expected = LocalBackend(spec).score_groups(groups)
    run = run_ray_driver("cluster_started_elsewhere", tmp_path, cwd=tmp_path, sub=str(sub), spec=spec,
                         bad_spec=JudgeSpec(path="no-such-judge", device="cpu"), groups=groups)
    out = run.check()
    assert out["spec_paths"] == (str(sub / "judge"), str(sub / "world"))
    assert len(out["scores"]) == 1
    np.testing.assert_allclose(out["scores"][0], expected[0], atol=1e-5)
    failed = out["error"]
    assert type(failed) is ModelError and "\n" not in str(failed), repr(failed)
    assert str(failed).startswith("--judge 'no-such-judge': no such local folder")
    # nor did Ray log the worker's failure on the way (the CLI prints its one line)
    assert "no-such-judge" not in run.stderr + run.stdout


@pytest.mark.parametrize("command", ["mine", "judge"])
def test_the_judge_cache_budget_option_reaches_the_scorer(command, tiny_model_dir):
    """`--image-cache-mib` (the judge's vision-feature cache budget, 512 MiB by default) reaches the judge the
    command builds: at 0 the cache keeps no entry (no hit, no miss); at one image's features it keeps one image,
    dropping the least recently used."""
    from unime.cli import _parse, build_parser
    from unime.cli.dataclass_options import config_from_args
    from unime.mining.config import MineConfig
    from unime.mining.pairs import JudgePairsConfig
    from unime.models.prefix_scoring import IMAGE_CACHE_BYTES

    judge_path = tiny_model_dir("qwen2_vl")
    config = {"mine": MineConfig, "judge": JudgePairsConfig}[command]
    argv = {"mine": ["mine", "--records", "r", "--embedder", "e"], "judge": ["judge", "--pairs", "p"]}[command]

    def judge_with(*budget: str):
        args = _parse(build_parser(), argv + ["--judge", judge_path, "--out", "o", *budget])
        cfg = config_from_args(config, args)
        return cfg.judge_spec(cfg.judge, None).load()

    query = Item(text="which picture is red?")
    candidates = [Item(images=(_img(i),)) for i in range(4)]
    judge = judge_with()
    assert judge.engine.image_cache_bytes == IMAGE_CACHE_BYTES
    judge.score_candidates(query, candidates)
    sizes = [entry[1] for entry in judge.engine.image_cache._entries.values()]
    assert len(sizes) == 4 and judge.stats.image_cache_misses == 4

    off = judge_with("--image-cache-mib", "0")
    assert off.engine.image_cache_bytes == 0
    off.score_candidates(query, candidates)
    assert len(off.engine.image_cache) == 0 and off.stats.image_cache_hits == off.stats.image_cache_misses == 0

    one = judge_with("--image-cache-mib", repr((max(sizes) + 0.5) / 2**20))  # one image's features
    assert one.engine.image_cache_bytes == max(sizes)
    one.score_candidates(query, candidates)
    one.score_candidates(query, candidates)
    assert len(one.engine.image_cache) == 1 and one.engine.image_cache.nbytes <= max(sizes)
    assert one.stats.image_cache_misses > 4  # evicted features were encoded again
