"""The stage functions behind the `unime` commands the demo runs, called directly: the demo sits below the
command line (`unime.cli` parses options and calls these same functions; the demo does not go through it).

A demo stage names a command and its options as `{flag: value}` in command-line order (`True` = a bare
flag). `command_line` renders them as the command the report lists, which a user can type to redo the
stage; `run_stage_command` makes the call that command makes: the same stage function with the same
arguments, options the demo leaves out taking the command's defaults, and the same output claim
(`unime.outdir`). `tests/demo/test_demo_stage_calls.py` checks each call the demo makes against the call
the command line makes from the listed command. Not shown here (the command line prints them): the
one-line summaries a command prints when it finishes.
"""

from __future__ import annotations

import shlex
from typing import Any, Callable

from unime.errors import UnimeError


def command_line(command: str, options: dict[str, Any]) -> str:
    """`unime COMMAND --flag value ...`, each word shell-quoted."""
    argv = command.split()
    for flag, value in options.items():
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            raise ValueError(f"{command} {flag}: a demo option is a value or True (a bare flag), not {value!r}")
        elif isinstance(value, tuple):  # an option of several values (e.g. `--also TASKS OUT`)
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return "unime " + " ".join(shlex.quote(a) for a in argv)


def run_stage_command(command: str, options: dict[str, Any]) -> None:
    """Make the stage call of `unime COMMAND` with `options` (see the module doc)."""
    if command not in _CALLS:
        raise UnimeError(f"the demo has no stage call for `unime {command}` (known: {', '.join(sorted(_CALLS))})")
    opts = _Options(command, options)
    call = _CALLS[command](opts)
    opts.check_all_used()  # before the work: an option the call would ignore is a bug of the demo
    call()


class _Options:
    """The options of one command, read once each: typed as the command line types them."""

    def __init__(self, command: str, options: dict[str, Any]):
        self.command, self.values, self.used = command, dict(options), set()

    def get(self, flag: str, kind: Callable[[Any], Any] = str, default: Any = None) -> Any:
        self.used.add(flag)
        if flag not in self.values:
            return default
        value = self.values[flag]
        return True if kind is bool else kind(value)

    def given(self, **names: Any) -> dict[str, Any]:
        """Keyword arguments for the flags that were given: `name=kind` reads `--name` (underscores as dashes),
        `name=("--flag", kind)` reads `--flag`."""
        out = {}
        for name, spec in names.items():
            flag, kind = spec if isinstance(spec, tuple) else ("--" + name.replace("_", "-"), spec)
            self.used.add(flag)
            if flag in self.values:
                out[name] = self.get(flag, kind)
        return out

    def record(self) -> dict[str, Any]:
        """The options as the output folder's ownership marker records them."""
        return {flag.lstrip("-").replace("-", "_"): (v if v is True else str(v)) for flag, v in self.values.items()}

    def check_all_used(self) -> None:
        unused = [f for f in self.values if f not in self.used]
        if unused:
            raise UnimeError(f"the demo gave `unime {self.command}` options its stage call does not read: {unused}")


def _in_folder(o: _Options, work: Callable[[], Any], flag: str = "--out") -> Callable[[], Any]:
    """`work` in the claimed output folder of the command (named by `flag`), as the command line claims it."""
    folder, overwrite, record = o.get(flag), o.get("--overwrite", bool, False), o.record()

    def run():
        from unime.outdir import claim_on_main_process

        with claim_on_main_process(folder, o.command, record, overwrite=overwrite):
            return work()
    return run


def _in_file(o: _Options, work: Callable[[], Any]) -> Callable[[], Any]:
    """`work` writing the command's claimed output file (`--out`, a sidecar marker), recorded when done."""
    path, overwrite, record = o.get("--out"), o.get("--overwrite", bool, False), o.record()

    def run():
        from unime.outdir import claim_file, is_main_process

        owned = claim_file(path, o.command, record, overwrite=overwrite) if is_main_process() else None
        try:
            result = work()
            if owned is not None:
                owned.commit()
            return result
        finally:
            if owned is not None:
                owned.release()
    return run


# -- one call per command -----------------------------------------------------------------------------------

