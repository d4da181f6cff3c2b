"""Usage errors the parser cannot catch alone (options missing or not fitting together) follow the one error
contract like every other user-caused failure: exit code 2, ONE line `unime: error: COMMAND: what to give`,
no traceback (`unime.errors.UsageError`). argparse's own usage errors keep their exit code 2."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unime.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"

# (argv, the one error line after "unime: error: "); each is refused before any model or data is loaded
CASES = [
    (["plan"], "plan: give --recipe NAME or --stage {embedder,reranker,judge,reasoner-sft,reasoner-grpo}"),
    (["plan", "--stage", "embedder"], "plan: give --model (a known release or a checkpoint folder)"),
    (["eval", "--model", "m", "--tasks", "t"], "eval: --out is required"),
    (["eval", "--out", "{tmp}/ev"], "eval: give --model and --tasks to evaluate, or --compare DIR ... to compare"),
    (["eval", "--out", "{tmp}/ev", "--compare", "a", "b", "--tasks", "t"], "eval: --tasks / --rerank need --model"),
    (["eval", "--out", "{tmp}/ev", "--model", "m"], "eval: --model needs --tasks"),
    (["search", "--index", "{tmp}/idx"], "search: give --query, --image and/or --video"),
    # QA: --k 0 showed one hit; --topk 0 ended in a traceback
    (["search", "--index", "{tmp}/idx", "--query", "q", "--k", "0"], "search: --k must be >= 1, got 0"),
    (["eval", "--out", "{tmp}/ev", "--model", "m", "--tasks", "t", "--topk", "0"], "eval: --topk must be >= 1, got 0"),
    # QA: --chunk-size without --gradcache and the LoRA options with --full were accepted and did nothing
    (["train", "embedder", "--model", "m", "--records", "r", "--out", "{tmp}/e", "--chunk-size", "4"],
     "train embedder: --chunk-size does nothing without --gradcache: add --gradcache or drop --chunk-size"),
    (["train", "embedder", "--model", "m", "--records", "r", "--out", "{tmp}/e", "--full", "--lora-r", "4"],
     "train embedder: --lora-r does nothing with --full: drop one of them"),
    (["train", "embedder", "--model", "m", "--records", "r", "--out", "{tmp}/e", "--lora-targets", "q_proj", "--full"],
     "train embedder: --lora-targets does nothing with --full: drop one of them"),
    # QA: the same for the reranker and the judge, and their --merge / --save-adapter (full writes OUT/merged only)
    (["train", "reranker", "--model", "m", "--records", "r", "--out", "{tmp}/k", "--full", "--lora-r", "8"],
     "train reranker: --lora-r does nothing with --full: drop one of them"),
    (["train", "judge", "--model", "m", "--records", "r", "--out", "{tmp}/j", "--lora-vision", "--full"],
     "train judge: --lora-vision does nothing with --full: drop one of them"),
    (["train", "reranker", "--model", "m", "--records", "r", "--out", "{tmp}/k", "--full", "--merge"],
     "train reranker: --merge does nothing with --full: drop one of them"),
    (["train", "judge", "--model", "m", "--records", "r", "--out", "{tmp}/j", "--full", "--dora"],
     "train judge: --dora does nothing with --full: drop one of them"),
    (["train", "judge", "--model", "m", "--records", "r", "--out", "{tmp}/j", "--full", "--save-adapter"],
     "train judge: --save-adapter does nothing with --full: drop one of them"),
    # QA: the reasoner's LoRA options with --lora-r 0 (full fine-tuning; GRPO's default) were accepted and did nothing
    (["train", "reasoner", "--stage", "grpo", "--model", "m", "--out", "{tmp}/r", "--records", "r", "--embedder", "e",
      "--lora-alpha", "8"], "train reasoner: --lora-alpha does nothing with --lora-r 0 (its default): give --lora-r "
     "another value or drop --lora-alpha"),
    (["train", "reasoner", "--stage", "grpo", "--model", "m", "--out", "{tmp}/r", "--records", "r", "--embedder", "e",
      "--lora-targets", "q_proj"], "train reasoner: --lora-targets does nothing with --lora-r 0 (its default): give "
     "--lora-r another value or drop --lora-targets"),
    (["train", "reasoner", "--stage", "sft", "--model", "m", "--out", "{tmp}/r", "--tcots", "t", "--lora-r", "0",
      "--lora-vision"], "train reasoner: --lora-vision does nothing with --lora-r 0: drop one of them"),
    (["train", "reasoner", "--stage", "sft", "--model", "m", "--out", "{tmp}/r", "--tcots", "t", "--lora-dropout",
      "0.1", "--lora-r", "0"], "train reasoner: --lora-dropout does nothing with --lora-r 0: drop one of them"),
    # QA: an option of the other stage (GRPO's --beta with --stage sft, SFT's --batch-size with --stage grpo) was
    # accepted and did nothing
    (["train", "reasoner", "--stage", "sft", "--model", "m", "--out", "{tmp}/r", "--tcots", "t", "--beta", "0.5"],
     "train reasoner: --beta does nothing with --stage sft: it acts only with --stage grpo; drop --beta"),
    (["train", "reasoner", "--stage", "grpo", "--model", "m", "--out", "{tmp}/r", "--records", "r", "--embedder", "e",
      "--batch-size", "3"],
     "train reasoner: --batch-size does nothing with --stage grpo: it acts only with --stage sft; drop --batch-size"),
    (["train", "reasoner", "--stage", "sft", "--model", "m", "--out", "{tmp}/r"],
     "train reasoner: --stage sft needs --tcots"),
    (["train", "reasoner", "--stage", "grpo", "--model", "m", "--out", "{tmp}/r"],
     "train reasoner: --stage grpo needs --records and --embedder"),
    (["train", "reasoner", "--stage", "grpo", "--model", "m", "--out", "{tmp}/r", "--records", "r", "--embedder", "e",
      "--weights", "1,2"], "train reasoner: --weights takes three numbers: format,outcome,process (got '1,2')"),
    (["train", "reasoner", "--stage", "grpo", "--model", "m", "--out", "{tmp}/r", "--records", "r", "--embedder", "e",
      "--weights", "1,x,2"], "train reasoner: --weights takes three numbers: format,outcome,process (got '1,x,2')"),
    # QA: ValueError tracebacks, and only after the tasks and the embedder were loaded (the files here do not exist)
    (["reason", "eval", "--embedder", "e", "--tasks", "t.yaml", "--out", "{tmp}/ev"],
     "reason eval: --tcots reasoner needs --reasoner (the reasoner checkpoint that writes the T-CoTs)"),
    (["reason", "eval", "--embedder", "e", "--tasks", "t.yaml", "--out", "{tmp}/ev", "--tcots", "teacher"],
     "reason eval: --tcots teacher needs --world (the demo world the annotation teacher reads)"),
    (["index", "build", "--model", "m", "--items", "c.jsonl", "--out", "{tmp}/x", "--ef-search", "0"],
     "index build: --ef-search must be >= 1, got 0"),
    # QA: the index options' refusals named the config fields (ef_search, nprobe), not the options
    *((["index", "build", "--model", "m", "--items", "c.jsonl", "--out", "{tmp}/x", option, value],
       f"index build: {option} must be >= {bound}, got {value}")
      for option, value, bound in (("--hnsw-m", "0", 1), ("--train-sample", "-1", 0), ("--chunk-size", "0", 1))),
    (["mine", "--records", "r", "--embedder", "e", "--judge", "j", "--out", "{tmp}/o", "--nprobe", "0"],
     "mine: --nprobe must be >= 1, got 0"),
    (["mine", "--records", "r", "--embedder", "e", "--judge", "j", "--out", "{tmp}/o", "--ef-construction", "0"],
     "mine: --ef-construction must be >= 1, got 0"),
    # a config's own refusals named its fields (QA: "mine: count, interval and shard_size must be >= 1", "serve:
    # rerank_batch must be >= 1"); the judge's --chunk-size 0 failed only once the judge had loaded
    *((["mine", "--records", "r", "--embedder", "e", "--judge", "j", "--out", "{tmp}/o", option, value],
       f"mine: {option} must be >= {bound}, got {value}")
      for option, value, bound in (("--k", "0", 1), ("--count", "0", 1), ("--interval", "0", 1),
                                   ("--shard-size", "0", 1), ("--chunk-size", "0", 1), ("--image-cache", "-1", 0))),
    (["judge", "--pairs", "p", "--judge", "j", "--out", "{tmp}/o", "--chunk-size", "0"],
     "judge: --chunk-size must be >= 1, got 0"),
    *((["serve", "--model", "m", "--no-auth", option, value], f"serve: {option} must be >= {bound}, got {shown}")
      for option, value, bound, shown in (("--rerank-batch", "0", 1, "0"), ("--max-batch-size", "0", 1, "0"),
                                          ("--max-wait-ms", "-1", 0, "-1.0"), ("--max-batch-tokens", "0", 1, "0"),
                                          ("--max-text-tokens", "0", 1, "0"))),
    (["mine", "--records", "r", "--embedder", "e", "--judge", "j", "--out", "{tmp}/o", "--audit"],
     "mine: --audit needs --world"),
    (["mine", "--records", "r", "--embedder", "e", "--judge", "j", "--out", "{tmp}/o", "--backend", "vllm",
      "--vllm-engine-arg", "tensor_parallel_size"],
     "mine: --vllm-engine-arg expects KEY=VALUE, got 'tensor_parallel_size'"),
    (["data", "import", "--captions", "c.tsv", "--out", "{tmp}/imp"],
     "data import: --captions / --coco need --images DIR"),
    (["data", "import", "--webdataset", "s.tar", "--images", "d", "--out", "{tmp}/imp"],
     "data import: --images does not apply to --webdataset: its shards hold the images"),
    (["data", "synth", "--out", "{tmp}/w", "--size", "tiny", "--video-clips", "3", "--video-frames", "5"],
     "data synth: video frames must be even and >= 4, got 5"),
    (["serve", "--model", "m", "--no-auth", "--host", "0.0.0.0"],
     "serve: --no-auth is only allowed when binding to loopback (127.0.0.1, ::1, localhost), not 0.0.0.0"),
    (["serve", "--model", "m", "--no-auth", "--ray", "--device", "cuda", "--ray-gpus-per-replica", "0"],
     "serve: --device cuda with --ray-gpus-per-replica 0: Ray reserves no GPU for the replicas; give "
     "--ray-gpus-per-replica (e.g. 1) to run them on GPUs"),
]

# a config's validation names the command's options (`unime.errors.OptionError`), and a value outside an option's
# range (`option(at_least=...)`) is refused before any work, in every command (QA: tracebacks of the reranker's
# checks, the optimizer's or the data loader's; `--steps 0` or `--epochs 0` silently trained by epochs or not at all)
_T = {"embedder": ["train", "embedder", "--model", "m", "--records", "r", "--out", "{tmp}/e"],
      "reranker": ["train", "reranker", "--model", "m", "--records", "r", "--out", "{tmp}/k"],
      "judge": ["train", "judge", "--model", "m", "--records", "r", "--out", "{tmp}/j"],
      "sft": ["train", "reasoner", "--stage", "sft", "--model", "m", "--tcots", "t", "--out", "{tmp}/r"],
      "grpo": ["train", "reasoner", "--stage", "grpo", "--model", "m", "--records", "r", "--embedder", "e",
               "--out", "{tmp}/r"]}
_I = ["data", "import", "--captions", "{tmp}/missing.csv", "--images", "{tmp}", "--out", "{tmp}/imp"]
_G = ["reason", "generate", "--model", "m", "--records", "r", "--out", "{tmp}/t.jsonl"]
CONFIG_CASES = [
    (_T["reranker"] + ["--full", "--train-module", "lm_head"], "train reranker: full fine-tuning (--full) trains every "
     "module; --train-module lm_head is a LoRA option: drop one of them"),
    (_T["reranker"] + ["--steps", "0"], "train reranker: --steps must be >= 1 (or -1, its default), got 0"),
    (_T["reranker"] + ["--negatives", "0"], "train reranker: --negatives must be >= 1, got 0"),
    (_T["reranker"] + ["--merged-dtype", "bf16"], "train reranker: --merged-dtype sets the dtype of OUT/merged, which "
     "a LoRA reranker writes only with --merge"),
    (_T["reranker"] + ["--losses", "pairwise"],
     "train reranker: --losses must be a non-empty subset of ('pair', 'list'), got ('pairwise',)"),
    (_T["judge"] + ["--batch-size", "0"], "train judge: --batch-size must be >= 1, got 0"),
    (_T["judge"] + ["--lr", "-1"], "train judge: --lr must be >= 0, got -1.0"),
    (_T["embedder"] + ["--steps", "0"], "train embedder: --steps must be >= 1, got 0"),
    (_T["embedder"] + ["--batch-size", "0"], "train embedder: --batch-size must be >= 1, got 0"),
    (_T["embedder"] + ["--lr", "-0.5"], "train embedder: --lr must be >= 0, got -0.5"),
    (_T["embedder"] + ["--epochs", "0"], "train embedder: --epochs must be > 0, got 0.0"),
    (_T["sft"] + ["--max-steps", "-5"], "train reasoner: --max-steps must be >= 1 (or -1, its default), got -5"),
    (_T["sft"] + ["--batch-size", "0"], "train reasoner: --batch-size must be >= 1, got 0"),
    (_T["sft"] + ["--grad-accum", "0"], "train reasoner: --grad-accum must be >= 1, got 0"),
    (_T["grpo"] + ["--lr", "-1"], "train reasoner: --lr must be >= 0, got -1.0"),
    (_T["grpo"] + ["--max-steps", "0"], "train reasoner: --max-steps must be >= 1 (or -1, its default), got 0"),
    (_T["grpo"] + ["--pairs-per-batch", "1"], "train reasoner: --pairs-per-batch must be >= 2, got 1"),
    # QA: 4 hard negative pairs with 2 pairs per batch silently showed the process judge 1 (a batch of B pairs has
    # B - 1 negatives)
    (_T["grpo"] + ["--hard-negative-pairs", "4"], "train reasoner: --hard-negative-pairs 4 needs more pairs per "
     "batch: a batch of --pairs-per-batch 2 pairs has 1 negative pair(s); give --pairs-per-batch >= 5 or "
     "--hard-negative-pairs <= 1"),
    (_T["grpo"] + ["--pairs-per-batch", "4", "--hard-negative-pairs", "4"], "train reasoner: --hard-negative-pairs 4 "
     "needs more pairs per batch: a batch of --pairs-per-batch 4 pairs has 3 negative pair(s); give "
     "--pairs-per-batch >= 5 or --hard-negative-pairs <= 3"),
    (_T["grpo"] + ["--hard-negative-pairs", "-1"], "train reasoner: --hard-negative-pairs must be >= 0, got -1"),
    (_T["grpo"] + ["--micro-batch", "3"], "train reasoner: --micro-batch 3 does not divide a step's 16 completions (2 "
     "x --pairs-per-batch 2 x --num-generations 4): give a divisor of 16"),
    (_T["grpo"] + ["--micro-batch", "0"], "train reasoner: --micro-batch must be >= 1, got 0"),
    (["embed", "--model", "m", "--items", "i", "--out", "{tmp}/o.npy", "--batch-size", "0"],
     "embed: --batch-size must be >= 1, got 0"),
    (["eval", "--model", "m", "--tasks", "t", "--out", "{tmp}/ev", "--batch-size", "0"],
     "eval: --batch-size must be >= 1, got 0"),
    (["index", "build", "--model", "m", "--items", "i", "--out", "{tmp}/x", "--batch-size", "-2"],
     "index build: --batch-size must be >= 1, got -2"),
    (["mine", "--records", "r", "--embedder", "e", "--judge", "j", "--out", "{tmp}/o", "--embed-batch-size", "0"],
     "mine: --embed-batch-size must be >= 1, got 0"),
    (["reason", "generate", "--model", "m", "--records", "r", "--out", "{tmp}/t.jsonl", "--batch-size", "0"],
     "reason generate: --batch-size must be >= 1, got 0"),
    (["eval", "reference", "--tasks", "t", "--records", "r", "--out", "{tmp}/ref", "--batch-size", "1"],
     "eval reference: --batch-size must be >= 2, got 1"),
    # either budget at 0 stopped the training before its first step (it asked for one of them positive)
    (["eval", "reference", "--tasks", "t", "--records", "r", "--out", "{tmp}/ref", "--seconds", "0", "--max-steps",
      "5"], "eval reference: --seconds must be > 0 (inf: no time limit), got 0.0"),
    (["eval", "reference", "--tasks", "t", "--records", "r", "--out", "{tmp}/ref", "--max-steps", "0"],
     "eval reference: --max-steps must be >= 1, got 0"),
    (["models", "pretrain", "--out", "{tmp}/p", "--warmup", "-1"], "models pretrain: --warmup must be >= 0, got -1.0"),
    (["models", "pretrain-judge", "--out", "{tmp}/p", "--judge-steps", "0"],
     "models pretrain-judge: --judge-steps must be >= 1, got 0"),
    # QA: NaN and inf were taken by every float option but a few of serve's (NaN compares False with every bound):
    # `--lr inf`, `--epochs inf`, `--temperature inf`, `--tau nan`... trained on NaN losses or never ended
    (_T["embedder"] + ["--lr", "inf"], "train embedder: --lr must be a finite number, got inf"),
    (_T["embedder"] + ["--epochs", "inf"], "train embedder: --epochs must be a finite number, got inf"),
    (_T["embedder"] + ["--tau", "inf"], "train embedder: --tau must be a finite number, got inf"),  # nan: not > 0
    (_T["embedder"] + ["--label-tau=inf"], "train embedder: --label-tau must be a finite number, got inf"),
    (_T["sft"] + ["--epochs", "inf"], "train reasoner: --epochs must be a finite number, got inf"),
    (_T["grpo"] + ["--temperature", "inf"], "train reasoner: --temperature must be a finite number, got inf"),
    (_T["grpo"] + ["--beta", "inf"], "train reasoner: --beta must be a finite number, got inf"),
    (_T["grpo"] + ["--weights", "0.05,inf,0.2"],
     "train reasoner: --weights must be finite numbers, got (0.05, inf, 0.2)"),
    # QA: all three at 0 trained a whole run on a reward of 0 for every completion (nothing to learn); a negative weight
    # trained towards the opposite of its reward (e.g. against the T-CoT format)
    (_T["grpo"] + ["--weights", "0,0,0"], "train reasoner: --weights must not all be 0 (every completion's reward "
     "would be 0: GRPO learns nothing), got (0.0, 0.0, 0.0)"),
    (_T["grpo"] + ["--weights=-0.05,0.8,0.2"], "train reasoner: --weights must be >= 0 each (a negative weight "
     "rewards the opposite), got (-0.05, 0.8, 0.2)"),
    (_T["judge"] + ["--holdout", "nan"], "train judge: --holdout must be >= 0 and < 1, got nan"),  # not in range
    (["mine", "--records", "r", "--embedder", "e", "--judge", "j", "--out", "{tmp}/o", "--beta", "inf"],
     "mine: --beta must be >= -1 and <= 1, got inf"),
    (["reason", "generate", "--model", "m", "--records", "r", "--out", "{tmp}/t.jsonl", "--temperature", "inf"],
     "reason generate: --temperature must be a finite number, got inf"),
    (["reason", "split", "--records", "r", "--tcots", "t", "--judge", "j", "--out-dir", "{tmp}/s", "--threshold",
      "inf"], "reason split: --threshold must be >= 0 and <= 1, got inf"),
    (["models", "pretrain", "--out", "{tmp}/p", "--lr", "inf"],
     "models pretrain: --lr must be a finite number, got inf"),
    (["plan", "--model", "m", "--images-per-item", "inf"], "plan: --images-per-item must be a finite number, got inf"),
    # --seconds inf is "no time limit" (--max-steps only): NaN is still refused
    (["eval", "reference", "--tasks", "t", "--records", "r", "--out", "{tmp}/ref", "--seconds", "nan"],
     "eval reference: --seconds must be a number (inf: no limit), got nan"),
    # `data import`'s options, before the collection is read (QA: tracebacks of ValueError)
    (_I + ["--name", "my data"], "data import: --name must be a non-empty word (no spaces or slashes), got 'my data'"),
    (_I + ["--eval-fraction", "1.0"], "data import: --eval-fraction must be > 0 and < 1, got 1.0"),
    (_I + ["--eval-fraction", "0"], "data import: --eval-fraction must be > 0 and < 1, got 0.0"),
    (_I + ["--eval-candidates", "1"], "data import: --eval-candidates must be >= 2, got 1"),
    (_I + ["--judge-negatives", "0"], "data import: --judge-negatives must be >= 1, got 0"),
    (_I + ["--directions", "t2x"], "data import: --directions must be a non-empty subset of ('i2t', 't2i'), got "
     "['t2x']"),
    (_I + ["--directions", ","], "data import: --directions must be a non-empty subset of ('i2t', 't2i'), got []"),
    (_I + ["--delimiter", ";;"], "data import: --delimiter must be one character ('\\t' for a tab), got ';;'"),
    # QA: a ValueError traceback ('side must be one of ...') once the records were read, or numpy's 'need at least
    # one array to concatenate' for an empty list
    *((_G + ["--sides", given],
       f"reason generate: --sides must be a non-empty subset of ('query', 'target'), got {got}")
      for given, got in (("foo", "['foo']"), ("", "[]"))),
    (_G + ["--sides", "query,query"], "reason generate: --sides must name each side once, got ['query', 'query']"),
]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("unime: error: "), lines[0]
    return lines[0][len("unime: error: "):]


@pytest.mark.parametrize("argv,line", CASES + CONFIG_CASES,
                         ids=[" ".join(a[:3]) + f"#{i}" for i, (a, _) in enumerate(CASES + CONFIG_CASES)])
def test_every_usage_error_is_one_line_and_exit_code_2(argv, line, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert _error_line(capsys) == line


def test_argparse_usage_errors_and_help_keep_their_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "reasoner", "--stage", "sft"])  # required --model / --out: argparse's own error
    assert e.value.code == 2
    assert "the following arguments are required: --model, --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["plan", "--help"])
    assert e.value.code == 0


# an option the command does not have (QA: argparse said "unrecognized arguments: --batchsize 3" after the `unime`
# usage, or for `eval --only X` "argument [reference]: invalid choice: 'X'", silent about --only): (argv, the error
# line after the command's usage): the option, the other commands taking it, the command's closest option
_EVAL = ["eval", "--model", "m", "--tasks", "t", "--out", "{tmp}/ev"]
_ONLY = ("unime eval: error: unrecognized option --only; --only is an option of 'unime reason eval'; did you mean "
         "--task NAME (evaluate only this task (repeatable))?")  # the option of the same config field (`only`)
UNKNOWN_OPTION_CASES = [
    (_EVAL + ["--only", "X"], _ONLY),
    (["eval", "--only=X"], _ONLY),
    (["eval", "reference", "--only", "X"], "unime eval reference: error: unrecognized option --only; --only is an "
     "option of 'unime reason eval'; did you mean --task NAME (evaluate only this task)?"),
    (["train", "judge", "--max-steps", "3"], "unime train judge: error: unrecognized option --max-steps; --max-steps "
     "is an option of 'unime eval reference' and 'unime train reasoner'; did you mean --steps (optimizer steps "
     "(overrides --epochs when > 0))?"),
    # a typo: the closest option by spelling
    (["train", "embedder", "--model", "m", "--records", "r", "--out", "{tmp}/e", "--batchsize", "3"],
     "unime train embedder: error: unrecognized option --batchsize; did you mean --batch-size?"),
    (["train", "embedder", "--sed", "3"], "unime train embedder: error: unrecognized option --sed; did you mean "
     "--seed?"),
    (["data", "synth", "--out", "{tmp}/w", "--seeds", "3"], "unime data synth: error: unrecognized option --seeds; "
     "--seeds is an option of 'unime demo'; did you mean --seed?"),
    (_EVAL + ["--seeds", "3"], "unime eval: error: unrecognized option --seeds; --seeds is an option of 'unime demo'"),
    # another command's option, nothing close in this one
    (["embed", "--only", "3"], "unime embed: error: unrecognized option --only; --only is an option of 'unime reason "
     "eval'"),
    (["eval", "--version"], "unime eval: error: unrecognized option --version; --version is an option of 'unime'"),
    # an option of no command: no suggestion
    (["mine", "--frobnicate"], "unime mine: error: unrecognized option --frobnicate"),
    (["eval", "reference", "--tasks", "t", "--frobnicate=2"],
     "unime eval reference: error: unrecognized option --frobnicate"),
    (["--frobnicate", "eval"], "unime: error: unrecognized option --frobnicate"),
]


@pytest.mark.parametrize("argv,line", UNKNOWN_OPTION_CASES,
                         ids=[" ".join(a[:3]) + f"#{i}" for i, (a, _) in enumerate(UNKNOWN_OPTION_CASES)])
def test_an_unknown_option_is_a_usage_error_naming_it_its_commands_and_the_closest(argv, line, tmp_path, capsys):
    _assert_refused_by_the_parser(argv, line, tmp_path, capsys)


def _assert_refused_by_the_parser(argv, line, tmp_path, capsys):
    """`argv` ends in argparse's usage of the command and then the one error `line`, exit code 2, nothing written."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    command = line.split(": error:")[0]
    assert err[0].startswith(f"usage: {command} ") and err[-1] == line  # argparse's usage, then the one error line
    assert [x for x in err if "error:" in x] == [line]
    assert not any(tmp_path.iterdir())


