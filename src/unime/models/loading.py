"""Loading Hugging Face vision-language checkpoints (plain folders, hub ids, or PEFT adapter folders)."""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from unime.errors import UsageError
from unime.models.adapters import FamilyAdapter, adapter_for
from unime.models.image_budget import ImageBudget, resolve_budget
from unime.models.item_format import ItemFormatOptions
from unime.options import RangeChecked, option

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"  # what makes a folder (or a hub repo) a PEFT adapter
# what a hub adapter's snapshot needs to load as an adapter folder (`adapter_folder`): the folder unime writes (the
# adapter, its processor and chat template, README.md and unime_*.json: `unime.models.export`), and another tool's
# tokenizer / processor files; not the rest of its repo (a merged model, checkpoints: gigabytes)
ADAPTER_FOLDER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin", "tokenizer*",
                        "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                        "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                        "chat_template.json", "chat_template.jinja", "additional_chat_templates/*", "README.md",
                        "unime_*.json")


ATTN_IMPLEMENTATION_HELP = ("the models' attention kernel, as transformers names it: sdpa, eager, flash_attention_2 "
                             "(GPU, pip install flash-attn), flash_attention_3, flex_attention ... (default: "
                             "transformers' own, sdpa where the model supports it)")


def attn_implementation_option(help: str = ATTN_IMPLEMENTATION_HELP):
    """`--attn-implementation NAME` (transformers' `attn_implementation`, `load_model`), beside `--device` wherever
    a command loads a model. Any string parses (transformers' names change between versions, and parsing a command
    line does not import it); one the model cannot use is refused before it loads (`check_attn_implementation`)."""
    return option(None, help, metavar="NAME")


@dataclass(kw_only=True)
class DeviceOptions:
    """`--device` and `--attn-implementation`, shared by the commands that load a model."""

    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda if present)")
    attn_implementation: str | None = attn_implementation_option()


# the `--dtype` spellings of every command (`dtype_option`, `resolve_dtype`): each short name with torch's long name
# as its alias (--dtype bf16 = --dtype bfloat16); auto = the command's own choice (the device's, mostly)
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def dtype_choices(names: Sequence[str] = tuple(DTYPE_ALIASES)) -> list[str]:
    """auto, then each of the short dtype `names` followed by its long alias (`DTYPE_ALIASES`)."""
    return ["auto", *(spelling for name in names for spelling in (name, DTYPE_ALIASES[name]))]


def canonical_dtype(value: Any) -> Any:
    """A `--dtype` value by the name it spells: a long alias as its short name (`DTYPE_ALIASES`: bfloat16 → bf16),
    any other value (a short name, auto, None) as it is. What a run's identity hashes, so that one setting under
    either spelling is one run."""
    return next((short for short, long in DTYPE_ALIASES.items() if value == long), value)


def dtype_option(default: str | None = "auto", auto: str = "bf16 on GPU, fp32 on CPU", *, before: str = "",
                 after: str = "", names: Sequence[str] = tuple(DTYPE_ALIASES)):
    """`--dtype`, the same option on every command: the spellings of `dtype_choices(names)`, checked when the command
    line (or a --config file) is parsed, a value kept as given (a re-run's comparison with the options a run
    recorded reads the long name as the short one: `option(aliases=)`); the help ("`before`auto (`auto`), fp32
    (= float32), ...`after`") lists them all."""
    spelled = ", ".join(f"{name} (= {DTYPE_ALIASES[name]})" for name in names)
    return option(default, f"{before}auto ({auto}), {spelled}{after}", choices=dtype_choices(names), metavar="DTYPE",
                  aliases={DTYPE_ALIASES[name]: name for name in names})


@dataclass(kw_only=True)
class EmbedderOptions(DeviceOptions, ItemFormatOptions, RangeChecked):
    """`--device`, `--dtype`, `--batch-size`, `--item-format`: how the commands that encode with an embedder load
    and run it."""

    dtype: str = dtype_option()
    batch_size: int = option(16, "items per encoder forward pass", at_least=1)


def resolve_device(device: str | Any | None = None) -> str:
    """The device to run on: `device` (a string or a `torch.device`), checked against this machine — a device
    torch does not know, a CUDA device the machine does not have, or another accelerator whose backend torch does
    not have here (mps, xpu, ...; `meta` holds no weights) is a `UsageError` naming it —, else cuda when present,
    else cpu."""
    import torch

    if device is None or device == "":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"{device_given(device, quoted=True)} is not a torch device (cpu, cuda, cuda:N, mps)") \
            from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{device_given(device)}: torch sees no CUDA device on this machine (use "
                             f"{device_given('cpu')})")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"{device_given(device)}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type != "cpu" and not _backend_available(parsed.type):  # mps: torch failed in `Module.to` (QA)
        raise UsageError(f"{device_given(device)}: torch has no {parsed.type} device on this machine (use "
                         f"{device_given('cpu')})")
    return device


def device_given(device: Any, *, quoted: bool = False) -> str:
    """The device option as the user gave it (`unime.options.as_given`): `--device cuda` in a command of `unime`
    (`quoted`: `--device 'cuda'`), `device='cuda'` from the Python API (QA: "--device", a flag, from Python)."""
    from unime.options import as_given

    value = str(device)
    return as_given(f"--device {value!r}" if quoted else f"--device {value}", f"device={value!r}")


