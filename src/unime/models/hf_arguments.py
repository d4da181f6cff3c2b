"""The Hugging Face trainer arguments of every trainer (embedder, reranker/judge, reasoner SFT, GRPO), built in
one place: the common core here, each trainer's own settings passed through.

`args_cls` is `transformers.TrainingArguments` or a TRL subclass (`SFTConfig`, `GRPOConfig`). The core is
what every trainer sets the same way: checkpoints every `save_steps` steps into `output_dir`, no
reporting integration (`report_to=[]`), the data collators see every column (`remove_unused_columns=False`,
unless a trainer asks otherwise), mixed precision from the compute dtype (`bf16` / `fp16`), and activation
checkpointing (non-reentrant) only when asked for (`gradient_checkpointing_option`: off by default on every device,
TRL's SFTConfig / GRPOConfig default of on included). It lives beside `run_state` and `curves` because both
`unime.train` and `unime.embed_rl` build on it.

Every other field of `args_cls` is open to the user: `--trainer-arg KEY=VALUE` (`TrainerArgOptions`, repeatable,
the value read as YAML) passes it to `args_cls` as is — an experiment tracker (`report_to=wandb`,
`run_name=...`), optimizer details (`adam_beta2=0.95`), `torch_compile=true`, DeepSpeed ZeRO-1/2
(`deepspeed=ds_zero2.json`), ... A key that unime sets from one of its own options, or that its
trainer needs at its own value, is refused with the option to use (`PROTECTED`, and the trainer's `specific`
keywords); an unknown key is refused with the nearest field names, and a value that does not fit the field's annotated
type (`check_trainer_arg_value`: a float field given text or NaN / inf, an int field a fraction, a bool field
anything but true / false) is refused naming the key, before any work. Activation checkpointing is switched by
--gradient-checkpointing alone: `--trainer-arg activation_checkpointing=...` and its deprecated alias
`gradient_checkpointing=...` (which transformers would ignore beside the new name) are refused naming it;
`activation_checkpointing_kwargs=...` (`every_n_layers`, `offload`, ...) goes over unime's `use_reentrant: false`, and
is refused without --gradient-checkpointing, where it would do nothing.

A configuration that shards the parameters across the processes — FSDP (`fsdp=...`, or `accelerate launch` with FSDP)
or DeepSpeed ZeRO-3 — is refused (`refuse_sharded_parameters`): every trainer saves its checkpoints and exports its
model from the module in its own process, whose parameters would then be shards (measured with FSDP2 on the CPU: the
first checkpoint failed in `_save`), and none of it has been run on such a configuration.
"""

from __future__ import annotations

import argparse
import difflib
import enum
import functools
import json
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from unime.errors import OptionError, UsageError
from unime.options import key_value_pairs, option, option_name

# fields of the core that only unime sets: its option's flag (or the reason) for the refusal's message; a trainer's
# config names the option by its own field from Python (`unime_sets_it`)
PROTECTED = {
    "output_dir": "--out", "per_device_train_batch_size": "--batch-size", "gradient_accumulation_steps": "--grad-accum",
    "max_steps": "--steps", "num_train_epochs": "--epochs", "learning_rate": "--lr", "seed": "--seed",
    "data_seed": "--seed", "logging_steps": "--logging-steps", "save_steps": "--save-steps",
    "save_strategy": "unime's checkpoint and resume convention", "use_cpu": "--device", "bf16": "--dtype",
    "fp16": "--dtype", "remove_unused_columns": "the trainer's data collator",
    "activation_checkpointing": "--gradient-checkpointing", "gradient_checkpointing": "--gradient-checkpointing",
    "gradient_checkpointing_kwargs": "--gradient-checkpointing",
}
# what the refusal of a protected key adds after its option: where its settings go instead (`{trainer_arg}`: the
# option, as the refusal names it)
PROTECTED_NOTES = {"gradient_checkpointing_kwargs": "its settings: {trainer_arg} activation_checkpointing_kwargs=..."}
CHECKPOINTING_KWARGS = "activation_checkpointing_kwargs"
# the option behind a trainer's `specific` keywords, where it has one
SPECIFIC_OPTIONS = {
    "optim": "--optim", "max_grad_norm": "--max-grad-norm", "beta": "--beta", "temperature": "--temperature",
    "top_p": "--top-p", "num_generations": "--num-generations", "max_completion_length": "--max-completion-length",
    "loss_type": "--loss-type", "scale_rewards": "--scale-rewards",
}


