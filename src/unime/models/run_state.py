"""One output / resume convention for the four trainers (embedder, reranker / judge, reasoner SFT, GRPO).

A run writes one folder OUT: `train_config.json` (its options, and the working directory their relative paths start
from: `unime.errors.with_working_dir`), `checkpoints/checkpoint-N` while it trains,
the final export (`unime.models.export`: `adapter/`, `merged/`, `README.md`), and last its *finished marker*
(the embedder's `metrics.json`, the reranker's `unime_reranker.json`, SFT's `sft_summary.json`, GRPO's
`grpo_summary.json`). Re-running the same command (`plan_run`):

- finished earlier with the same options → nothing to do (the run's result is reported);
- options changed (outside the trainer's free keys) → `ChangedOptions` listing the keys (exit code 2), or
  with `--overwrite` start over: the run's `checkpoint-N` folders and its finished marker go (anything else
  in `checkpoints/` stays, named in a warning). An option the earlier
  run did not record (added by a later version of unime) is no change while it keeps its default;
- interrupted → continue from the last *complete* checkpoint (`--resume` accepted, not needed). A checkpoint
  counts only if its weights, optimizer, scheduler, RNG state and `trainer_state.json` are all there and
  readable (`checkpoint_problem`; under DeepSpeed ZeRO-1/2 the optimizer and scheduler are DeepSpeed's own
  `latest` + `global_stepN/` instead: `deepspeed_state_problem`); a newer incomplete one is reported and
  skipped, never used;
- the inputs changed (the content of the records: the config's `option(input_file=True)` files, by SHA-1, recorded
  in `train_inputs.json` when the run begins) → `ChangedOptions` naming the file, for a continuation and a finished
  run alike (`--overwrite` starts over); a run recorded before this file existed continues, and is recorded;
- `--resume CHECKPOINT` (an explicit folder) is always continued from — in a new OUT, with `--overwrite`, over
  a finished run — or refused at once when it is missing or incomplete; never ignored;
- a checkpoint at the run's last step (a kill or a full disk during the export) is exported as it is: no
  extra optimizer step (`train_or_finish`);
- checkpoints are kept after the run (the Trainer's `save_total_limit` rotation bounds them); a command
  never deletes files it did not create;
- the reported loss covers the whole run, not the part after the last resume (`whole_run_loss`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from unime.errors import (ChangedOptions, OptionError, UnimeError, changed_option_keys,  # noqa: F401
                          placeholder_field, refuse_changed_options, with_working_dir)
from unime.options import input_files, none_meanings, option_aliases, option_defaults, option_name

CHECKPOINTS_DIR = "checkpoints"  # OUT/checkpoints/checkpoint-N while a run trains
FULL_STATE_FILE = "trainable_state.safetensors"  # resumable state of a full fine-tuning run
ADAPTER_DIR, MERGED_DIR, CARD_FILE = "adapter", "merged", "README.md"  # the final export (`unime.models.export`)
EXPORT_NAMES = (ADAPTER_DIR, MERGED_DIR, CARD_FILE)

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
INPUTS_FILE = "train_inputs.json"  # {option: [[path, sha1], ...]}: the content of the input files the run trains on


def write_config(out: str | Path, options: dict[str, Any]) -> None:
    """The run's options, `out/train_config.json` (atomic), compared on every re-run; with the working directory
    their relative paths start from (`unime.errors.with_working_dir`)."""
    _write_json(Path(out) / CONFIG_FILE, with_working_dir(options))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from unime.data.atomic import atomic_open

    with atomic_open(path) as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# -- resumable checkpoints (inside the trainer's checkpoint-N folders) ---------------------------------
def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def save_training_weights(model, folder: str | os.PathLike) -> None:
    """The weights a resumed run needs: the adapter (LoRA) or every parameter (full fine-tuning)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        model.save_pretrained(str(folder))
    else:
        from safetensors.torch import save_model

        save_model(model, str(folder / FULL_STATE_FILE))