def _backend_available(kind: str) -> bool:
    """Whether torch has a device of the type `kind` (not cpu or cuda) here: mps by `torch.backends.mps`, another
    by its module's `is_available()` (`torch.xpu`); a type without one (meta, a backend not built in) is not."""
    import torch

    if kind == "mps":
        return bool(torch.backends.mps.is_available())
    is_available = getattr(getattr(torch, kind, None), "is_available", None)
    return bool(is_available()) if callable(is_available) else False


def free_dropped_models() -> None:
    """Give back the memory of models the caller has just dropped every reference to, before the next model loads:
    collect them now (a model caught in a reference cycle would otherwise wait for the garbage collector) and, when
    CUDA is in use, return the caching allocator's freed blocks to the device (`torch.cuda.empty_cache`)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def trainer_device(device: str | None) -> str:
    """The device of a Trainer run (`resolve_device`). The Trainer puts one process on cuda:0, or on cuda:LOCAL_RANK
    under torchrun, and cannot be sent to another index: `cuda:N` with N > 0 is refused, naming the way to pick
    the GPU (CUDA_VISIBLE_DEVICES), rather than trained on another device than the one asked for."""
    resolved = resolve_device(device)
    if resolved.startswith("cuda:") and resolved != "cuda:0":
        raise UsageError(f"{device_given(resolved)}: a training run uses the device its process is given (cuda:0, "
                         f"one per process under torchrun); choose the GPU with CUDA_VISIBLE_DEVICES={resolved[5:]} "
                         f"and {device_given('cuda')}")
    return resolved


class _CheckpointDtype:
    def __repr__(self) -> str:
        return "CHECKPOINT_DTYPE"


# `load_model(dtype=CHECKPOINT_DTYPE)`: the weights in the dtype the (base) checkpoint records (its config's `dtype`,
# else its first floating-point weight's: transformers' `dtype="auto"`), whatever the device. An object, not a
# string: no `--dtype` value (no user's string) can mean it
CHECKPOINT_DTYPE = _CheckpointDtype()


class UnknownDtypeError(UsageError, ValueError):
    """A dtype (`--dtype` value) `resolve_dtype` does not know: the command line's one usage line; a ValueError
    still for the callers that fall back on a dtype they cannot resolve."""


def resolve_dtype(dtype: str | Any | None, device: str):
    import torch

    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {spelling: getattr(torch, long) for short, long in DTYPE_ALIASES.items() for spelling in (short, long)}
    if dtype not in table:
        raise UnknownDtypeError(f"unknown dtype {dtype!r}; choose one of {', '.join(['auto', *table])}")
    return table[dtype]


def training_load_dtype(compute_dtype, *, full: bool):
    """The dtype a trainer loads the model it trains in, every trainer's rule: full fine-tuning keeps fp32 master
    weights, which the optimizer updates, and computes in `compute_dtype` under the trainer's autocast (its Hugging
    Face arguments' `bf16` / `fp16`); LoRA loads its frozen base in `compute_dtype` (peft keeps the adapter in
    fp32). Weights trained in place in bf16 lose the updates below half their ulp: at lr 3e-6 most of them."""
    import torch

    return torch.float32 if full else compute_dtype


def attn_implementations() -> list[str]:
    """The attention implementations the installed transformers registers (`AttentionInterface`: sdpa,
    flash_attention_2, flex_attention, ... and any a user registered), with eager, its built-in one."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]


def check_attn_implementation(name: str | None, device: str, model: str | os.PathLike | None) -> None:
    """Refuse (`ModelError`, one line naming `--attn-implementation` and `model`, if given) an attention
    implementation `model` cannot run with on `device` before its weights load: a name transformers does not know (a
    hub kernel, ORG/REPO[:FUNCTION], is left to transformers), flash_attention_N on a CPU (its kernels run on GPUs),
    or with neither its package nor `kernels` installed (`flash_attention_installed`). None (transformers' default)
    is always fine. The CLI checks it before a command claims its output (`unime.cli.check_attention_option`)."""
    from unime.errors import ModelError

    if name is None:
        return
    where = f"--attn-implementation {name}" + (f" (model {str(model)!r})" if model is not None else "")
    if "/" not in name and name not in (known := attn_implementations()):
        raise ModelError(f"{where}: transformers knows no such attention implementation; choose one of "
                         f"{', '.join(known)}")
    if name.startswith("flash_attention"):
        if device.split(":")[0] in ("cpu", "mps"):
            raise ModelError(f"{where}: FlashAttention needs a GPU, not {device_given(device)} (use sdpa or eager)")
        if not flash_attention_installed(name):
            raise ModelError(f"{where}: its package is not installed (flash_attention_2: pip install flash-attn "
                             "--no-build-isolation; or the kernels package, which fetches a build), or use sdpa")


def flash_attention_installed(name: str) -> bool:
    """Whether transformers can run the flash_attention_N `name` here: its package (flash-attn for 2, flash-attn-3
    for 3, ... by transformers' own check) is installed, or the `kernels` package, from which transformers fetches a
    build of it when the package is missing."""
    from transformers.modeling_flash_attention_utils import FLASH_ATTENTION_COMPATIBILITY_MATRIX
    from transformers.utils import is_kernels_available

    version = name.removeprefix("flash_attention_")
    entry = FLASH_ATTENTION_COMPATIBILITY_MATRIX.get(int(version)) if version.isdigit() else None
    return entry is None or entry["pkg_availability_check"]() or is_kernels_available()