def _data_synth(o: _Options) -> Callable[[], Any]:
    from dataclasses import fields

    from unime.data.synth import SynthConfig, WorldSizes, synth_world
    from unime.outdir import LOCK_NAME, MARKER_NAME

    cfg = SynthConfig(out=o.get("--out"), sizes=o.given(**{f.name: int for f in fields(WorldSizes)}),
                      **o.given(size=str, seed=int, overwrite=bool, video_clips=int, video_frames=int))
    return _in_folder(o, lambda: synth_world(cfg, ignore=(MARKER_NAME, LOCK_NAME)))


def _eval_reference(o: _Options) -> Callable[[], Any]:
    from unime.eval.reference import ReferenceConfig, evaluate_reference

    cfg = ReferenceConfig(**o.given(seconds=float, seed=int, threads=int, video_frames=int))
    args, root = (o.get("--tasks"), o.get("--records"), o.get("--out")), o.get("--data-root")
    also = o.get("--also", lambda pair: (tuple(map(str, pair)),), ())
    return _in_folder(o, lambda: evaluate_reference(*args, data_root=root, cfg=cfg, also=also))


def _models_build_tiny(o: _Options) -> Callable[[], Any]:
    from unime.models.tiny import TinyBuildConfig, build_tiny_model

    extra = o.get("--extra-token")
    cfg = TinyBuildConfig(out=o.get("--out"), extra_tokens=[extra] if extra else [],
                          **o.given(family=str, seed=int, hidden=int, layers=int, vision_depth=int))
    return _in_folder(o, lambda: build_tiny_model(cfg))


def _train_generative(o: _Options) -> Callable[[], Any]:
    """`unime train judge` / `unime train reranker`."""
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    role = o.command.split()[1]
    targets = o.get("--lora-targets")
    module = o.get("--train-module")
    cfg = RerankerTrainConfig(
        model=o.get("--model"), records=[o.get("--records")], out=o.get("--out"), role=role,
        **({"losses": ("pair",)} if role == "judge" else {"holdout": 0.0}),  # as `unime train judge|reranker`
        logging_steps=10,  # the commands' --logging-steps default, RerankerTrainConfig's own
        train_modules=(module,) if module else (),
        **({"lora_targets": tuple(t.strip() for t in targets.split(",") if t.strip())} if targets else {}),
        **o.given(data_root=str, num_negatives=("--negatives", int), judge_negatives=int, full=bool, lora_r=int,
                  lora_alpha=int, lora_vision=bool, learning_rate=("--lr", float), max_steps=("--steps", int),
                  batch_size=int, warmup_steps=("--warmup", float), seed=int, device=str, group_weight=float,
                  overwrite=bool))
    return lambda: train_reranker(cfg)  # the trainer claims its output folder


def _train_embedder(o: _Options) -> Callable[[], Any]:
    from unime.train.embedder_trainer import EmbedderTrainingConfig, train_embedder

    cfg = EmbedderTrainingConfig(
        model=o.get("--model"), out=o.get("--out"), records=o.get("--records"),
        **o.given(data_root=str, loss=str, in_batch=bool, hard_negatives=int, tau=float, symmetric=bool, full=bool,
                  pooling=str, batch_size=int, steps=int, lr=float, warmup=float, seed=int, save_steps=int,
                  device=str, allow_fallback_labels=bool))
    return lambda: train_embedder(cfg)  # the trainer claims its output folder


def _mine(o: _Options) -> Callable[[], Any]:
    from unime.mining.config import MineConfig
    from unime.mining.pipeline import run_mining

    world = o.get("--world")
    cfg = MineConfig(records=o.get("--records"), embedder=o.get("--embedder"), judge=o.get("--judge"),
                     out=o.get("--out"), data_root=o.get("--data-root") or world, world=world,
                     **o.given(k=int, count=int, backend=str, audit=bool, cache_dir=str, video_frames=int,
                               device=str))
    return lambda: run_mining(cfg)  # mining claims its output folder


def _eval(o: _Options) -> Callable[[], Any]:
    from unime.eval.runners import EvalConfig, evaluate_checkpoint

    cfg = EvalConfig(model=o.get("--model"), tasks=o.get("--tasks"), out=o.get("--out"),
                     **o.given(cache_dir=str, rerank_path=("--rerank", str), rerank_topk=("--topk", int),
                               rerank_mode=("--mode", str), device=str, video_frames=int))
    return _in_folder(o, lambda: evaluate_checkpoint(cfg))


