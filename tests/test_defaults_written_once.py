"""Each default of τ (loss temperature), the symmetric-KL ε, β (the judge's false-negative margin, and GRPO's
KL β), LoRA r / alpha / dropout, the cyclical sampling's interval / count, the index's recall@k / recall
sample / chunk size and the longest T-CoT (generation and GRPO rollouts) is written once, in the module that
owns it; everything else names that constant.

Reads the source (ast): a *definition* is a number given to a watched name as a function parameter default,
a class or module variable, a keyword argument, or the `default=` of an `add_argument` for a watched option
— also inside an expression (`16 if r is None else r`). Help texts may not restate the number either
(`%(default)s` does it).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# (name pattern, value) → where it is defined and how often there
OWNERS = {
    (r"tau|temperature", 0.02): {"unime/train/loss_defaults.py": 1},
    (r"eps", 1e-8): {"unime/train/loss_defaults.py": 1},     # symmetric-KL ε (--kl-eps)
    (r"beta", 0.01): {"unime/mining/sampling.py": 1,         # the judge's β
                      "unime/embed_rl/grpo.py": 1},          # GRPO's KL β
    (r"r|rank", 16): {"unime/models/lora.py": 2},             # EMBEDDER_LORA, GENERATIVE_LORA
    (r"alpha", 64): {"unime/models/lora.py": 1},              # EMBEDDER_LORA
    (r"alpha", 32): {"unime/models/lora.py": 1},              # GENERATIVE_LORA
    (r"dropout", 0.1): {"unime/models/lora.py": 1},           # EMBEDDER_LORA
    (r"dropout", 0.05): {"unime/models/lora.py": 1},          # GENERATIVE_LORA
    (r"interval", 5): {"unime/mining/sampling.py": 1},        # cyclical sampling interval i
    (r"count", 10): {"unime/mining/sampling.py": 1,           # negatives picked per query
                     "unime/demo/run.py": 1},                 # the demo's own setting (its report), not a default
    (r"recall_k", 10): {"unime/index/ann.py": 1},             # recall@k of an approximate index
    (r"(recall_)?sample", 200): {"unime/index/ann.py": 1},    # queries of that measurement (index build, mining)
    (r"chunk_size", 1024): {"unime/index/store.py": 1},       # items per index chunk
    (r"max_new_tokens|max_completion_length", 256): {"unime/reasoning/tcot.py": 1},  # longest T-CoT
}


def _watched(name: str, pattern: str) -> bool:
    """`name` (a variable, parameter or `--option`) is one of the pattern's, alone or as its last words
    (`lora_r`, `DEFAULT_RECALL_K`, `--recall-k`)."""
    words = re.split(r"[_\-]+", name.strip("-").lower())
    return any(re.fullmatch(pattern, "_".join(words[i:])) for i in range(len(words)))


def _numbers(node: ast.AST) -> list[float]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and type(n.value) in (int, float)]


def definitions(source: str) -> list[tuple[str, float, int]]:
    """(name, number, line) for every number bound to a name in `source`."""
    found = []

    def add(name, value_node):
        for v in _numbers(value_node):
            found.append((name, v, value_node.lineno))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            positional = a.posonlyargs + a.args
            for arg, d in zip(positional[len(positional) - len(a.defaults):], a.defaults):
                add(arg.arg, d)
            for arg, d in zip(a.kwonlyargs, a.kw_defaults):
                if d is not None:
                    add(arg.arg, d)
        elif isinstance(node, ast.AnnAssign) and node.value is not None and isinstance(node.target, ast.Name):
            add(node.target.id, node.value)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    add(t.id, node.value)
        elif isinstance(node, ast.Call):
            options = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                       and a.value.startswith("--")]
            for kw in node.keywords:
                if kw.arg == "default" and options:
                    add(options[0], kw.value)
                elif kw.arg == "help" and options:
                    for s in ast.walk(kw.value):
                        if isinstance(s, ast.Constant) and isinstance(s.value, str):
                            for num in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", s.value):
                                found.append((options[0], float(num), kw.value.lineno))
                elif kw.arg is not None:
                    add(kw.arg, kw.value)
    return sorted(found, key=lambda d: d[2])


def misplaced(files: dict[str, str]) -> list[str]:
    """Definitions outside their owner, or more often in it than allowed."""
    counts: Counter = Counter()
    bad = []
    for rel, source in sorted(files.items()):
        for name, value, line in definitions(source):
            for (pattern, default), owners in OWNERS.items():
                if value == default and _watched(name, pattern):
                    if rel in owners:
                        counts[(pattern, default, rel)] += 1
                    else:
                        bad.append(f"{rel}:{line}: {name} = {value} (defined in {', '.join(owners)})")
    for (pattern, default), owners in OWNERS.items():
        for rel, n in owners.items():
            if rel in files and counts[(pattern, default, rel)] != n:
                bad.append(f"{rel}: {counts[(pattern, default, rel)]} definitions of {pattern} = {default}, "
                           f"expected {n}")
    return bad


def test_each_default_is_written_once():
    files = {str(p.relative_to(SRC)): p.read_text(encoding="utf-8") for p in sorted((SRC / "unime").rglob("*.py"))}
    for owners in OWNERS.values():
        assert set(owners) <= set(files), f"owner module missing: {set(owners) - set(files)}"
    bad = misplaced(files)
    assert not bad, "defaults written more than once:\n" + "\n".join(bad)


def test_the_check_finds_restated_defaults():
    restated = '''
from dataclasses import dataclass
@dataclass
class Cfg:
    tau: float = 0.02
def loss(x, temperature=0.02, *, label_tau=None): ...
def cli(p, args):
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--beta", type=float, default=B, help="margin (default 0.01)")
    make(lora_alpha=64 if args.lora_alpha is None else args.lora_alpha, lora_dropout=D)
'''
    bad = misplaced({"unime/x.py": restated})
    assert [b.split(": ", 1)[1] for b in bad] == [
        "tau = 0.02 (defined in unime/train/loss_defaults.py)",
        "temperature = 0.02 (defined in unime/train/loss_defaults.py)",
        "--lora-r = 16 (defined in unime/models/lora.py)",
        "--beta = 0.01 (defined in unime/mining/sampling.py, unime/embed_rl/grpo.py)",
        "lora_alpha = 64 (defined in unime/models/lora.py)",
    ]
    # names that only share a value are not definitions; the owner may define its constant once
    assert misplaced({"unime/y.py": "def f(init_std=0.02, neg_temperature=0.5, r=4): ...\n"
                                    "DEFAULT_BETAS = (0.02,)\n"}) == []
    owner = "DEFAULT_TEMPERATURE = 0.02\nDEFAULT_KL_EPS = 1e-8\n"
    assert misplaced({"unime/train/loss_defaults.py": owner}) == []
    assert misplaced({"unime/train/loss_defaults.py": owner + "LABEL_TEMPERATURE = 0.02\n"}) == [
        "unime/train/loss_defaults.py: 2 definitions of tau|temperature = 0.02, expected 1"]


def test_the_check_finds_the_sampling_and_index_defaults_restated():
    """The restatements this check was extended for: MineConfig's and `sample_negatives`' interval / count,
    `build_corpus_index`'s keywords beside IndexBuildConfig's fields, mining's own recall sample."""
    restated = '''
@dataclass
class MineConfig:
    interval: int = option(5, "cyclical sampling interval")
    count: int = option(10, "negatives stored per query")
def build_corpus_index(items, out, *, chunk_size: int = 1024, recall_k: int = 10, recall_sample: int = 200): ...
RECALL_SAMPLE = 200
def search(k=10, top_k=10, sample_rate=200, n_interval=3): ...
'''
    assert [b.split(": ", 1)[1] for b in misplaced({"unime/x.py": restated})] == [
        "interval = 5 (defined in unime/mining/sampling.py)",
        "count = 10 (defined in unime/mining/sampling.py, unime/demo/run.py)",
        "chunk_size = 1024 (defined in unime/index/store.py)",
        "recall_k = 10 (defined in unime/index/ann.py)",
        "recall_sample = 200 (defined in unime/index/ann.py)",
        "RECALL_SAMPLE = 200 (defined in unime/index/ann.py)",
    ]
    owner = "DEFAULT_BETA = 0.01\nDEFAULT_INTERVAL = 5\nDEFAULT_COUNT = 10\n"
    assert misplaced({"unime/mining/sampling.py": owner}) == []
    assert misplaced({"unime/mining/sampling.py": owner + "def cyclical_order(n, interval=5): ...\n"}) == [
        "unime/mining/sampling.py: 2 definitions of interval = 5, expected 1"]