@contextlib.contextmanager
def _naming_the_attention(name: str | None, model: str | os.PathLike):
    """What transformers raises when the model cannot use the attention implementation `name` (the model's class
    lacks support for it, a kernel cannot be fetched or imported: ValueError / ImportError at load) as a one-line
    `ModelError` naming `--attn-implementation` and the model; anything else passes as it is."""
    from unime.errors import ModelError

    try:
        yield
    except (ValueError, ImportError) as e:
        text = " ".join(str(e).split())
        if name is None or not any(w in text.lower() for w in ("attn", "attention", "kernel")):
            raise
        raise ModelError(f"--attn-implementation {name} (model {str(model)!r}): transformers cannot use it "
                         f"({text[:240]})") from None


@contextlib.contextmanager
def without_log_message(logger: str, text: str):
    """The block without the records of the logger named `logger` whose message contains `text`: a library's warning
    that is not true, or moot, as unime uses it. The logger's other records pass."""

    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return text not in record.getMessage()

    target, drop = logging.getLogger(logger), Drop()
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


def grow_embeddings(model, tokenizer) -> bool:
    """Give `model` an embedding row for every token of `tokenizer`: `resize_token_embeddings(len(tokenizer))` (new
    rows by transformers' `mean_resizing`) when the matrix has fewer rows, and nothing otherwise — never shrunk: a
    checkpoint's matrix padded past its vocabulary (Qwen's 151936 rows for 151669 tokens) keeps its rows, and a
    token added to the tokenizer takes one of them. Returns whether the matrix grew."""
    if len(tokenizer) <= model.get_input_embeddings().num_embeddings:
        return False
    model.resize_token_embeddings(len(tokenizer))
    return True


def model_reference(path: str | os.PathLike | None) -> str | None:
    """How a file written to disk (an adapter's config, an index manifest) names a model: an existing local
    folder as an absolute path, so it loads from any working directory; anything else (a hub id) as given."""
    if path is None:
        return None
    p = Path(path)
    return str(p.resolve()) if p.exists() else str(path)


def trained_model_folder(path: str | os.PathLike) -> str:
    """The model folder of a trainer's output folder (`unime.models.export`): its merged/ if it has one, else
    its adapter/; any other path (a model or adapter folder, a hub id) as given."""
    p = Path(path)
    if not p.is_dir() or (p / "config.json").is_file() or (p / "adapter_config.json").is_file():
        return str(path)
    for sub, marker in (("merged", "config.json"), ("adapter", "adapter_config.json")):
        if (p / sub / marker).is_file():
            return str(p / sub)
    return str(path)


@contextlib.contextmanager
def _naming_the_weights(path: str | os.PathLike, what: str = "model", name: str | None = None):
    """A weights file of the folder `path` that safetensors cannot read (cut short: a copy or download cut off) is a
    `ModelError` naming the `what` ("model", "adapter") as `name` (default `path`) and the file."""
    from safetensors import SafetensorError

    from unime.errors import ModelError

    try:
        yield
    except SafetensorError as e:  # not an OSError
        from unime.models.run_state import _safetensors_problem

        folder = Path(path)
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        why = next(filter(None, map(_safetensors_problem, files)), None) or " ".join(str(e).split())[:240]
        raise ModelError(f"{what} {str(name or path)!r}: its weights could not be read ({why})") from None


@contextlib.contextmanager
def _naming_the_model(path: str | os.PathLike):
    """A checkpoint that cannot be found or fetched is a `ModelError` naming it (Hugging Face's own message names
    only the hub it could not reach: every offline command said the same line whatever the model, QA); one whose
    weights file is cut short too (`_naming_the_weights`)."""
    from unime.errors import ModelError

    try:
        with _naming_the_weights(path):
            yield
    except OSError as e:
        where = "no such local folder, and the Hugging Face hub did not give it" if not Path(path).exists() else \
            "its folder could not be read as a model"
        first = " ".join(str(e).split())[:240]
        offline = "; HF_HUB_OFFLINE is set: only the local Hugging Face cache was read" \
            if _hub_offline() and not Path(path).exists() else ""
        raise ModelError(f"model {str(path)!r}: {where} ({first}){offline}") from None


@contextlib.contextmanager
def loading_as(option: str):
    """The `ModelError`s of loading the model an option other than --model gives (`--reranker`, `--judge`,
    `--embedder` ...) name it by that option: `--reranker 'photos': the folder holds no model`, not `model 'photos'`,
    which read as the command's --model (QA)."""
    from unime.errors import ModelError

    try:
        yield
    except ModelError as e:
        text = str(e)
        if not text.startswith("model "):
            raise
        raise ModelError(f"{option} {text[len('model '):]}") from e.__cause__


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub read it at import or as the environment says now."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def refuse_missing_local_model(path: str | os.PathLike, option: str = "model", *, only_mistyped: bool = False) -> None:
    """Refuse, before any work, a model path that names a local folder which is missing or holds no model: one
    that exists (a folder with neither config.json nor adapter_config.json, itself or in a trainer's merged/ or
    adapter/), or one that cannot be a hub id (more than one '/', a leading '.', '/' or '~') or whose first part is
    a local folder (`emb/mergd` where `emb/` exists: a mistyped local path, not a hub id — the hub's retries made
    it wait ~2.5 minutes offline before its error, QA). Anything else may be a hub id (`org/name`, `name`): left to
    the load, which fetches it. `only_mistyped` (the loads themselves): only a missing path whose first part is a
    local folder (an absolute one too) is refused; the rest is left to the load. One message family: `OPTION
    'PATH': no such folder`, with where the path stops existing (`_nearest_existing`). A file is never a model:
    refused either way."""
    from unime.errors import ModelError

    p = Path(path)
    if p.is_file():  # `base/config.json`: huggingface_hub's words for a bad hub id ("Repo id must be ...", QA)
        raise ModelError(f"{option} {str(path)!r}: a file, not a model folder (give the folder that holds the model's "
                         "config.json, or a PEFT adapter's adapter_config.json)")
    if p.exists():
        folder = Path(trained_model_folder(p))
        if not only_mistyped and p.is_dir() and not ((folder / "config.json").is_file() or is_peft_adapter(folder)):
            raise ModelError(f"{option} {str(path)!r}: the folder holds no model (no config.json or "
                             "adapter_config.json, itself or in merged/ or adapter/)")
        return
    text = str(path)
    local = not may_be_hub_id(text)
    typo = len(p.parts) > 1 and Path(p.parts[0]).is_dir()  # its first part is a local folder
    if typo or (local and not only_mistyped):
        hub = "" if local else "; not looked up on the Hugging Face hub, as its first part is a local folder"
        raise ModelError(f"{option} {text!r}: no such folder{_nearest_existing(p)}{hub}")