_DASH = " (a value beginning with '-' is written {})"
_SEARCH = ["search", "--index", "{tmp}/idx"]
_TRAIN = ["train", "embedder", "--model", "m", "--records", "r", "--out", "{tmp}/e"]
# a value beginning with '-' after the option taking it, which argparse takes for an option (QA: `unime search --query
# -foo` said "unrecognized option -foo"): the error ends with the option's value written with `=`, where the option
# takes that value (its type and choices)
DASH_VALUE_CASES = [
    (_SEARCH + ["--query", "-foo"], "unime search: error: unrecognized option -foo" + _DASH.format("--query=-foo")),
    (_SEARCH + ["--instruction", "-x"], "unime search: error: unrecognized option -x"
     + _DASH.format("--instruction=-x")),
    (_SEARCH + ["--que", "-foo"], "unime search: error: unrecognized option -foo" + _DASH.format("--que=-foo")),
    (_SEARCH + ["--json", "--query", "-json"], "unime search: error: unrecognized option -json; did you mean --json?"
     + _DASH.format("--query=-json")),
    (["data", "import", "--delimiter", "-x"], "unime data import: error: unrecognized option -x"
     + _DASH.format("--delimiter=-x")),
    (["--log-level", "-x", "eval"], "unime: error: unrecognized option -x" + _DASH.format("--log-level=-x")),
    # a float argparse does not take for a negative number
    (_TRAIN + ["--lr", "-1e-3"], "unime train embedder: error: unrecognized option -1e-3" + _DASH.format("--lr=-1e-3")),
    # an option of the command (or -h) as the value: argparse's "expected one argument"
    (_SEARCH + ["--query", "--json"], "unime search: error: argument --query: expected one argument"
     + _DASH.format("--query=--json")),
    (_SEARCH + ["--query", "-h"], "unime search: error: argument --query: expected one argument"
     + _DASH.format("--query=-h")),
    # the value after `--`, which argparse does not give to the option before it
    (_SEARCH + ["--query", "--", "-foo"], "unime search: error: argument --query: expected one argument"
     + _DASH.format("--query=-foo")),
    (_TRAIN + ["--lr", "--", "-1e-3"], "unime train embedder: error: argument --lr: expected one argument"
     + _DASH.format("--lr=-1e-3")),
    (_TRAIN + ["--seed", "--", "-foo"], "unime train embedder: error: argument --seed: expected one argument"),
    # no hint: a value the option refuses, an option taking no value, the value given before, no value at all
    (_TRAIN + ["--seed", "-foo"], "unime train embedder: error: unrecognized option -foo"),
    (_TRAIN + ["--on-error", "-x"], "unime train embedder: error: unrecognized option -x"),
    (_SEARCH + ["--json", "-foo"], "unime search: error: unrecognized option -foo"),
    (_SEARCH + ["--query", "q", "-foo"], "unime search: error: unrecognized option -foo"),
    (_SEARCH + ["--query=q", "--json", "--query"], "unime search: error: argument --query: expected one argument"),
]


