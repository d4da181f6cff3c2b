"""LoRA for every fine-tuning stage (embedder, reranker / judge, reasoner SFT, GRPO): the settings, the
default of each path, and the one place a PEFT adapter is put on a model (`apply_lora`, `lora_config`) — or,
when the model loaded already is one, not put on it (`model_to_train`, every trainer's one rule).

Targets are module names matched inside the language model only (`.*language_model.*\\.(names)`; all-linear:
every linear layer of the language model), unless `vision=True`: Qwen2.5-VL's vision blocks use the decoder's MLP
names (gate_proj, up_proj, down_proj), so bare names would adapt the vision tower too. Modules trained in full
beside LoRA go in `modules_to_save` (e.g. `lm_head`).
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass
from typing import Any, Sequence

from unime.errors import ModelError, OptionError, UsageError
from unime.options import RangeChecked, option

log = logging.getLogger(__name__)

# A module of the language model, by its name (full match); the vision tower is `model.visual`.
_IN_LANGUAGE_MODEL = ".*language_model.*"
# The decoder's projections.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: int
    dropout: float
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    dora: bool = False
    vision: bool = False  # also adapt the vision tower's matching layers

    @classmethod
    def from_options(cls, opts: Any) -> "LoraSettings":
        """From a stage config's `lora_r`, `lora_alpha`, `lora_dropout`, `lora_targets` and, if it has them,
        `lora_vision` and `dora`."""
        return cls(r=opts.lora_r, alpha=opts.lora_alpha, dropout=opts.lora_dropout, targets=tuple(opts.lora_targets),
                   dora=getattr(opts, "dora", False), vision=getattr(opts, "lora_vision", False))

    @classmethod
    def from_peft_config(cls, config: dict[str, Any]) -> "LoraSettings":
        """The settings of a PEFT adapter, from its adapter_config.json (or a loaded `LoraConfig.to_dict()`): the
        inverse of `lora_config` for an adapter unime made (its target pattern back to names and `vision`); another
        tool's list of names as given."""
        targets = config.get("target_modules") or ()
        vision = False
        if isinstance(targets, str):
            made_here = re.fullmatch(r"(.*)\\\.\(([^()]*)\)", targets)  # `target_modules`: PREFIX\.(a|b|...)
            vision, targets = (made_here[1] == ".*", made_here[2].split("|")) if made_here else (False, [targets])
        return cls(r=int(config.get("r") or 0), alpha=config.get("lora_alpha"),
                   dropout=float(config.get("lora_dropout") or 0.0), targets=tuple(sorted(targets)),
                   dora=bool(config.get("use_dora")), vision=vision)

    @classmethod
    def of_peft_model(cls, model) -> "LoraSettings":
        """The settings of a loaded PEFT model's active adapter (`from_peft_config`): what a run that continued an
        adapter trained with (`model_to_train`), for its model card."""
        return cls.from_peft_config(model.peft_config[model.active_adapter].to_dict())

    @property
    def all_linear(self) -> bool:
        return tuple(self.targets) == ("all-linear",)

    def target_modules(self) -> str | list[str]:
        """PEFT `target_modules`: 'all-linear', or a regex over module names (full match)."""
        if self.all_linear:
            return "all-linear"
        names = "|".join(sorted({t.strip() for t in self.targets if t.strip()}))
        if not names:
            raise ValueError("no LoRA target modules given")
        if self.vision:
            return rf".*\.({names})"
        return rf"{_IN_LANGUAGE_MODEL}\.({names})"

    def exclude_modules(self) -> str | None:
        """PEFT `exclude_modules`: 'all-linear' without `vision` leaves out every module outside the language model
        (PEFT's own all-linear, which also leaves out lm_head, would adapt the vision tower)."""
        return rf"(?!{_IN_LANGUAGE_MODEL}).*" if self.all_linear and not self.vision else None


# The defaults of each path, as they have always been: the embedder's (`unime train embedder`) differ from
# the generative paths' (`unime train reranker|judge`, `unime train reasoner sft|grpo`).
EMBEDDER_LORA = LoraSettings(r=16, alpha=64, dropout=0.1)
GENERATIVE_LORA = LoraSettings(r=16, alpha=32, dropout=0.05)