def _reason_teacher(o: _Options) -> Callable[[], Any]:
    from unime.reasoning.teacher import TeacherConfig, write_teacher_tcots

    cfg = TeacherConfig(world=o.get("--world"), out=o.get("--out"), records=o.get("--records"),
                        **o.given(video_frames=int))
    return _in_file(o, lambda: write_teacher_tcots(cfg))


def _reason_split(o: _Options) -> Callable[[], Any]:
    from unime.embed_rl.tcot_embedder import SplitConfig, split_records_file

    cfg = SplitConfig(records=o.get("--records"), tcots=o.get("--tcots"), judge=o.get("--judge"),
                      out_dir=o.get("--out-dir"),
                      **o.given(data_root=str, rl_fraction=float, device=str, video_frames=int))
    return _in_folder(o, lambda: split_records_file(cfg, overwrite=o.get("--overwrite", bool, False)), "--out-dir")


def _reason_materialize(o: _Options) -> Callable[[], Any]:
    from unime.embed_rl.tcot_embedder import MaterializeConfig, materialize_records_file

    cfg = MaterializeConfig(records=o.get("--records"), out=o.get("--out"),
                            **o.given(tcots=str, no_tcots=bool, data_root=str, video_frames=int))
    return _in_file(o, lambda: materialize_records_file(cfg, []))  # the evidence left out counted as the command does


def _reason_add_emb(o: _Options) -> Callable[[], Any]:
    from unime.embed_rl.tcot_embedder import AddEmbConfig, prepare_emb_checkpoint

    cfg = AddEmbConfig(model=o.get("--model"), out=o.get("--out"), **o.given(device=str, dtype=str))
    return _in_folder(o, lambda: prepare_emb_checkpoint(cfg))


def _train_reasoner(o: _Options) -> Callable[[], Any]:
    stage = o.get("--stage")
    common = dict(model=o.get("--model"), out=o.get("--out"),
                  **o.given(data_root=str, lora_r=int, learning_rate=("--lr", float), seed=int, device=str,
                            video_frames=int))
    if stage == "sft":
        from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, train_reasoner_sft

        sft = ReasonerSFTConfig(data=o.get("--tcots"), **common,
                                **o.given(epochs=float, batch_size=int, logging_steps=int))
        return lambda: train_reasoner_sft(sft)  # the trainers claim their output folder
    from unime.embed_rl.grpo import GRPOStageConfig, train_reasoner_grpo

    grpo = GRPOStageConfig(
        embedder=o.get("--embedder"), records=o.get("--records"), **common,
        **o.given(process_judge=str, process_pick=str, max_steps=int, num_generations=int, pairs_per_batch=int,
                  epochs=("--grpo-epochs", int), max_completion_length=int))
    return lambda: train_reasoner_grpo(grpo)


def _reason_eval(o: _Options) -> Callable[[], Any]:
    from unime.embed_rl.tcot_embedder import ReasonEvalConfig, evaluate_with_reasoning

    cfg = ReasonEvalConfig(embedder_path=o.get("--embedder"), tasks=o.get("--tasks"), out_dir=o.get("--out"),
                           **o.given(tcots=str, reasoner_path=("--reasoner", str), world_root=("--world", str),
                                     batch_size=int, max_new_tokens=int, device=str, video_frames=int))
    return _in_folder(o, lambda: evaluate_with_reasoning(cfg, overwrite=o.get("--overwrite", bool, False)))


_CALLS: dict[str, Callable[[_Options], Callable[[], Any]]] = {
    "data synth": _data_synth, "eval reference": _eval_reference, "models build-tiny": _models_build_tiny,
    "train judge": _train_generative, "train reranker": _train_generative, "train embedder": _train_embedder,
    "mine": _mine, "eval": _eval, "reason teacher": _reason_teacher, "reason split": _reason_split,
    "reason materialize": _reason_materialize, "reason add-emb": _reason_add_emb, "train reasoner": _train_reasoner,
    "reason eval": _reason_eval,
}