@pytest.mark.parametrize("argv,line", DASH_VALUE_CASES,
                         ids=[" ".join(a[-2:]) + f"#{i}" for i, (a, _) in enumerate(DASH_VALUE_CASES)])
def test_a_value_beginning_with_a_dash_is_said_to_be_written_with_equals(argv, line, tmp_path, capsys):
    _assert_refused_by_the_parser(argv, line, tmp_path, capsys)


def test_values_beginning_with_a_dash_written_with_equals_parse():
    """What the hint says parses to the value; and a negative number, a value with a space, after a space."""
    from unime.cli import _add_overwrite_options, _parse, build_parser

    parser = build_parser()
    _add_overwrite_options(parser)
    search = ["search", "--index", "idx"]
    assert _parse(parser, search + ["--query=-foo"]).query == "-foo"
    assert _parse(parser, search + ["--query=--json"]).query == "--json"
    assert _parse(parser, search + ["--query", "-1"]).query == "-1"
    assert _parse(parser, search + ["--query", "-foo bar"]).query == "-foo bar"
    train = ["train", "embedder", "--model", "m", "--records", "r", "--out", "o"]
    assert _parse(parser, train + ["--lr=-1e-3"]).lr == -1e-3


def test_options_shortened_as_argparse_allows_still_parse(tmp_path, capsys):
    """The unknown-option rule keeps argparse's abbreviations (a unique prefix is the option; an ambiguous one is
    argparse's own error), the help is printed whatever else is given, and a negative number is a value."""
    from unime.cli import _add_overwrite_options, _parse, build_parser

    parser = build_parser()
    _add_overwrite_options(parser)
    train = ["train", "embedder", "--model", "m", "--records", "r", "--out", "o"]
    assert _parse(parser, train + ["--batch", "3"]).batch_size == 3
    assert _parse(parser, train + ["--batch-s=5"]).batch_size == 5
    assert _parse(parser, ["reason", "eval", "--embedder", "e", "--task", "t.yaml", "--out", "o"]).tasks == "t.yaml"
    assert _parse(parser, train + ["--lr", "-0.5"]).lr == -0.5  # (refused later, by its range)
    with pytest.raises(SystemExit) as e:
        _parse(parser, train + ["--lora", "3"])
    assert e.value.code == 2 and "error: ambiguous option: --lora could match" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["mine", "--frobnicate", "--help"])
    assert e.value.code == 0 and "usage: unime mine" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["train", "embedder", "--model", "m", "--records", "r", "--out", "{tmp}/e"],
    ["train", "reasoner", "--stage", "grpo", "--model", "m", "--out", "{tmp}/r", "--records", "r", "--embedder", "e"],
    ["train", "reranker", "--model", "m", "--records", "r", "--out", "{tmp}/rr"],
], ids=["embedder", "grpo", "reranker"])
def test_an_unknown_lr_scheduler_is_a_usage_error_listing_the_names(argv, tmp_path, capsys):
    """QA: `--lr-scheduler bogus` was accepted and ended, after the models were loaded, in a ValueError traceback
    from transformers' `SchedulerType`; the parser now refuses it (exit 2), its one error line naming the option
    and transformers' schedule names, and nothing is written."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv + ["--lr-scheduler", "bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --lr-scheduler: invalid choice: 'bogus'" in err
    assert "'linear'" in err and "'constant'" in err and "'cosine_with_restarts'" in err
    assert not any(tmp_path.iterdir())


def test_an_unknown_grpo_loss_type_is_a_usage_error_listing_the_names(tmp_path, capsys):
    """QA: `train reasoner --stage grpo --loss-type bogus` was accepted (any string reached TRL's GRPOConfig, whose
    trainer raises "Unknown loss type" only when computing the first loss); the parser now refuses it (exit 2), its
    one error line naming the option and TRL's loss types, and nothing is written."""
    with pytest.raises(SystemExit) as e:
        main(["train", "reasoner", "--stage", "grpo", "--model", "m", "--out", str(tmp_path / "r"), "--records", "r",
              "--embedder", "e", "--loss-type", "bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "error:" in line] == err[-1:]  # argparse's usage, then the one error line
    assert "argument --loss-type: invalid choice: 'bogus'" in err[-1]
    assert "'grpo'" in err[-1] and "'dapo'" in err[-1] and "'dr_grpo'" in err[-1]
    assert not any(tmp_path.iterdir())


def test_no_command_module_exits_with_a_message():
    """`raise SystemExit("...")` exits 1 without the contract's line: the command modules raise
    `UsageError` instead (an exit code as the argument stays allowed)."""
    found = []
    for path in sorted((SRC / "unime").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "SystemExit" and node.args:
                arg = node.args[0]
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, int)):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "exit" and \
                    getattr(node.func.value, "id", None) == "sys" and node.args and \
                    isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert found == []


def test_bare_plan_through_the_installed_entry_point_exits_2(tmp_path):
    exe = Path(sys.executable).parent / "unime"
    if not exe.exists():
        pytest.skip("no `unime` console script next to this interpreter")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(exe), "plan"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "unime: error: plan: give --recipe NAME or --stage {embedder,reranker,judge,reasoner-sft,reasoner-grpo}"]
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