def lora_options(preset: LoraSettings) -> type:
    """The LoRA options of a trainer config (`--lora-r` ... `--dora`), with `preset`'s defaults."""

    @dataclass(kw_only=True)
    class LoraOptions(RangeChecked):
        # 0: no LoRA — the reasoner's stages (which redeclare it) train every weight; a config with a `full` switch
        # (the embedder, the reranker) takes 0 only with it (`check_together`)
        lora_r: int = option(preset.r, "LoRA rank (default %(default)s; UniME-V2's reranker: 128)", at_least=0)
        lora_alpha: int = option(preset.alpha, "LoRA alpha (default %(default)s)", above=0)
        lora_dropout: float = option(preset.dropout, "LoRA dropout (default %(default)s)", at_least=0, below=1)
        lora_targets: tuple[str, ...] = option(preset.targets, "comma-separated module names (decoder only unless "
                                               "--lora-vision), or all-linear", cli_default=",".join(preset.targets))
        lora_vision: bool = option(False, "also adapt the vision tower's layers named in --lora-targets (vision "
                                   "block names: Qwen2-VL qkv,proj,fc1,fc2; Qwen2.5-VL qkv,proj,gate_proj,up_proj,"
                                   "down_proj; Qwen3-VL qkv,proj,linear_fc1,linear_fc2)")
        dora: bool = option(False, "DoRA instead of plain LoRA (the UniME-V2 release uses DoRA)",
                            action=argparse.BooleanOptionalAction)

        def __post_init__(self) -> None:
            if isinstance(self.lora_targets, str):  # as typed: comma-separated (before the checks: a tuple)
                self.lora_targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
            super().__post_init__()
            self.lora_targets = tuple(self.lora_targets)

        def check_together(self) -> None:
            super().check_together()
            if self.lora_r == 0 and getattr(self, "full", None) is False:  # PEFT takes no rank 0
                raise OptionError(self, "{lora_r} must be >= 1 (0 only with {full}, which trains every weight), "
                                  "got 0")

    return LoraOptions


EMBEDDER_LORA_OPTIONS = lora_options(EMBEDDER_LORA)
GENERATIVE_LORA_OPTIONS = lora_options(GENERATIVE_LORA)

def lora_config(settings: LoraSettings, *, modules_to_save: Sequence[str] = (), task_type: str | None = None):
    """The PEFT `LoraConfig` of `settings` (for trainers that apply it themselves, e.g. TRL's `peft_config`)."""
    from peft import LoraConfig

    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules(), exclude_modules=settings.exclude_modules(),
                      use_dora=settings.dora, bias="none",
                      modules_to_save=list(modules_to_save) or None, task_type=task_type)


def apply_lora(model, settings: LoraSettings, *, modules_to_save: Sequence[str] = (), task_type: str | None = None):
    """Wrap a `*ForConditionalGeneration` model with a trainable PEFT LoRA (or DoRA) adapter; the modules in
    `modules_to_save` are trained in full beside it. `task_type="CAUSAL_LM"` for the generative stages."""
    from peft import get_peft_model

    if settings.r < 1:
        raise UsageError(f"--lora-r must be >= 1, got {settings.r}")
    try:
        peft_model = get_peft_model(model, lora_config(settings, modules_to_save=modules_to_save, task_type=task_type))
    except ValueError as e:  # PEFT: "Target modules ... not found in the base model"
        raise UsageError(f"LoRA targets {list(settings.targets)} matched no module of {type(model).__name__}: {e}") \
            from None
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    if settings.vision and all("language_model" in n for n in adapted):
        raise _no_vision_target(settings, type(model).__name__)
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise UsageError(f"LoRA targets {list(settings.targets)} matched no module of {type(model).__name__}")
    return peft_model


def _no_vision_target(settings: LoraSettings, model_class: str) -> UsageError:
    return UsageError(f"--lora-vision: the targets {list(settings.targets)} match no vision-tower module of "
                      f"{model_class} (vision blocks: Qwen2-VL qkv, proj, fc1, fc2; Qwen3-VL qkv, "
                      "proj, linear_fc1, linear_fc2)")