TRAINER_ARGS_GROUP = "Hugging Face trainer (any other field of its arguments, e.g. a tracker)"


@dataclass
class TrainerArgOptions:
    """`--trainer-arg KEY=VALUE`: a setting of the Hugging Face trainer's arguments that unime has no option for."""

    trainer_arg: list[str] = option(
        help="a field of the trainer's arguments (transformers' TrainingArguments; TRL's SFTConfig / GRPOConfig for "
             "the reasoner) that unime has no option for, value read as YAML, e.g. report_to=wandb, "
             "adam_beta2=0.95 (repeatable; replaces unime's fixed settings, e.g. report_to; a key one of unime's "
             "options sets is refused, naming the option, and so are FSDP and DeepSpeed ZeRO-3)",
        factory=list, action="append", metavar="KEY=VALUE", cli_default=[], group=TRAINER_ARGS_GROUP)


def gradient_checkpointing_option():
    """`--gradient-checkpointing`, the activation-checkpointing switch of every trainer (embedder, reranker / judge,
    reasoner SFT and GRPO): off unless asked for, on every device."""
    return option(False, "trade compute for activation memory: keep only each layer's input and recompute the rest "
                  "in the backward pass (non-reentrant; same losses and weights). Off by default on every device "
                  "(a recipe may turn it on; --no-gradient-checkpointing turns it off); --trainer-arg "
                  "activation_checkpointing_kwargs={every_n_layers: 2} tunes it", action=argparse.BooleanOptionalAction)


def non_reentrant_checkpointing_callback():
    """A trainer callback that keeps every training forward on the activation checkpointing the Trainer switched on.

    Non-reentrant checkpoints (unime's) need none of the forward hooks with which transformers (and TRL, a second
    time, for a PEFT model) make the output of every input embedding require grad — the text's and the vision
    tower's patch embedding. Only reentrant checkpoints need them (they give the parameters inside them no gradient
    otherwise), and the hook on the patch embedding makes a frozen vision tower (LoRA on the language model) a part
    of every backward pass: its blocks back-propagated through for nothing. They are removed as training begins and
    again before every forward of the trained model, as is the checkpointing of each layer put back as the Trainer set
    it up (`every_n_layers`, `offload`, the checkpoint's keywords): TRL's GRPO switches checkpointing off for each
    generation and on again after it, which puts the hooks back and checkpoints every layer with its own keywords."""
    import torch
    from transformers import TrainerCallback

    class NonReentrantCheckpointing(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is None or not args.activation_checkpointing:
                return
            layers = [(m, m.gradient_checkpointing, getattr(m, "_gradient_checkpointing_func", None))
                      for m in model.modules() if hasattr(m, "gradient_checkpointing")]
            non_reentrant = not (args.activation_checkpointing_kwargs or {}).get("use_reentrant")

            def before_forward(module, inputs):
                # a training forward only: generation runs without grad, once per token, and neither the
                # checkpointing nor the input-grad hooks do anything there
                if not torch.is_grad_enabled():
                    return
                for layer, on, func in layers:
                    layer.gradient_checkpointing = on
                    if func is not None:
                        layer._gradient_checkpointing_func = func
                if non_reentrant:
                    remove_input_grad_hooks(module)

            before_forward(model, ())
            old = getattr(model, "_unime_checkpointing_hook", None)
            if old is not None:  # training begins again (another train() of the same model)
                old.remove()
            model._unime_checkpointing_hook = model.register_forward_pre_hook(before_forward)

    return NonReentrantCheckpointing()


def remove_input_grad_hooks(model) -> None:
    """Remove transformers' and PEFT's input-require-grad forward hooks (`INPUT_GRAD_HOOKS`) from `model`."""
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "") in INPUT_GRAD_HOOKS:
                del module._forward_hooks[key]


# the names of transformers' (`PreTrainedModel.enable_input_require_grads`) and PEFT's input-grad hooks
INPUT_GRAD_HOOKS = ("make_inputs_require_grads", "make_inputs_require_grad")