def test_a_failed_command_leaves_no_empty_output_folder_it_created(tmp_path, capsys):
    """The output folder is claimed before the command runs; a usage error found then leaves nothing, while
    a folder that was there before stays."""
    new = tmp_path / "new" / "ev"
    assert main(["eval", "--out", str(new), "--model", "m"]) == 2
    assert _error_line(capsys) == "eval: --model needs --tasks"
    assert not new.exists() and (tmp_path / "new").is_dir()  # only the folder it created, not its parent
    kept = tmp_path / "kept"
    kept.mkdir()
    assert main(["train", "reasoner", "--stage", "sft", "--model", "m", "--out", str(kept)]) == 2
    assert _error_line(capsys) == "train reasoner: --stage sft needs --tcots"
    assert kept.is_dir()


@pytest.mark.parametrize("command", ["synth", "import"])
def test_a_folder_refused_by_the_stage_is_the_contract_line_too(command, monkeypatch, tmp_path, capsys):
    """The stage's own refusal of a non-empty folder (the CLI's claim refuses most cases before) used to be
    printed on stdout without the contract's prefix."""
    import unime.data.import_collection as importer
    import unime.data.synth.generate as synth

    def refuse(*a, **k):
        raise FileExistsError(f"{tmp_path / 'o'} exists and is not empty")

    monkeypatch.setattr(synth, "generate_world", refuse)
    monkeypatch.setattr(importer, "import_collection", refuse)
    images = tmp_path / "imgs"
    images.mkdir()
    (tmp_path / "c.csv").write_text("file,text\n")
    argv = {"synth": ["data", "synth", "--out", str(tmp_path / "o"), "--size", "tiny"],
            "import": ["data", "import", "--captions", str(tmp_path / "c.csv"), "--images", str(images),
                       "--out", str(tmp_path / "o")]}[command]
    monkeypatch.setattr("unime.data.collections.read_caption_table", lambda *a, **k: [])
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "exists and is not empty" not in out and "Traceback" not in err
    assert err.splitlines() == [f"unime: error: {tmp_path / 'o'} exists and is not empty"]