def test_the_longest_tcot_has_one_default_for_generate_eval_and_grpo():
    """QA: GRPO trained on rollouts cut at 128 tokens, `reason eval` let the reasoner write 160 and `reason generate`
    256; nothing said why. One declared default (`unime.reasoning.tcot.TCOT_MAX_NEW_TOKENS`) serves the three and
    the `Reasoner` itself, and it holds the demo teacher's longest T-CoT (145 tokens)."""
    import inspect

    from unime.cli import _apply_config, build_parser
    from unime.reasoning.reasoner import Reasoner

    def parsed(*argv):
        return _apply_config(build_parser(), list(argv))

    defaults = {
        "reason generate": parsed("reason", "generate", "--model", "m", "--records", "r", "--out", "o").max_new_tokens,
        "reason eval": parsed("reason", "eval", "--embedder", "e", "--tasks", "t", "--out", "o").max_new_tokens,
        "train reasoner --stage grpo": parsed("train", "reasoner", "--stage", "grpo", "--model", "m",
                                              "--out", "o").max_completion_length,
        "Reasoner": inspect.signature(Reasoner).parameters["max_new_tokens"].default,
    }
    assert len(set(defaults.values())) == 1, defaults
    from unime.reasoning.tcot import TCOT_MAX_NEW_TOKENS

    assert set(defaults.values()) == {TCOT_MAX_NEW_TOKENS} and TCOT_MAX_NEW_TOKENS >= 145