def user_trainer_args(args_cls: type, pairs: Sequence[str], unime_keys: Mapping[str, str | None],
                      config=None) -> dict[str, Any]:
    """`--trainer-arg` strings → keywords of `args_cls`, checked: each key a field of `args_cls` and not one that
    unime sets (`PROTECTED`, or among `unime_keys`: the trainer's own settings → the option behind each, or None).
    TrainerArgValueError (a UsageError) naming the key: `--trainer-arg KEY: ...` on the command line,
    `trainer_arg['KEY']: ...` from Python; the option unime sets it from named as the user gives it
    (`unime_sets_it`, by `config`: the trainer's config dataclass or its class)."""
    extra: dict[str, Any] = {}
    for pair in pairs or []:
        try:
            extra.update(key_value_pairs([pair], "--trainer-arg"))
        except ValueError:
            raise TrainerArgValueError(None, f"expects KEY=VALUE, got {pair!r}") from None
    known = {f.name for f in fields(args_cls) if f.init}
    for key in extra:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise TrainerArgValueError(key, f"{args_cls.__name__} has no field {key!r}{hint}")
        if key in PROTECTED or key in unime_keys:
            raise unime_sets_it(key, PROTECTED.get(key) or unime_keys.get(key) or SPECIFIC_OPTIONS.get(key), config)
        extra[key] = check_trainer_arg_value(args_cls, key, extra[key])
    refuse_sharded_parameters(extra)
    return extra


class TrainerArgValueError(OptionError, UsageError):
    """A `--trainer-arg KEY=VALUE` refused — its value does not fit the field's type, its key is no field, one unime
    sets, or a setting unime does not run (FSDP): named `--trainer-arg KEY` on the command line (after the command,
    as a config's refusal is), `trainer_arg['KEY']` from Python. `key` None: a string that is no KEY=VALUE, named
    `--trainer-arg` / `trainer_arg`. `problem` is literal text; with `config` (the trainer's config dataclass or its
    class, which has `trainer_arg` too), a template naming its options as `OptionError` does (`{lr}`: `lr` from
    Python, `--lr` on the command line)."""

    def __init__(self, key: str | None, problem: str, config=None):
        self.key = key
        super().__init__(TrainerArgOptions if config is None else config,
                         problem if config is not None else problem.replace("{", "{{").replace("}", "}}"))

    def render(self, name_of) -> str:
        flag, problem = name_of("trainer_arg"), OptionError.render(self, name_of)
        if self.key is None:
            return f"{flag} {problem}"
        where = f"{flag} {self.key}" if flag.startswith("--") else f"{flag}[{self.key!r}]"
        return f"{where}: {problem}"


def unime_sets_it(key: str, by: str | None, config=None) -> TrainerArgValueError:
    """The refusal of `--trainer-arg KEY=...` for a field unime sets: "unime sets it (BY)", `by` the flag of the
    option that sets it (`PROTECTED`), or the reason (None: "this trainer's own setting"). With `config` (the
    trainer's config), the option is named as every refusal of a config names it (`OptionError`): its field from
    Python (`lr`, `learning_rate`: the field whose flag `by` is, else the field named `key`, e.g. `max_steps` of the
    reasoner, whose flag is --max-steps), its flag on the command line; without one, or an option the config lacks,
    `by` as written."""
    from unime.options import option_flags

    by = by or "this trainer's own setting"
    note = PROTECTED_NOTES.get(key)
    if config is None:  # as written: the flags
        note = note and note.replace("{trainer_arg}", "--trainer-arg")
        return TrainerArgValueError(key, f"unime sets it ({by}{'; ' + note if note else ''})")
    flags = option_flags(config)
    field = None
    if by.startswith("--"):
        field = next((f for f, flag in flags.items() if flag == by), None) or (key if key in flags else None)
    named = "{%s}" % field if field else by.replace("{", "{{").replace("}", "}}")
    return TrainerArgValueError(key, f"unime sets it ({named}{'; ' + note if note else ''})", config)