def test_reason_eval_on_tasks_of_no_supported_format_names_the_ones_it_evaluates(tmp_path, capsys):
    """QA: `--tasks WORLD/eval_tasks_video.yaml` (MMEB-V2 tasks) ended in a ValueError traceback; MMEB-V2 tasks are
    evaluated now, tasks of other formats only are refused naming the formats it evaluates."""
    tasks = tmp_path / "eval_tasks.yaml"
    tasks.write_text("tasks:\n  - {name: caps, format: retrieval, path: eval/retrieval/caps.jsonl}\n"
                     "  - {name: comp, format: compositional, path: eval/comp.jsonl}\n")
    assert main(["reason", "eval", "--embedder", "e", "--tasks", str(tasks), "--out", str(tmp_path / "ev"),
                 "--tcots", "none"]) == 2
    assert _error_line(capsys) == (
        f"reason eval: --tasks {tasks}: no task of format mmeb, mmeb_v2 or qrels, the formats `reason eval` evaluates "
        "(these tasks: compositional, retrieval; retrieval / compositional tasks are not supported: their items are on "
        "both sides)")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("trainer,given", [
    ("embedder", ["--lora-r", "8"]), ("embedder", ["--lora-vision"]), ("embedder", ["--lora-targets", "qkv,q_proj"]),
    ("embedder", ["--dora"]), ("reranker", ["--lora-alpha", "8"]), ("judge", ["--lora-dropout", "0.2"]),
    ("sft", ["--lora-r", "8"]), ("grpo", ["--lora-r", "8"]), ("grpo", ["--lora-vision"]),
    ("sft", ["--lora-r", "16"]), ("grpo", ["--lora-r", "16"])])