def may_be_hub_id(path: str | os.PathLike) -> bool:
    """Whether `path` can be a hub id (`org/name`, `name`): not one with more than one '/' or a leading '.', '/' or
    '~' (a local path)."""
    text = str(path)
    return not (text.startswith((".", "/", "~")) or text.count("/") > 1)


@dataclass
class HubProbe:
    """What asking the hub once, without retries, about a hub id learnt (`_probe_hub`): `state` "reachable" (it
    answered: the file, no such file, or another answer, e.g. a server error), "missing" (no such repo, or a private
    one without a token), "gated", "unreachable" (no connection, a timeout) or "unknown" (asking failed otherwise);
    `error` the client's error (None: the file is there); `files` {file name: whether the repo holds it} for each
    file the hub answered for."""

    state: str
    error: BaseException | None = None
    files: dict[str, bool] = field(default_factory=dict)


_HUB_PROBES: dict[str, HubProbe] = {}  # what the hub answered for each hub id in this process: asked once


def _probe_hub(model: str, filename: str = "config.json") -> HubProbe:
    """Whether the hub holds `filename` of hub id `model`, and what that says about the hub and the id
    (`HubProbe`), asked once, without retries: huggingface_hub's backoff (1+2+4+8+8 s) made every command on a hub
    id wait ~23 s on a machine without network before it loaded anything, and transformers' loads ~2.5 minutes (QA).
    Recorded for the process: an id the hub did not answer for (missing, gated, unreachable), or answered for
    `filename` before, is not asked again. The callers check HF_HUB_OFFLINE (`_hub_offline`)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    known = _HUB_PROBES.get(model)
    if known is not None and (known.state != "reachable" or filename in known.files):
        return known
    try:
        get_hf_file_metadata(hf_hub_url(model, filename), retry_on_errors=False)
        probe = HubProbe("reachable", files={filename: True})
    except EntryNotFoundError as e:  # the repo exists without that file (an adapter's repo has no config.json)
        probe = HubProbe("reachable", e, {filename: False})
    except GatedRepoError as e:
        probe = HubProbe("gated", e)
    except RepositoryNotFoundError as e:
        probe = HubProbe("missing", e)
    except HfHubHTTPError as e:  # any other answer (a server error): the hub is there
        probe = HubProbe("reachable", e)
    except Exception as e:  # noqa: BLE001 - the HTTP client's own errors (httpx's, requests'), by name
        probe = HubProbe("unreachable" if _is_network_error(e) else "unknown", e)
    if probe.state != "reachable":
        log.debug("%s: asking the hub for %s: %s (%s)", model, filename, probe.state, probe.error)
    elif known is not None:
        probe.files = {**known.files, **probe.files}
    _HUB_PROBES[model] = probe
    return probe


def _hub_state(model: str) -> HubProbe:
    """What the hub said of hub id `model` in this process, for any file (`_probe_hub`); else its config.json
    asked."""
    return _HUB_PROBES.get(model) or _probe_hub(model)


def refuse_unreachable_hub_model(model: str | os.PathLike) -> None:
    """Refuse, before its first load, a hub id that is neither a local folder nor in the local Hugging Face cache
    (its config.json, or an adapter's adapter_config.json) when the hub cannot be reached or has no such model: the
    hub is asked once, without retries (`_probe_hub`) — transformers' loads retried with backoff, and a command on
    such an id waited ~2.5 minutes on a machine without network before its error (QA). Not asked: a local path,
    HF_HUB_OFFLINE set (only the cache is read: the load says what is missing, or, before any work,
    `refuse_uncached_hub_model_offline`), or an id the hub was already asked about in this process (for its
    adapter_config.json too: `_hub_adapter_config_file`). A cached id is asked the same way, never refused: a hub
    that cannot be reached switches this process to the cache only (`_read_hub_cache_only`). A hub that answers
    changes nothing."""
    from unime.errors import ModelError

    text = str(model)
    if Path(model).exists() or _hub_offline():
        return
    refuse_missing_local_model(model, only_mistyped=True)  # a mistyped local path: not asked of the hub
    try:
        cached = _in_hub_cache(text)
    except ValueError:  # not a repo id: the load says what is missing
        return
    if cached:
        _read_hub_cache_only(text)
        return
    probe = _hub_state(text)
    where = f"model {text!r}: neither a local folder nor in the local Hugging Face cache"
    if probe.state == "gated":
        raise ModelError(f"{where}, and the Hugging Face hub refused it: a gated model (accept its terms on its hub "
                         "page and log in: `hf auth login` or HF_TOKEN)")
    if probe.state == "missing":
        status = getattr(getattr(probe.error, "response", None), "status_code", None)
        code = f" (HTTP {status})" if status else ""
        raise ModelError(f"{where}, and the Hugging Face hub has no such model{code}: check the id, or log in "
                         "(`hf auth login` or HF_TOKEN) if it is a private one")
    if probe.state == "unreachable":
        raise ModelError(f"{where}, and the Hugging Face hub could not be reached ({_first_line(probe.error)}): "
                         "pass a local model folder, fetch it on a machine with network (`hf download "
                         f"{text}`, then copy its cache or folder here), or set HF_HUB_OFFLINE=1 to read only the "
                         "local cache")


def _in_hub_cache(model: str) -> bool:
    """Whether the local Hugging Face cache holds hub id `model` (its config.json, or an adapter's
    adapter_config.json); a ValueError when `model` is no repo id."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(model, name), str) for name in ("config.json", ADAPTER_CONFIG))


def refuse_uncached_hub_model_offline(model: str | os.PathLike, option: str = "model") -> None:
    """Offline (HF_HUB_OFFLINE, `_hub_offline`), refuse a hub id that is neither a local folder nor in the local
    Hugging Face cache (`_in_hub_cache`), or an adapter whose base model is neither, named by `option`: all an
    offline load reads is the cache, and it would fail there, but only when it comes — `unime mine` encoded its
    whole retrieval before its --judge's load failed (QA). Called before any work by a command that loads a model
    late; `refuse_unreachable_hub_model`, which every load calls, leaves an offline hub id to the load. Online:
    nothing (the hub is asked at the load)."""
    if not _hub_offline():
        return
    refuse_missing_local_model(model, option, only_mistyped=True)  # a mistyped local path: said as such
    _refuse_uncached(model, f"{option} {str(model)!r}: ")
    base = (peft_adapter_config(model) or {}).get("base_model_name_or_path")
    if base:
        _refuse_uncached(base, f"{option} {str(model)!r}: its base model {base!r} is ")


def _refuse_uncached(model: str | os.PathLike, named: str) -> None:
    """`refuse_uncached_hub_model_offline`'s refusal of one hub id, offline; its message starts with `named`."""
    from unime.errors import ModelError

    text = str(model)
    if Path(model).exists():
        return
    try:
        cached = _in_hub_cache(text)
    except ValueError:  # not a repo id: the load says what is missing
        return
    if not cached:
        raise ModelError(f"{named}neither a local folder nor in the local Hugging Face cache, which is all that is "
                         f"read while HF_HUB_OFFLINE is set: pass a local model folder, or fetch it (`hf download "
                         f"{text}` on a machine with network, then copy its cache or folder here)")


def _read_hub_cache_only(model: str) -> None:
    """Ask the hub once, without retries, about cached hub id `model` (`_hub_state`); when it cannot be reached,
    switch this process (and its children: torchrun, DataLoader workers) to reading the local Hugging Face cache only,
    as HF_HUB_OFFLINE=1 does, with one warning. Offline with HF_HUB_OFFLINE unset, transformers retried with backoff
    every optional file the cache lacks (chat_template.json, adapter_config.json ...): `unime embed` on a cached id
    took ~5m50s instead of ~22 s (QA). A hub that answers, whatever it answers, changes nothing: the load reads the
    cache and the hub."""
    probe = _hub_state(model)
    if probe.state == "unreachable":  # an answer (404, 401, 5xx) is a hub that is there: only no connection counts
        _set_hub_offline()
        log.warning("the Hugging Face hub cannot be reached (%s): reading %r from the local cache only (set "
                    "HF_HUB_OFFLINE=1 to skip this check)", _first_line(probe.error), model)


def _set_hub_offline() -> None:
    """HF_HUB_OFFLINE=1 for the rest of this process and its children: the environment variable (read at import by
    huggingface_hub, and by datasets, in a child process) and the copies already read in this process —
    huggingface_hub's `constants.HF_HUB_OFFLINE`, which its `is_offline_mode()` returns and transformers asks before
    every download, and datasets' `config.HF_HUB_OFFLINE` when datasets is already imported."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    if (config := sys.modules.get("datasets.config")) is not None:
        config.HF_HUB_OFFLINE = config.HF_DATASETS_OFFLINE = True


def _first_line(error: BaseException) -> str:
    """`Type: its message's first line` (at most 200 characters of it), for a one-line message."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"


def _is_network_error(error: BaseException) -> bool:
    """Whether `error` says the hub could not be reached (no connection, a timeout), not what it answered."""
    names = {c.__name__ for c in type(error).__mro__}
    return isinstance(error, (ConnectionError, TimeoutError)) or bool(
        names & {"TransportError", "TimeoutException", "ConnectionError", "Timeout"})


def _nearest_existing(path: Path) -> str:
    """Where a missing local path stops existing, for its error: its deepest existing folder and that folder's
    entries nearest to the missing part (difflib), or '' when no part of it exists."""
    missing = path.expanduser()
    parent = missing.parent
    while not parent.is_dir() and parent != parent.parent:
        missing, parent = parent, parent.parent
    if not parent.is_dir() or (str(parent) == "." and not str(path).startswith(".")):
        return ""
    names = sorted(e.name for e in parent.iterdir())
    near = difflib.get_close_matches(missing.name, names, n=3, cutoff=0.5)
    found = f"; nearest there: {', '.join(map(repr, near))}" if near else ""
    return f" (the folder {str(parent)!r} exists{found})"


def is_peft_adapter(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _hub_adapter_config_file(model: str) -> str | None:
    """The local copy of the adapter_config.json of hub id `model`, or None (no such file, or no hub id). The local
    cache answers first — a cached file, or a cached "no such file" —, so a cached adapter costs no request; else,
    unless HF_HUB_OFFLINE (`_hub_offline`), the hub is asked once, without retries (`_probe_hub`: not at all when
    it was already asked about `model` in this process and did not answer for it — missing, gated, unreachable —, or
    answered for this file), and the file fetched if it is there."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    try:
        cached = try_to_load_from_cache(model, ADAPTER_CONFIG)
    except ValueError:  # not a repo id (e.g. a missing local path)
        return None
    if cached is not None:
        return cached if isinstance(cached, str) else None  # else the cache knows the file does not exist
    if _hub_offline() or not _probe_hub(model, ADAPTER_CONFIG).files.get(ADAPTER_CONFIG):
        return None  # none, or no hub here: the load says what is missing
    try:
        return hf_hub_download(model, ADAPTER_CONFIG)
    except (HfHubHTTPError, OSError, ValueError, RuntimeError):  # none, or no hub here
        return None
    except Exception as e:  # noqa: BLE001 - the HTTP client's own network errors: the load says what is missing
        log.debug("%s: no adapter_config.json from the hub (%s)", model, e)
        return None


def hub_adapter_config(model: str | os.PathLike) -> dict[str, Any] | None:
    """The adapter_config.json of a hub id that names a PEFT adapter (`_hub_adapter_config_file`: the local cache
    first; else fetched, a small file, as `from_pretrained` fetches it), read before any model is loaded; None for a
    local path, a model that is no adapter, or a hub that cannot be reached (the load then says what is missing)."""
    if Path(model).exists():
        return None
    refuse_missing_local_model(model, only_mistyped=True)  # not asked of the hub
    found = _hub_adapter_config_file(str(model))
    return json.loads(Path(found).read_text()) if found else None


def adapter_folder(model: str | os.PathLike) -> str | None:
    """The local folder of the PEFT adapter `model` names: an adapter folder, a run folder holding only its adapter/
    (`trained_model_folder`), or a hub id whose adapter_config.json names it an adapter (`hub_adapter_config`): its
    snapshot in the local Hugging Face cache, downloaded if need be — the same folder as a local adapter's, so it
    loads as one (transformers' own loading put a hub adapter in the model as a plain model: a LoRA run added a
    fresh LoRA instead of continuing it). Only the files of an adapter folder are fetched (`ADAPTER_FOLDER_FILES`),
    not a merged model or checkpoints the repo also holds. None for any other model."""
    folder = trained_model_folder(model)
    if is_peft_adapter(folder):
        return folder
    if hub_adapter_config(model) is None:
        return None
    from huggingface_hub import snapshot_download

    with _naming_the_model(model):
        return snapshot_download(str(model), allow_patterns=list(ADAPTER_FOLDER_FILES))


def peft_adapter_config(model: str | os.PathLike) -> dict[str, Any] | None:
    """The adapter_config.json (rank `r`, `base_model_name_or_path` ...) of a PEFT adapter given as --model: an
    adapter folder, a run folder holding only its adapter/ (`trained_model_folder`), or a hub id naming an adapter
    (`hub_adapter_config`); None for any other model."""
    folder = trained_model_folder(model)
    if is_peft_adapter(folder):
        return json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
    return hub_adapter_config(model)


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    adapter: FamilyAdapter                    # the family adapter (chat format, image tokens)
    path: str                                 # the folder (or hub id) loaded: a run folder's merged/ or adapter/
    device: str
    dtype: Any
    image_budget: ImageBudget = ImageBudget()
    base_path: str | None = None              # the full model the weights start from (a PEFT adapter's base)
    peft_path: str | None = None              # the PEFT adapter applied on it, if any

    def origin(self) -> dict[str, str | None]:
        """What a trainer records as the model its weights start from (its metadata, model card, and the base its
        exported adapter names): `base_model`, the full model (a run folder's merged/, an adapter's own base — not
        the run folder given as --model), and `started_from_adapter`, the PEFT adapter loaded on it, if any; both
        as `model_reference` writes them."""
        return {"base_model": model_reference(self.base_path), "started_from_adapter": model_reference(self.peft_path)}


def checkpoint_image_loader(paths: str | os.PathLike | Sequence[str | os.PathLike], image_budget: ImageBudget | None,
                            root=None, **kwargs):
    """`ImageBudget.image_loader(root, **kwargs)` for the images the checkpoint(s) `paths` will see, read before
    they load (the budget recorded with each, `image_budget`'s set fields over it): the strictest aspect-ratio limit
    of them, so a command's image check ahead of its models leaves out what any of them would refuse. No path (no
    model sees the images, e.g. the oracle judge): no limit."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        from unime.data.images import ImageLoader

        return ImageLoader(root, **kwargs)
    budgets = [resolve_budget(trained_model_folder(p), image_budget) for p in paths]
    return min(budgets, key=lambda b: b.max_aspect_ratio() or math.inf).image_loader(root, **kwargs)


def load_processor(path: str, *, image_budget: ImageBudget | None = None, budget_from: str | None = None):
    """`AutoProcessor` of a checkpoint with its image budget applied: `image_budget`'s set fields over
    the budget recorded with `budget_from` (default `path`). Returns (processor, effective budget)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    refuse_unusable_processor(processor, path)
    budget = resolve_budget(budget_from or path, image_budget)
    budget.configure(processor)
    return processor, budget


def refuse_empty_tokenizer(tokenizer, path: str | os.PathLike) -> None:
    """Refuse (`ModelError`) the tokenizer of the checkpoint folder `path` when it encodes text to no token: what
    transformers 5 loads from a folder without tokenizer.json (or vocab.json and merges.txt), its special tokens
    alone; the message names the files the folder lacks."""
    from unime.errors import ModelError

    if tokenizer("a b", add_special_tokens=False)["input_ids"]:
        return
    folder = Path(path)
    files = [n for n in ("tokenizer.json", "vocab.json", "merges.txt") if not (folder / n).is_file()]
    lacks = f"; the folder lacks {', '.join(files)}" if folder.is_dir() and files else ""
    raise ModelError(f"model {str(path)!r}: its tokenizer has no vocabulary ({len(tokenizer)} tokens, every text "
                     f"encodes to none){lacks}")


def refuse_unusable_processor(processor, path: str | os.PathLike) -> None:
    """Refuse (`ModelError`, naming the checkpoint `path` and the files it lacks) a processor that loaded but cannot
    serve any command: one without a chat template (every prompt is rendered by it: the run failed at its first
    item, after the weights loaded), or whose tokenizer encodes text to no token (a folder without tokenizer.json,
    or vocab.json and merges.txt: transformers 5 builds a tokenizer of the special tokens alone, and the run
    failed mid-way, "Image features and image tokens do not match", QA)."""
    from unime.errors import ModelError

    folder = Path(path)
    refuse_empty_tokenizer(getattr(processor, "tokenizer", processor), path)
    if not getattr(processor, "chat_template", None):
        lacks = " (the folder holds no chat_template.jinja or chat_template.json)" if folder.is_dir() else ""
        raise ModelError(f"model {str(path)!r}: its processor has no chat template{lacks}; unime renders every "
                         "prompt with it")


def _adapter_key_mapping(model) -> dict[str, Any] | None:
    """peft's `key_mapping` that renames the keys of an adapter saved in an older layout of `model`'s class to its
    layout, by the renamings transformers applies to that class's full checkpoints (`get_model_conversion_mapping`):
    transformers 5's Qwen2-VL / Qwen2.5-VL hold the language model in model.language_model and the vision tower in
    model.visual where an adapter saved on transformers 4 (VLM2Vec's training, older unime, most adapters on the
    hub) says model.layers and visual. None where the class has no renamings, or where peft converts the keys itself
    (a model type with its own conversion mapping: peft's `convert_peft_adapter_state_dict_for_transformers`)."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping, get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    if get_checkpoint_conversion_mapping(model.config.model_type) is not None:
        return None
    renamings = [t for t in get_model_conversion_mapping(model, add_legacy=False) if isinstance(t, WeightRenaming)]
    if not renamings:
        return None
    # peft replaces each pattern's match in the key stripped of its base_model.model. prefix; a whole-key match with
    # a callable replacement (as `re.sub` takes) renames it exactly as transformers renames a checkpoint's key
    return {r"^.+$": lambda key: rename_source_key(key.group(0), renamings, [])[0]}


def load_peft_adapter(model, adapter_path: str, *, trainable: bool, name: str):
    """`model` with the PEFT adapter of the local folder `adapter_path` (given as `name`) loaded on it, its keys in
    an older layout renamed to the model's (`_adapter_key_mapping`). Refused (`ModelError`) when any adapter weight
    of the model is not in the adapter's file: peft only warns, and the model ran as its untrained base."""
    from peft import PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights

    from unime.errors import ModelError

    key_mapping = _adapter_key_mapping(model)
    with _naming_the_weights(adapter_path, "adapter", name):  # adapter_model.safetensors cut short
        model = PeftModel.from_pretrained(model, adapter_path, is_trainable=trainable, key_mapping=key_mapping)
        saved = load_peft_weights(adapter_path, device="cpu", key_mapping=key_mapping)
    wanted = set(get_peft_model_state_dict(model, save_embedding_layers=False))  # the keys peft saves the adapter by
    if missing := sorted(wanted - set(saved)):
        as_saved = dict(zip(saved, load_peft_weights(adapter_path, device="cpu")))  # peft renames key by key, in order
        unmatched = sorted(as_saved[k] for k in saved if k not in wanted)
        more = f" (and {len(unmatched) - 3} more)" if len(unmatched) > 3 else ""
        raise ModelError(f"adapter {name!r} does not fit {type(model.get_base_model()).__name__}: {len(missing)} of "
                         f"the {len(wanted)} adapter weights it puts on the model are not in its file (e.g. "
                         f"{missing[0]}); its keys that match no module: {', '.join(unmatched[:3]) or 'none'}{more}")
    return model


def _checkpoint_paths(path: str | os.PathLike, adapter_path: str | None = None) -> tuple:
    """What `load_model` reads for `path` (and `adapter_path`): (the model folder `trained_model_folder`, the full
    model's path, the PEFT adapter as given or None, the adapter's folder or None, the processor's folder — the
    adapter's when it holds a tokenizer, else the full model's)."""
    # a folder: it must hold a model (a folder without config.json was transformers' ValueError, QA); anything else
    # may be a hub id
    refuse_missing_local_model(path, only_mistyped=not Path(path).is_dir())
    if adapter_path is not None:
        refuse_missing_local_model(adapter_path, "adapter_path", only_mistyped=True)
    path = trained_model_folder(path)
    for model in (path, adapter_path):
        if model is not None:
            refuse_unreachable_hub_model(model)
    base_path, peft_path = path, adapter_path
    if adapter_path is None and (adapter_path := adapter_folder(path)) is not None:  # `path` is an adapter
        peft_path = path  # as given: a hub adapter by its id, not its cache folder
        base_path = json.loads((Path(adapter_path) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
        refuse_unreachable_hub_model(base_path)
    if adapter_path is not None and Path(adapter_path).is_dir() and not any(
            (Path(adapter_path) / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        from unime.errors import ModelError  # peft looked for it on the hub: its error named neither (QA)

        raise ModelError(f"adapter {str(peft_path)!r}: the folder holds no adapter weights (no "
                         "adapter_model.safetensors or adapter_model.bin)")
    proc_path = adapter_path if adapter_path and (Path(adapter_path) / "tokenizer_config.json").is_file() else base_path
    return path, base_path, peft_path, adapter_path, proc_path


def checkpoint_vocabulary(path: str | os.PathLike) -> dict[str, int] | None:
    """The tokenizer's vocabulary of the checkpoint `path` loads with (`load_model`: a trainer's output folder, a
    PEFT adapter's own tokenizer, else its base's), read without the weights; None when the tokenizer cannot be
    read here (not found): the load then says why. A hub id neither cached nor reachable is a `ModelError`
    (`refuse_unreachable_hub_model`), and so is a tokenizer without a vocabulary (`refuse_empty_tokenizer`)."""
    from transformers import AutoTokenizer

    try:
        folder = _checkpoint_paths(path)[4]
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    refuse_empty_tokenizer(tokenizer, folder)  # not "no <emb> token" for a folder without its tokenizer file (QA)
    return tokenizer.get_vocab()


def refuse_unknown_keywords(cls: type, kwargs: dict[str, Any], set_here: tuple[str, ...]) -> None:
    """A TypeError naming the first keyword of `kwargs` — what `cls.from_pretrained` passes on to `cls(...)` —
    that `cls.__init__` does not take, with the keyword meant when one of either method's is close (`devcie` →
    `device`, transformers' `torch_dtype` → `dtype`), or that `from_pretrained` sets itself (`set_here`, and
    `__init__`'s arguments without a default: the model, its processor ...): before the weights load, not after
    (QA: the whole model loaded, then "Embedder.__init__() got an unexpected keyword argument")."""
    import difflib
    import inspect

    def keywords(method, *, optional: bool = False) -> set[str]:
        return {name for name, p in inspect.signature(method).parameters.items() if name != "self" and p.kind in
                (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                and not (optional and p.default is inspect.Parameter.empty)}

    set_here = {*set_here, *(keywords(cls.__init__) - keywords(cls.__init__, optional=True))}
    taken = keywords(cls.__init__, optional=True) - set_here
    for key in kwargs:
        if key in taken:
            continue
        close = difflib.get_close_matches(key, sorted(keywords(cls.from_pretrained) | taken), n=1)
        why = " (from_pretrained sets it)" if key in set_here else f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(f"{cls.__name__}.from_pretrained() got an unexpected keyword argument {key!r}{why}")


def load_model(path: str | os.PathLike, *, device: str | None = None, dtype=None, adapter_path: str | None = None,
               trainable: bool = False, image_budget: ImageBudget | None = None,
               attn_implementation: str | None = None) -> LoadedModel:
    """Load `*ForConditionalGeneration` + processor (from `path`, or the merged/ — else adapter/ — folder of a
    trainer's output folder `path`: `trained_model_folder`) in `dtype` (`resolve_dtype`; `CHECKPOINT_DTYPE`: the
    one the checkpoint records). A PEFT adapter folder (or `adapter_path`) is applied on top of its base model
    (`.base_path` and `.peft_path` name the two). The model is in eval mode unless `trainable`. The processor gets
    the image budget recorded with the checkpoint, overridden field by field by `image_budget`.
    `attn_implementation` (`--attn-implementation`): transformers' attention kernel, None its default; one the
    model cannot use is a `ModelError` (`check_attn_implementation`) before the weights load."""
    from transformers import AutoModelForImageTextToText

    path, base_path, peft_path, adapter_path, proc_path = _checkpoint_paths(path, adapter_path)
    device = resolve_device(device)
    torch_dtype = None if dtype is CHECKPOINT_DTYPE else resolve_dtype(dtype, device)
    with _naming_the_model(proc_path):
        processor, budget = load_processor(proc_path, image_budget=image_budget, budget_from=adapter_path or path)
    check_attn_implementation(attn_implementation, device, base_path)
    # only when asked for: without the option the call is transformers' default load, as before it existed
    attn = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with _naming_the_model(base_path), _naming_the_attention(attn_implementation, base_path):
        model = AutoModelForImageTextToText.from_pretrained(base_path, dtype=torch_dtype or "auto", **attn)
    torch_dtype = torch_dtype or model.dtype
    grow_embeddings(model, processor.tokenizer)  # tokens added (e.g. <emb>) with the adapter
    if adapter_path:
        model = load_peft_adapter(model, adapter_path, trainable=trainable, name=str(peft_path or adapter_path))
    model.to(device)
    model.train(trainable)
    return LoadedModel(model=model, processor=processor, adapter=adapter_for(model.config, processor, budget),
                       path=path, device=device, dtype=torch_dtype, image_budget=budget, base_path=str(base_path),
                       peft_path=str(peft_path) if peft_path else None)