@functools.lru_cache(maxsize=None)
def _field_types(args_cls: type) -> dict[str, Any]:
    """{field: its annotation, resolved} of the dataclass `args_cls`. If one of them cannot be resolved (a type
    this environment lacks), each is resolved alone and the ones that cannot be are left out (passed through)."""
    try:
        return typing.get_type_hints(args_cls)
    except Exception:  # noqa: BLE001 - resolved one by one below
        pass
    out: dict[str, Any] = {}
    for klass in reversed(args_cls.__mro__):
        scope = vars(sys.modules.get(klass.__module__, typing))
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            try:
                out[name] = eval(annotation, scope, dict(vars(klass))) if isinstance(annotation, str) else annotation
            except Exception:  # noqa: BLE001 - left out: its values are passed through
                out.pop(name, None)
    return out


def _members(annotation) -> list:
    """The types of a union annotation (`float | None`, `Optional[int]`, `Union[...]`), else `[annotation]`. In a union
    of an enum and `str` (`optim: OptimizerNames | str`, `hub_strategy`, `eval_strategy`, ...), the string is the
    enum's value spelled as text — transformers converts it to the enum and refuses any other — so only the enum's
    values are taken."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [m for a in typing.get_args(annotation) for m in _members(a)]
        if any(isinstance(m, type) and issubclass(m, enum.Enum) for m in members):
            members = [m for m in members if m is not str]
        return members
    return [annotation]


class _Unchecked(Exception):
    """An annotation this check cannot read: the value is passed through as the user gave it."""


def _fit(member, value) -> tuple[bool, Any, str]:
    """(whether `value` fits the type `member`, the value to pass — a number given as text, `1e-8`, as a float —
    and what the type asks for, for the message). _Unchecked for a type not checked here."""
    if member is type(None) or member is None:
        return value is None, value, "null"
    if member is Any:
        raise _Unchecked
    if member is bool:
        return isinstance(value, bool), value, "true or false"
    if member is int:
        return isinstance(value, int) and not isinstance(value, bool), value, "a whole number"
    if member is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return False, value, "a finite number"
        try:
            number = float(value) if isinstance(value, str) else value
            ok = math.isfinite(number)
        except (ValueError, OverflowError):  # text that is no number; an int too large for a float
            ok = False
        return ok, number if ok else value, "a finite number"
    if member is str:
        # text as given; a number or a switch YAML read from it is passed on as before
        return isinstance(value, (str, int, float, bool)), value, "a string"
    if isinstance(member, type) and issubclass(member, enum.Enum):
        choices = [e.value for e in member]
        return isinstance(value, member) or value in choices, value, f"one of {', '.join(map(str, choices))}"
    origin, args = typing.get_origin(member), typing.get_args(member)
    if origin is typing.Literal:
        return value in args, value, f"one of {', '.join(map(str, args))}"
    if member is list or origin is list:
        if not isinstance(value, list):
            return False, value, "a list"
        if not args:
            return True, value, "a list"
        items = [_fit(args[0], v) for v in value]  # _Unchecked passes the list through
        if not all(ok for ok, _, _ in items):
            return False, value, f"a list, each item {_fit(args[0], None)[2]}"
        return True, [passed for _, passed, _ in items], "a list"  # `[1, 1e-3]`: YAML's text '1e-3' as a float
    if member is dict or origin is dict:
        return isinstance(value, dict), value, "a mapping"
    raise _Unchecked


def check_trainer_arg_value(args_cls: type, key: str, value: Any) -> Any:
    """`value` of `--trainer-arg KEY=VALUE` checked against the annotated type of the field `key` of the dataclass
    `args_cls` (TrainingArguments, SFTConfig, GRPOConfig; read from the class, Optional / unions of types included):
    a float field takes a finite number (text that reads as one, `1e-8`, becomes it; `nan`, `.inf` are refused), an
    int field a whole number, a bool field true / false, an enum or Literal field one of its values (an enum-or-text
    field too: `hub_strategy=bogus` is refused listing them, `_members`), a list field items of its item type (`[1,
    1e-3]` of a float list: the text '1e-3' as a float), a str field text. The value to pass on;
    TrainerArgValueError (a UsageError) naming the key if it fits none of them. A field whose annotation this
    cannot check (a class, a nested config) is passed through as given."""
    annotation = _field_types(args_cls).get(key)
    if annotation is None:
        return value
    wanted = []
    try:
        for member in _members(annotation):
            ok, passed, what = _fit(member, value)
            if ok:
                return passed
            wanted.append(what)
    except _Unchecked:
        return value
    asked = " or ".join(dict.fromkeys(wanted))
    raise TrainerArgValueError(key, f"must be {asked}, got {value!r}")


SHARDED_REFUSAL = ("shards the model's parameters across the processes, and unime saves its checkpoints and exports "
                   "its model from each process's own module (which would then hold shards, not the weights): "
                   "train without it (torchrun / accelerate launch then use DDP, each process a whole copy)")


class LaunchSettingError(OptionError, UsageError):
    """A setting of `accelerate launch` (its environment variables) that unime does not run, or cannot read: read,
    as the `--trainer-arg` refusals (`TrainerArgValueError`), after the command's name on the command line
    (`train X: accelerate launch's FSDP ...`). It names no option: the same text from Python."""

    def __init__(self, problem: str):
        super().__init__(TrainerArgOptions, problem.replace("{", "{{").replace("}", "}}"))


def refuse_sharded_parameters(extra: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """UsageError naming the setting if the run would shard the parameters: `--trainer-arg fsdp=...` (any value that
    enables FSDP), `--trainer-arg deepspeed=CONFIG` of ZeRO stage 3, or `accelerate launch`'s FSDP / DeepSpeed ZeRO-3
    (its environment variables, `environ`: os.environ)."""
    environ = os.environ if environ is None else environ
    if extra.get("fsdp") not in (None, False, "", []):
        raise TrainerArgValueError("fsdp", f"{extra['fsdp']!r} {SHARDED_REFUSAL}")
    if extra.get("deepspeed") is not None and _is_zero3(extra["deepspeed"]):
        raise TrainerArgValueError("deepspeed", f"{extra['deepspeed']!r} (ZeRO stage 3) {SHARDED_REFUSAL}")
    if accelerate_flag("ACCELERATE_USE_FSDP", environ):
        raise LaunchSettingError(f"accelerate launch's FSDP (ACCELERATE_USE_FSDP) {SHARDED_REFUSAL}")
    if accelerate_flag("ACCELERATE_USE_DEEPSPEED", environ):
        config = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip() == "3" or (config and _is_zero3(config)):
            raise LaunchSettingError(f"accelerate launch's DeepSpeed ZeRO-3 {SHARDED_REFUSAL}")


def accelerate_flag(key: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `accelerate launch`'s switch `key` (e.g. ACCELERATE_USE_DEEPSPEED) is on in `environ` (os.environ), by
    accelerate's own rule (`accelerate.utils.str_to_bool`, as its `parse_flag_from_env`: 1, true, yes, on, y, t in any
    case); a value accelerate cannot read is refused naming it."""
    from accelerate.utils import str_to_bool

    environ = os.environ if environ is None else environ
    try:
        return bool(str_to_bool(environ.get(key, "false")))
    except ValueError:
        raise LaunchSettingError(f"{key}={environ[key]!r}: accelerate reads 1 / 0, true / false, yes / no or on / "
                                 "off") from None