def test_lora_options_given_with_a_peft_adapter_as_model_are_refused(trainer, given, tmp_path, capsys):
    """QA: continuing from a PEFT adapter (an adapter folder, or a run folder holding only adapter/) trains the
    adapter's own LoRA; --lora-r 8 --lora-vision ... were accepted and ignored (an INFO line). The reasoner's
    --lora-r of the adapter's own rank (16) was let through: a given option is refused whatever its value (the
    run's rank is the adapter's: `test_the_reasoner_on_an_adapter_takes_its_rank_without_lora_r`)."""
    import json

    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16,
                                                             "base_model_name_or_path": "the-base"}))
    for model in (adapter, tmp_path / "run"):
        argv = [str(model) if a == "m" else a.replace("{tmp}", str(tmp_path)) for a in _T[trainer]] + given
        assert main(argv) == 2
        option = "--lora-vision" if "--lora-vision" in given else given[0]
        assert _error_line(capsys) == (
            f"train {argv[1] if trainer in ('embedder', 'reranker', 'judge') else 'reasoner'}: {option} does nothing "
            f"with --model {model}, a PEFT adapter trained with its own LoRA (r 16; for a new adapter, give its base "
            f"model the-base as --model): drop {option}")
    # not given: accepted (the run goes on to its records, which do not exist)
    assert main([str(adapter) if a == "m" else a.replace("{tmp}", str(tmp_path)) for a in _T[trainer]]) != 0
    assert "PEFT adapter" not in capsys.readouterr().err