def refuse_lora_vision_without_vision_targets(source: str | None, settings: LoraSettings) -> None:
    """`apply_lora`'s refusal of --lora-vision with targets that name no module of the vision tower, asked before
    any model is loaded (it came after the whole checkpoint had loaded: a minute or more on CPU): the module names
    of the --model folder's architecture, built from its config.json alone on the meta device. A trainer's config
    checks it in its `validate`. Not decided here (left to `apply_lora`): all-linear, a hub id, a PEFT adapter (its
    own LoRA settings are trained on), a config no model class is built from."""
    from pathlib import Path

    from unime.models.loading import is_peft_adapter, trained_model_folder

    if not settings.vision or settings.all_linear or not source:
        return
    folder = trained_model_folder(source)
    if is_peft_adapter(folder) or not (Path(folder) / "config.json").is_file():
        return
    try:
        import torch
        from transformers import AutoConfig

        from unime.models.known_checkpoints import meta_model

        with torch.device("meta"):
            model = meta_model(AutoConfig.from_pretrained(folder))
    except Exception:  # noqa: BLE001 - an architecture not built here is checked after loading, as before
        log.debug("--lora-vision targets of %s not checked before loading", source, exc_info=True)
        return
    pattern = re.compile(settings.target_modules())
    names = [n for n, m in model.named_modules() if not list(m.children()) and pattern.fullmatch(n)]
    if all("language_model" in n for n in names):
        raise _no_vision_target(settings, type(model).__name__)


def _merge_first(source: str, full_option: str) -> ModelError:
    return ModelError(f"full fine-tuning ({full_option}) of the adapter folder {source}: merge it first (its "
                      "merged/ folder), or keep training the adapter itself with LoRA")


def refuse_full_fine_tuning_of_adapter(source: str | None, full_option: str = "--full") -> None:
    """`model_to_train`'s refusal of full fine-tuning (`full_option`) of a PEFT adapter, asked of the --model path
    before any model is loaded: an adapter folder, a run folder holding only its adapter/, or a hub id whose
    adapter_config.json names it an adapter (`hub_adapter_config`). A trainer's config checks it in its `validate`,
    before the run writes in its output folder (the refusal came after, and a retry with the merged model was
    refused as a folder holding a run with other options)."""
    from unime.models.loading import hub_adapter_config, is_peft_adapter, trained_model_folder

    if not source:
        return
    if is_peft_adapter(trained_model_folder(source)):
        raise _merge_first(source, full_option)
    hub = hub_adapter_config(source)
    if hub is not None:
        raise ModelError(f"full fine-tuning ({full_option}) of {source}, a PEFT adapter of the hub on "
                         f"{hub.get('base_model_name_or_path')}: merge it into its base first and give the merged "
                         "folder as --model")


def model_to_train(model, settings: LoraSettings | None, *, source: str, full_option: str = "--full",
                   modules_to_save: Sequence[str] = (), task_type: str | None = None):
    """The model a trainer trains, from the one it loaded from `source` (its --model) — every trainer's rule:

    - `settings` None (full fine-tuning, chosen by `full_option`): every parameter. A PEFT model (an adapter
      folder, or a run folder holding only its adapter/) is refused: its merged form is the model to give;
    - a PEFT model: its adapter is trained on, as loaded (`load_model(..., trainable=True)`), on the adapter's own
      base and its own LoRA settings; `settings` are not used (the commands refuse LoRA options given with an
      adapter: `unime.cli.train.refuse_lora_options_on_an_adapter`). A second LoRA nested in it is what TRL's
      trainers cannot run (the reasoner's SFT failed on its outputs, GRPO refuses a PEFT model with a `peft_config`)
      and what loads on no base;
    - else: `apply_lora(model, settings, ...)` (seed the RNG first for a reproducible initialisation)."""
    from unime.models.run_state import is_peft

    if settings is None:
        if is_peft(model):  # refused before loading too, from the --model path (`refuse_full_fine_tuning_of_adapter`)
            raise _merge_first(source, full_option)
        return model.requires_grad_(True)
    if is_peft(model):
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"{source}: the adapter was loaded frozen; load it with trainable=True to train it")
        log.info("%s is a PEFT adapter: continuing to train it with its own LoRA settings", source)
        return model
    return apply_lora(model, settings, modules_to_save=modules_to_save, task_type=task_type)