def deepspeed_setting(extra: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> str | None:
    """The setting that runs the trainer under DeepSpeed, as the user gave it (`option_name`): `--trainer-arg
    deepspeed=CONFIG` in a command, `trainer_arg` from Python (among
    the `extra` keywords) or `accelerate launch`'s DeepSpeed (ACCELERATE_USE_DEEPSPEED in `environ`: os.environ);
    None without DeepSpeed."""
    if extra.get("deepspeed") is not None:
        return f"{option_name(None, 'trainer_arg')} deepspeed={extra['deepspeed']}"
    if accelerate_flag("ACCELERATE_USE_DEEPSPEED", environ):
        return "accelerate launch's DeepSpeed (ACCELERATE_USE_DEEPSPEED)"
    return None


def _is_zero3(config: Any) -> bool:
    """Whether a DeepSpeed config — a mapping, a JSON string or a JSON file's path — has `zero_optimization.stage` 3
    (one that cannot be read is not: DeepSpeed then reports it itself)."""
    if isinstance(config, str):
        try:
            config = json.loads(Path(config).read_text(encoding="utf-8") if os.path.isfile(config) else config)
        except (OSError, ValueError):
            return False
    section = config.get("zero_optimization") if isinstance(config, Mapping) else None
    return isinstance(section, Mapping) and str(section.get("stage")).strip() == "3"


def hf_training_arguments(args_cls: type, *, output_dir: Any, batch_size: int, learning_rate: float, seed: int,
                          logging_steps: int, save_steps: int, save_total_limit: int | None, use_cpu: bool,
                          bf16: bool = False, fp16: bool = False, grad_accum: int = 1, max_steps: int = -1,
                          epochs: float = 1.0, warmup_steps: float = 0, weight_decay: float = 0.0,
                          lr_scheduler: str = "linear", data_seed: int | None = None, workers: int = 0,
                          activation_checkpointing: bool = False, show_progress: bool | None = None,
                          trainer_arg: Sequence[str] = (), option_keys: Mapping[str, str] | None = None,
                          check_only: bool = False, config=None, **specific: Any):
    """`args_cls(...)` with the common core, the trainer's `specific` keywords (`optim`, `beta`, ...) and the
    user's `--trainer-arg` strings (`user_trainer_args`: they override the core's other settings, e.g. `report_to`,
    except the ones this trainer takes from its options: `option_keys`, field → option, e.g. `{"warmup_steps":
    "--warmup"}`). `config`: the trainer's config (a dataclass or its class), by whose fields a refusal names the
    options from Python (`unime_sets_it`); without it, by their flags.

    `max_steps=-1`: train `epochs` epochs. `data_seed=None`: the data order follows `seed`.
    `show_progress=None` leaves the progress bars to transformers' own rule (its logging level).
    `check_only`: only check the `--trainer-arg` strings (a UsageError), build nothing and return None — what a
    trainer does before it claims its output folder, so that a refused run writes nothing there."""
    user = user_trainer_args(args_cls, trainer_arg, {**dict.fromkeys(specific), **(option_keys or {})}, config)
    checkpointing_kwargs = {"use_reentrant": False} if activation_checkpointing else None
    if CHECKPOINTING_KWARGS in user:  # the user's settings over unime's non-reentrant default
        given = user.pop(CHECKPOINTING_KWARGS)
        if not activation_checkpointing:
            raise TrainerArgValueError(CHECKPOINTING_KWARGS, "has no effect without " + (
                "{gradient_checkpointing}" if config is not None else "--gradient-checkpointing"), config)
        if not isinstance(given, Mapping):
            raise TrainerArgValueError(CHECKPOINTING_KWARGS, f"must be a mapping, e.g. {{every_n_layers: 2}}, got "
                                                             f"{given!r}")
        checkpointing_kwargs = {**checkpointing_kwargs, **given}
    if check_only:
        return None
    core = dict(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
        max_steps=max_steps, num_train_epochs=epochs, learning_rate=learning_rate, lr_scheduler_type=lr_scheduler,
        warmup_steps=warmup_steps, weight_decay=weight_decay, seed=seed, data_seed=data_seed,
        # the first step logged too: a run shorter than `logging_steps` would log only its last step, and its
        # "loss first -> last" would be one number twice
        logging_steps=logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=save_steps, save_total_limit=save_total_limit,
        report_to=[], use_cpu=use_cpu, bf16=bf16, fp16=fp16, dataloader_num_workers=workers,
        activation_checkpointing=activation_checkpointing,
        activation_checkpointing_kwargs=checkpointing_kwargs,
        disable_tqdm=None if show_progress is None else not show_progress,
        remove_unused_columns=False)
    return args_cls(**{**core, **specific, **user})


def process_device(args) -> str:
    """The device this process of a training run loads its models on: the one its Hugging Face arguments `args`
    give it — cuda:LOCAL_RANK for each process under torchrun / accelerate launch, cuda:0 for one process, cpu
    with `use_cpu`. Every trainer builds its arguments first and loads there: a model loaded on --device's plain
    "cuda" before them sits on GPU 0 in every process (the Trainer later moves the model it trains, but every
    process has first filled GPU 0, and the frozen models it is not given — GRPO's reward embedder and judge —
    stay there)."""
    return str(args.device)