@pytest.mark.parametrize("trainer,full", [("embedder", "--full"), ("reranker", "--full"), ("judge", "--full"),
                                          ("sft", "--lora-r 0"), ("grpo", "--lora-r 0")])
def test_full_fine_tuning_of_a_hub_adapter_is_refused_before_anything_is_loaded_or_claimed(trainer, full, tmp_path,
                                                                                           monkeypatch, capsys):
    """QA: a PEFT adapter given as a hub id (here in the local hub cache, as a download leaves it) with full
    fine-tuning was refused only after the run had claimed --out and loaded the model (an adapter folder was refused
    before, from its adapter_config.json). Now the hub id's adapter_config.json is read first."""
    import json

    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--someone--an-adapter" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    (snapshot / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8,
                                                              "base_model_name_or_path": "someone/the-base"}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    argv = ["someone/an-adapter" if a == "m" else a.replace("{tmp}", str(tmp_path)) for a in _T[trainer]]
    if trainer in ("embedder", "reranker", "judge"):
        (tmp_path / "r.jsonl").write_text(json.dumps({"query": {"text": "q"}, "positive": {"text": "p"}}) + "\n")
        argv[argv.index("r")] = str(tmp_path / "r.jsonl")
    assert main([*argv, *full.split()]) == 2
    assert _error_line(capsys) == (
        f"full fine-tuning ({full}) of someone/an-adapter, a PEFT adapter of the hub on someone/the-base: "
        "merge it into its base first and give the merged folder as --model")
    assert not [p for p in tmp_path.iterdir() if p.name not in ("hub", "r.jsonl")]  # no --out claimed
    # another hub id (not in the cache, no hub here): not refused as an adapter
    assert main([*[a.replace("someone/an-adapter", "someone/a-model") for a in argv], *full.split()]) != 0
    assert "PEFT adapter" not in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_the_reasoner_on_an_adapter_takes_its_rank_without_lora_r(stage, tmp_path, monkeypatch, capsys):
    """With an adapter as --model and no --lora-r, the run's rank is the adapter's own (16), not the stage's default
    (sft 16 by chance, GRPO 0: full fine-tuning, refused as 'merge it first'); --print-config shows it."""
    import json

    from unime.embed_rl import grpo, reasoner_sft

    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 6,
                                                             "base_model_name_or_path": "the-base"}))
    seen = []
    train = {"sft": (reasoner_sft, "train_reasoner_sft"), "grpo": (grpo, "train_reasoner_grpo")}[stage]
    monkeypatch.setattr(*train, lambda cfg: (cfg.validate(), seen.append(cfg.lora_r), 1 / 0))
    argv = [str(tmp_path / "run") if a == "m" else a.replace("{tmp}", str(tmp_path)) for a in _T[stage]]
    with pytest.raises(ZeroDivisionError):
        main(argv)
    assert seen == [6]
    capsys.readouterr()
    assert main([*argv, "--print-config"]) == 0
    # the columns' widths follow the longest option name and value: compare the line's words
    assert "lora-r 6 # the own rank of the PEFT adapter given as --model".split() \
        in [line.split() for line in capsys.readouterr().out.splitlines()]