def load_training_weights(model, folder: str | os.PathLike) -> None:
    folder = Path(folder)
    if is_peft(model):
        from peft import load_peft_weights, set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_peft_weights(str(folder), device="cpu"))
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"{folder}: adapter weights do not fit the model: {unexpected[:5]}")
    else:
        from safetensors.torch import load_model

        path = folder / FULL_STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {FULL_STATE_FILE} (not a full fine-tuning checkpoint?)")
        load_model(model, str(path), strict=True)


class ExactWeightsCheckpoints:
    """Trainer mixin: a fully fine-tuned model is checkpointed under its in-memory parameter names and
    reloaded strictly (`save_training_weights` / `load_training_weights`). The Trainer's default goes
    through `save_pretrained`, whose on-disk names (Qwen-VL's `model.language_model.*` saved as
    `model.*`) a non-strict reload does not map back: a resumed run silently restarted from the base
    weights. PEFT models keep the Trainer's own adapter checkpoints."""

    def _save(self, output_dir=None, state_dict=None):
        if is_peft(self.model):
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            save_training_weights(self.model, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if is_peft(self.model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_training_weights(self.model, resume_from_checkpoint)


# -- which checkpoint a re-run continues from -----------------------------------------------------------
WEIGHT_FILES = ("adapter_model.safetensors", FULL_STATE_FILE, "model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin")  # PEFT, full fine-tuning (`ExactWeightsCheckpoints`), the Trainer's own
TRAINER_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json")  # without either, the Trainer restarts
                                                                         # the optimizer / schedule silently


def _safetensors_problem(path: Path) -> str | None:
    """None if the safetensors file's header parses and its size is what the header says (not truncated)."""
    import struct

    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        return f"{path.name} unreadable ({e.__class__.__name__})"
    size = path.stat().st_size
    return None if size == 8 + n + end else f"{path.name} truncated ({size} of {8 + n + end} bytes)"


def _torch_file_problem(path: Path) -> str | None:
    """None if `torch.save`'s zip archive has its central directory (a truncated one has not)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (OSError, zipfile.BadZipFile) as e:
        return f"{path.name} unreadable ({e})"
    return None


# DeepSpeed's own checkpoint inside checkpoint-N (transformers' `_save_optimizer_and_scheduler` under DeepSpeed calls
# the engine's `save_checkpoint(checkpoint-N)`): `latest` names the tag folder (`global_step{N}`) holding
# `mp_rank_{MM}_model_states.pt` (module, LR scheduler, step) and one
# `[bf16_]zero_pp_rank_{R}_mp_rank_{MM}_optim_states.pt` per data-parallel rank R (ZeRO-1/2); no `optimizer.pt`,
# and `scheduler.pt` only when the LR scheduler is not DeepSpeed's (transformers' `is_deepspeed_custom_scheduler`)
DEEPSPEED_LATEST = "latest"
_DS_MODEL_STATES = re.compile(r"mp_rank_(\d+)_model_states\.pt")
_DS_OPTIM_STATES = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt")


def is_deepspeed_checkpoint(folder: Path) -> bool:
    """`folder` holds DeepSpeed's checkpoint (its `latest` file or a `global_stepN` folder), whole or not."""
    return (folder / DEEPSPEED_LATEST).exists() or any(p.is_dir() for p in folder.glob("global_step*"))


def deepspeed_state_problem(folder: Path) -> str | None:
    """Why the DeepSpeed checkpoint in `folder` (a `checkpoint-N`) cannot be resumed from, or None: `latest` names a
    tag folder beside it holding `mp_rank_00_model_states.pt` (and that of every other model-parallel rank), and the
    ZeRO optimizer states of data-parallel ranks 0..R, one per process that saved its RNG state (`rng_state_N.pth`),
    every file a whole torch archive. DeepSpeed writes `latest` after its states, and resuming from a folder without
    it fails; a missing optimizer shard would restart that part of the optimizer state. (No shard at all is whole:
    DeepSpeed without ZeRO keeps the optimizer state in the model states.)"""
    latest = folder / DEEPSPEED_LATEST
    try:
        tag = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        return f"missing {DEEPSPEED_LATEST} (DeepSpeed's)" if not latest.exists() else \
            f"{DEEPSPEED_LATEST} unreadable ({e.__class__.__name__})"
    state = folder / tag
    if not tag or Path(tag).name != tag or not state.is_dir():
        return f"missing {tag or '?'}/ (named by {DEEPSPEED_LATEST})"
    names = sorted(p.name for p in state.iterdir() if p.is_file())
    optim: dict[int, set[int]] = {}  # model-parallel rank -> the data-parallel ranks of its optimizer shards
    for m in filter(None, map(_DS_OPTIM_STATES.fullmatch, names)):
        optim.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    model = {int(m.group(1)) for m in filter(None, map(_DS_MODEL_STATES.fullmatch, names))}
    for mp in sorted(model | set(optim) | {0}):
        if mp not in model:
            return f"missing {tag}/mp_rank_{mp:02d}_model_states.pt"
        gaps = sorted(set(range(max(optim.get(mp, {-1})) + 1)) - optim.get(mp, set()))
        if gaps:
            return f"missing {tag}/zero_pp_rank_{gaps[0]}_mp_rank_{mp:02d}_optim_states.pt"
    shards, processes = sum(map(len, optim.values())), len(list(folder.glob("rng_state_*.pth"))) or 1
    if shards and shards != processes:
        return f"{tag}/ holds the ZeRO optimizer states of {shards} of the run's {processes} processes"
    for name in names:
        if _DS_MODEL_STATES.fullmatch(name) or _DS_OPTIM_STATES.fullmatch(name):
            problem = _torch_file_problem(state / name)
            if problem:
                return f"{tag}/{problem}"
    return None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` (a Trainer `checkpoint-N`) cannot be resumed from, or None if it is complete: its
    weights, `optimizer.pt`, `scheduler.pt`, `rng_state*.pth` and `trainer_state.json` are all there and
    readable (safetensors sizes match their headers, torch files are whole zip archives, the state parses).
    Under DeepSpeed (`is_deepspeed_checkpoint`) DeepSpeed's checkpoint replaces `optimizer.pt` and `scheduler.pt`
    (`deepspeed_state_problem`; a `scheduler.pt` there, transformers' own scheduler, is checked too)."""
    folder = Path(folder)
    deepspeed = is_deepspeed_checkpoint(folder)
    weights = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    missing = [n for n in TRAINER_FILES if not (folder / n).is_file() and not (deepspeed and n.endswith(".pt"))]
    if not weights:
        missing.insert(0, "weights (" + " | ".join(WEIGHT_FILES[:3]) + ")")
    if not any(folder.glob("rng_state*.pth")):
        missing.append("rng_state.pth")
    if missing:
        return "missing " + ", ".join(missing)
    for w in weights:
        if w.name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(w.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError) as e:
                return f"{w.name} unreadable ({e.__class__.__name__})"
            problems = [_safetensors_problem(folder / s) if (folder / s).is_file() else f"missing {s}" for s in shards]
        elif w.suffix == ".safetensors":
            problems = [_safetensors_problem(w)]
        else:
            problems = [_torch_file_problem(w)]
        if any(problems):
            return next(p for p in problems if p)
    problem = deepspeed_state_problem(folder) if deepspeed else None
    if problem:
        return problem
    for f in (*(folder / n for n in TRAINER_FILES if n.endswith(".pt") and (folder / n).is_file()),
              *sorted(folder.glob("rng_state*.pth"))):
        problem = _torch_file_problem(f)
        if problem:
            return problem
    try:
        int(json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"trainer_state.json unreadable ({e.__class__.__name__})"
    return None


def last_complete_checkpoint(checkpoint_root: str | os.PathLike) -> Path | None:
    """The newest `checkpoint-N` under `checkpoint_root` that is complete (`checkpoint_problem`). The
    candidates are transformers' (`trainer_utils.get_last_checkpoint` picks the newest of them, complete
    or not); each newer incomplete one is reported (a warning naming what is wrong) and skipped."""
    from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

    root = Path(checkpoint_root)
    if not root.is_dir() or get_last_checkpoint(str(root)) is None:
        return None
    for candidate in reversed(sort_checkpoints(str(root))):  # newest first; [0] == get_last_checkpoint
        problem = checkpoint_problem(candidate)
        if problem is None:
            return Path(candidate)
        log.warning("%s is incomplete (%s): skipped, not resumed from", candidate, problem)
    log.warning("%s: no complete checkpoint; the run starts from its first step", root)
    return None


def remove_checkpoints(checkpoint_root: str | os.PathLike) -> None:
    """Delete the `checkpoint-N` folders the Trainer wrote under `checkpoint_root` (and its `tmp-checkpoint-N`
    of a save cut short); any other entry (a copy the user keeps there) stays, named in a warning."""
    from unime.data.atomic import warn_left

    root = Path(checkpoint_root)
    if not root.is_dir():
        return
    kept = []
    for p in sorted(root.iterdir()):
        if re.fullmatch(r"(tmp-)?checkpoint-\d+", p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif not p.name.startswith("."):
            kept.append(p.name)
    warn_left(root, kept, "(the run's own checkpoint-N folders were deleted, to start over)")


changed_options = changed_option_keys  # keys (outside `free`) whose values differ
# options every trainer records but a re-run may change: a choice of the machine the run is on, not of the run (one
# started with flash-attention continues with sdpa on a machine without it)
MACHINE_OPTIONS = ("attn_implementation",)


def previous_config(out: str | Path) -> dict[str, Any] | None:
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


PROCESSES_KEY = "processes"  # train_config.json: the number of processes the run was launched on (not an option)


def warn_other_global_batch(out: str | Path, *, batch_size: int, grad_accum: int, processes: int,
                            fixed_by: str | None = None, config=None) -> None:
    """Warn when a run of a per-device `batch_size` continues on another number of `processes` than its
    train_config.json records (`PROCESSES_KEY`): its global batch (per device x processes x accumulation) changes
    from here on. Not refused: resizing a run is legitimate. `fixed_by`: the option that keeps the global batch
    fixed across process counts (the embedder's global_batch), else resuming on the recorded count keeps it. The
    options are named as the user gives them (`unime.options.option_name`: the fields of `config` from Python, the
    flags on the command line)."""
    was = (previous_config(out) or {}).get(PROCESSES_KEY)
    if not isinstance(was, int) or was == processes:
        return
    keep = f"{option_name(config, fixed_by)} keeps it fixed across process counts" if fixed_by else \
        f"resume it with {was} process(es) to keep it"
    log.warning("%s: continuing a run trained at a global batch of %d (%s %d x %d process(es) x %s %d) at %d on %d "
                "process(es) from here on; %s", out, batch_size * was * grad_accum, option_name(config, "batch_size"),
                batch_size, was, option_name(config, "grad_accum"), grad_accum, batch_size * processes * grad_accum,
                processes, keep)


def step_log(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training-loss log rows, one per step (a step logged twice — a resume repeats the log of the
    checkpoint's step — keeps its last row), by step."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in log_history:
        if "loss" in row and "step" in row:
            by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def whole_run_loss(log_history: Sequence[dict[str, Any]]) -> float | None:
    """The mean training loss over every step of the run, from the logged windows (each logged loss is
    the mean since the previous log): sum(loss x window) / steps."""
    rows = step_log(log_history)
    if not rows:
        return None
    total, prev = 0.0, 0
    for r in rows:
        step = int(r["step"])
        total += float(r["loss"]) * (step - prev)
        prev = step
    return total / prev if prev else None


@dataclass
class RunPlan:
    """What a trainer does on (re-)entry into its output folder (`plan_run`)."""

    finished: bool              # an earlier run with the same options finished: nothing to do
    checkpoint: Path | None     # else: the complete checkpoint to continue from (None: from the first step)


def _has_run_state(out: Path, finished_file: str) -> bool:
    """`out` holds something of an earlier run: its finished marker, checkpoints, or final export."""
    return any((out / n).exists() for n in (finished_file, CHECKPOINTS_DIR, *EXPORT_NAMES))


def changed_config_options(before: dict[str, Any], options: dict[str, Any], free: Iterable[str], config) -> list[str]:
    """`changed_options` with what the trainer's `config` (a config dataclass, or None) declares: its defaults
    (an option the earlier run did not record is no change at its default), its `none_means` (an option
    given at what its None stands for is the option unset) and its `aliases` (`--dtype bf16` = `bfloat16`).
    `MACHINE_OPTIONS` are free too."""
    free = {*free, *MACHINE_OPTIONS}
    if config is None:
        return changed_options(before, options, free)
    return changed_options(before, options, free, option_defaults(config), none_meanings(config),
                           option_aliases(config))


def input_fingerprints(config) -> dict[str, list[list[str]]]:
    """{option: [[path, sha1], ...]} of the files `config` declares as inputs (`unime.options.input_files`: the
    records), by content (`file_sha1`, as mining and eval identify theirs); a folder by the files in it. A value
    that names no file (records given in memory) is left out."""
    from unime.data.image_digests import file_sha1

    found: dict[str, list[list[str]]] = {}
    for key, value in (input_files(config) if config is not None else {}).items():
        files: list[Path] = []
        for p in map(Path, value if isinstance(value, (list, tuple)) else [value] if value else []):
            files += [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        if files:
            found[key] = [[str(f), file_sha1(f)] for f in files]
    return found


def changed_inputs(out: str | Path, now: dict[str, list[list[str]]]) -> list[str]:
    """The options (`input_fingerprints`' keys) whose input files differ in content from what the run in `out`
    recorded (an option recorded on one side only, or no record at all: no change)."""
    try:
        before = json.loads((Path(out) / INPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(before, dict):
        return []
    return [k for k in sorted(set(before) & set(now)) if [d for _, d in before[k]] != [d for _, d in now[k]]]


def _rerun_names(config) -> dict[str, str]:
    """The values of a refusal's `{+overwrite}` / `{out}` (`ChangedOptions`): none with a `config`, whose fields they
    are (named from Python by the field, `overwrite=True`, on the command line by the flag); without one, the
    command line's flags."""
    return {} if config is not None else {"+overwrite": "--overwrite", "out": "--out"}


def _changed_inputs_error(out: Path, changed: list[str], now: dict[str, list[list[str]]], config) -> ChangedOptions:
    """The refusal of a run whose input files (`changed`, options of `config`) changed content: each option named
    as the user gives it (`records` from Python, `--records` on the command line), with its files."""
    fields = {f.name for f in dataclasses.fields(config)} if config is not None else set()
    values: dict[str, Any] = {"_out": out, **_rerun_names(config)}
    parts = []
    for i, key in enumerate(changed):
        values[f"_p{i}"] = ", ".join(p for p, _ in now[key])
        parts.append(("{%s}" % key if key in fields else key.replace("{", "{{").replace("}", "}}")) + " {_p%d}" % i)
    return ChangedOptions("{_out} holds a run trained on other input content: %s changed since that run began; pass "
                          "{+overwrite} to start over, or choose another {out}" % "; ".join(parts), config, **values)


def finished_run(out: str | Path, options: dict[str, Any], *, free: Iterable[str], overwrite: bool,
                 finished_file: str, config=None) -> bool:
    """True if `out` holds a finished run with these options (outside `free`) and inputs (`changed_inputs`) and
    not `overwrite`: its finished marker and its export (the card and a model folder) are there. No side effects
    (a trainer may ask before it has resolved every option; `plan_run` decides the rest). `config`: see
    `plan_run`."""
    out = Path(out)
    before = previous_config(out)
    exported = (out / CARD_FILE).is_file() and any((out / d).is_dir() for d in (ADAPTER_DIR, MERGED_DIR))
    return (not overwrite and before is not None and (out / finished_file).is_file() and exported
            and not changed_config_options(before, options, free, config)
            and not changed_inputs(out, input_fingerprints(config)))


# a trainer's options naming the models it reads
INPUT_MODEL_FIELDS = ("model", "embedder", "process_judge")


def refuse_output_over_input(out: str | Path, config) -> None:
    """Raise `UnimeError` if `out` is the folder, or a folder above, of a model the run reads (`INPUT_MODEL_FIELDS`
    of `config`): writing the run there would replace its own input (QA: GRPO --model sftX/merged --out sftX
    --overwrite wrote its merged/ over the SFT model it started from, beside the SFT run's other files)."""
    out_path = Path(out).resolve()
    for name in INPUT_MODEL_FIELDS:
        value = getattr(config, name, None)
        if not value or not Path(str(value)).exists():  # unset, or a hub id
            continue
        model = Path(str(value)).resolve()
        if model == out_path or out_path in model.parents:
            raise _option_refusal(config, "{out} {_out} holds {%s} {_value}: the run would write over the model it "
                                  "reads; choose another {out}" % name, _out=out, _value=value)


def check_run(out: str | Path, options: dict[str, Any], *, free: Iterable[str], overwrite: bool,
              finished_file: str, resume: str | os.PathLike | None = None, config=None) -> RunPlan | None:
    """The refusals of `plan_run` (same arguments), with no side effects: a trainer asks before it reads its data,
    so that a run refused for its options reads nothing, and one refused for its data (read next) has written
    nothing into `out` yet. `RunPlan(True, None)` for a finished run (`finished_run`), else None."""
    return _decide(out, options, free=free, overwrite=overwrite, finished_file=finished_file, resume=resume,
                   config=config)[0]


def _decide(out: str | Path, options: dict[str, Any], *, free: Iterable[str], overwrite: bool, finished_file: str,
            resume: str | os.PathLike | None, config) -> tuple[RunPlan | None, dict | None, list[str], Path | None,
                                                               dict[str, list[list[str]]]]:
    """`check_run`, and what `plan_run` goes on with: the earlier run's options, the changed ones, the explicit
    checkpoint and the input fingerprints."""
    out = Path(out)
    if config is not None:
        refuse_output_over_input(out, config)
    explicit = _explicit_checkpoint(resume, config) if resume is not None else None
    if explicit is None and finished_run(out, options, free=free, overwrite=overwrite, finished_file=finished_file,
                                         config=config):
        return RunPlan(True, None), None, [], None, {}
    before = previous_config(out)
    if before is None and not overwrite and _has_run_state(out, finished_file):
        raise ChangedOptions("{_out} holds checkpoints or outputs of a run whose options are unknown (no %s); pass "
                             "{+overwrite} to start over, or choose another {out}" % CONFIG_FILE, config, _out=out,
                             **_rerun_names(config))
    diff = changed_config_options(before, options, free, config) if before is not None else []
    diff.sort(key=lambda k: k != "stage")  # another kind of run (SFT / GRPO) first: the other keys follow from it
    if diff and not overwrite:
        raise refuse_changed_options(out, before, options, diff, config)
    inputs = input_fingerprints(config)
    changed = changed_inputs(out, inputs) if before is not None and not overwrite else []
    if changed:
        raise _changed_inputs_error(out, changed, inputs, config)
    if (overwrite or before is None) and explicit is not None \
            and (out / CHECKPOINTS_DIR).resolve() in explicit.resolve().parents:
        raise _option_refusal(config, "{resume} {_resume} is one of the checkpoints of {_out}, which {+overwrite} "
                              "discards: copy it elsewhere first, or continue the run without {+overwrite}",
                              _resume=resume, _out=out)
    return None, before, diff, explicit, inputs


def plan_run(out: str | Path, options: dict[str, Any], *, free: Iterable[str], overwrite: bool, finished_file: str,
             resume: str | os.PathLike | None = None, config=None) -> RunPlan:
    """The convention of the module doc for a trainer writing `out` (its checkpoints under
    `out/checkpoints`, `finished_file` written last): finished with the same options → `finished`;
    changed options → `ChangedOptions` naming the keys, unless `overwrite` (start over: the run's
    checkpoints and finished marker are removed, never an entry this command did not write); else the
    last complete checkpoint. `resume` (an explicit checkpoint folder, `--resume CHECKPOINT`) is always the
    one continued from, as transformers' `resume_from_checkpoint`: in a new `out`, with `overwrite`, and over
    a finished run (trained again from it); one that is missing or incomplete is refused first. `config`
    (the trainer's config dataclass): an option the earlier run did not record is no change at its default
    (`option_defaults`), and one given at what its None stands for is the option unset (`none_meanings`); its
    input files (`input_fingerprints`) are recorded in `INPUTS_FILE`, and other content than the run recorded
    is refused like other options. The refusals come first (`check_run`), before anything is written or removed."""
    from unime.outdir import is_main_process, require_replaceable

    out = Path(out)
    finished, before, diff, explicit, inputs = _decide(out, options, free=free, overwrite=overwrite,
                                                       finished_file=finished_file, resume=resume, config=config)
    if finished is not None:
        return finished
    main = is_main_process()  # the one process that owns `out` writes and deletes there; the others only read it
    if overwrite or before is None:  # a new run, or starting over: nothing of an earlier run is resumed or reported
        if diff:
            log.warning("%s: options changed (%s); --overwrite: starting over", out, ", ".join(diff))
        if main:
            for name in (finished_file, CHECKPOINTS_DIR):
                require_replaceable(out, name)
            (out / finished_file).unlink(missing_ok=True)
            remove_checkpoints(out / CHECKPOINTS_DIR)
        checkpoint = explicit
    else:
        if main and (out / finished_file).exists():  # the export of a finished run went missing, or --resume
            require_replaceable(out, finished_file)
            (out / finished_file).unlink()
        checkpoint = explicit or last_complete_checkpoint(out / CHECKPOINTS_DIR)
    if main and (inputs or (out / INPUTS_FILE).exists()):  # what this run trains on, compared by its re-runs
        require_replaceable(out, INPUTS_FILE)
        _write_json(out / INPUTS_FILE, inputs)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    return RunPlan(False, checkpoint)


def _explicit_checkpoint(resume: str | os.PathLike, config=None) -> Path:
    """`--resume CHECKPOINT`: the folder, if it is a complete checkpoint (`checkpoint_problem`), else an error naming
    the option as the user gives it (`_option_refusal`: `resume` from Python, `--resume` on the command line)."""
    path = Path(resume)
    if not path.is_dir():
        raise _option_refusal(config, "{resume} {_resume}: no such checkpoint folder", _resume=resume)
    problem = checkpoint_problem(path)
    if problem:
        raise _option_refusal(config, "{resume} {_resume}: not a complete checkpoint folder ({_problem})",
                              _resume=resume, _problem=problem)
    return path


def _option_refusal(config, template: str, **values) -> UnimeError:
    """A refusal whose `template` names options as `{field}` (other placeholders from `values`): with `config` (the
    trainer's config dataclass), an `OptionError` — `str()` names the fields (`resume`, `overwrite=True`), the
    command line its flags (`unime.cli.failures`); without one, the command line's flags."""
    if config is not None:
        return OptionError(config, template, **values)

    class Flags(dict):
        def __missing__(self, name: str) -> str:
            return "--" + placeholder_field(name)[0].replace("_", "-")  # `{+overwrite}`: the switch given

    return UnimeError(template.format_map(Flags(values)))


def train_or_finish(trainer, checkpoint: Path | None) -> None:
    """`trainer.train`, continuing from `checkpoint`; a checkpoint at the run's last step is only loaded
    (its weights and state: step, log history), with no optimizer step max_steps + 1. The trainer logs at
    the run's last step too (`unime.models.curves.LogLastStep`), and its log dicts go to `logging`, not stdout
    (`unime.models.curves.log_training_dicts`). Under torchrun, a process that fails while
    training tells the others, which end naming it rather than on the lost connection
    (`unime.process_group.sharing_failures`)."""
    from transformers import TrainerState

    from unime.models.curves import LogLastStep, log_training_dicts
    from unime.process_group import sharing_failures

    if not any(isinstance(c, LogLastStep) for c in trainer.callback_handler.callbacks):
        trainer.add_callback(LogLastStep())
    log_training_dicts(trainer)
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json")) if checkpoint else None
    if state is None or not state.max_steps or state.global_step < state.max_steps:
        with sharing_failures():
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        return
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = state
    log.info("%s is the run's last step (%d): exporting it, no further training", checkpoint, state.global_step)