def test_an_unknown_optimizer_is_refused_before_the_run_claims_its_folder(tmp_path, capsys):
    """QA: `train embedder --optim bogus` claimed the output folder (train_inputs.json written) and ended, once the
    models were loaded, in transformers' `ValueError: bogus is not a valid OptimizerNames` traceback. It is now one
    error line naming the option and transformers' names, before anything is written; a known name passes."""
    from transformers.training_args import OptimizerNames

    from unime.options import check_optimizer_name

    out = tmp_path / "e"
    code = main(["train", "embedder", "--model", "m", "--records", "r", "--out", str(out), "--optim", "bogus"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--optim 'bogus' is not one of transformers' optimizer names" in err
    assert "adamw_torch" in err and "sgd" in err
    assert not out.exists()
    for name in ("sgd", "adafactor", OptimizerNames.ADAMW_TORCH.value):
        check_optimizer_name(name)


_INF, _NAN = float("inf"), float("nan")


@pytest.mark.parametrize("config,kwargs,check,message", [
    ("unime.demo.pretrain:PretrainRecipe", dict(lr=_INF), None, "lr must be a finite number, got inf"),
    ("unime.demo.pretrain:JudgePretrainRecipe", dict(group_weight=_NAN), None, "group_weight must be >= 0, got nan"),
    ("unime.eval.reference_config:ReferenceConfig", dict(lr=_INF), None, "lr must be a finite number, got inf"),
    ("unime.eval.reference_config:ReferenceConfig", dict(seconds=_NAN), None,
     "seconds must be a number (inf: no limit), got nan"),
    ("unime.mining.config:MineConfig", dict(records="r", embedder="e", judge="j", out="o", beta=_INF), None,
     "beta must be >= -1 and <= 1, got inf"),
    ("unime.embed_rl.grpo:GRPOStageConfig", dict(model="m", records="r", embedder="e", out="o", device="cpu",
                                                 temperature=_INF), "validate",
     "temperature must be a finite number, got inf"),
    ("unime.embed_rl.grpo:GRPOStageConfig", dict(model="m", records="r", embedder="e", out="o", device="cpu",
                                                 neg_temperature=_INF), "validate",
     "neg_temperature must be a finite number, got inf"),
    ("unime.embed_rl.tcot_embedder:SplitConfig", dict(records="r", tcots="t", judge="j", out_dir="o",
                                                      threshold=_INF), "check",
     "threshold must be >= 0 and <= 1, got inf"),
], ids=lambda v: v.split(":")[1] if isinstance(v, str) and ":" in v else None)
def test_python_configs_refuse_nan_and_inf_naming_the_field(config, kwargs, check, message):
    """From Python, a config's check (`check_ranges`, as it is made or validated) refuses NaN and inf as the command
    line does, naming the field."""
    import importlib

    from unime.errors import OptionError

    module, name = config.split(":")
    with pytest.raises(OptionError) as e:
        made = getattr(importlib.import_module(module), name)(**kwargs)
        if check:
            getattr(made, check)()
    assert str(e.value) == message


def test_eval_reference_seconds_inf_is_no_time_limit():
    """`--seconds inf` (`finite=False`): train until --max-steps, as its help says; the command line takes it."""
    from unime.eval.reference_config import ReferenceConfig

    assert ReferenceConfig(seconds=float("inf"), max_steps=5).seconds == float("inf")
    assert "inf: no time limit" in next(f for f in dataclasses.fields(ReferenceConfig)
                                        if f.name == "seconds").metadata["help"]


@pytest.mark.parametrize("yaml_line,line", [
    ("lr: .inf", "train embedder: --lr must be a finite number, got inf"),
    ("tau: .inf", "train embedder: --tau must be a finite number, got inf"),  # .nan: not > 0
    ("warmup: -.inf", "train embedder: --warmup must be >= 0, got -inf"),
    ("max_grad_norm: .Inf", "train embedder: --max-grad-norm must be a finite number, got inf"),
])
def test_an_options_file_refuses_nan_and_inf_as_the_command_line_does(yaml_line, line, tmp_path, capsys):
    """YAML spells inf and NaN `.inf` / `.nan`: a `--config` file's value is refused as the same flag's would be."""
    (tmp_path / "c.yaml").write_text(yaml_line + "\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in _T["embedder"]]
    assert main(argv + ["--config", str(tmp_path / "c.yaml")]) == 2
    assert _error_line(capsys) == line
