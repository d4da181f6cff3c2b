"""What the stages of a demo run share, below the pipeline that orders them (`unime.demo.pipeline`) and the
stage helpers (`unime.demo.embed_rl`, `unime.demo.video_rows`, `unime.demo.report`): the run's settings
(`DemoSettings`), its output folder and paths, running a `unime` command (`run_command(s)`), a resumable timed
stage (`stage`, with its progress line and ETA from earlier runs' stage times), and the embedders it trains
(`embedder_runs`, `evaluated_models`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from unime.demo.cpu_load import BUSY_CORES, busy_cores
from unime.demo.stage_logs import StageLogging, attempt_header, stage_log_path
from unime.train.loss_defaults import DEFAULT_TEMPERATURE

log = logging.getLogger(__name__)

START_ROW = "start"  # the pretrained base before any training on the world (`DemoRun.evaluated_models`)
STAGES_DIR = "stages"  # OUT/stages/NAME.json: a finished stage's marker (time, commands, the files it wrote)
RUNNING = ".running.json"  # OUT/stages/NAME.running.json: a stage under way (the files there before it started and
# the outputs it named before writing them: `DemoRun.claim_outputs`)
OUTPUT_FLAGS = ("--out", "--out-dir", "--cache-dir")  # the options of a demo command that name what it writes


DEMO_PRESETS = ("default", "large", "quick")


@dataclass
class DemoSettings:
    """Sizes and budgets. `quick` is the CI smoke test. `default` (4 seeds, 240 steps per row) took 36.7 min (2,203 s)
    on 2 idle CPU cores with both pretrained models cached (docs/DEMO.md "What it gives")."""

    family: str = "qwen2_vl"
    world_size: str = "default"
    pretrain: str = "default"  # `unime models pretrain --preset`: the backbone of the embedder and the judge
    # world overrides (`unime data synth --train-scenes/--train-per-task`); None = the size preset's value.
    # 150 records per task (the preset's 50 left even an independent dual encoder far from saturation)
    world_train_scenes: int | None = 720
    world_train_per_task: int | None = 150
    seeds: tuple[int, ...] = (0, 1, 2, 3)  # Table 4 needs >= 4 seeds per row for its intervals
    # judge: the pretrained judge (`unime models pretrain-judge`: the pretrained base trained as a Yes/No judge
    # on the same corpus, cached per machine), judging this world zero-shot as the paper's frozen judge does
    # (`pretrained_judge` off: the embedder's base). judge_steps > 0 fine-tunes it on this world's labelled
    # pairs first (full fine-tuning, answer-token loss + group_weight × the within-record softmax; the batch
    # counts records). Measured on the default world's mining audit (within-query AUC, mean over datasets;
    # fallback): from the base, 400 steps: 0.724, 14.5 %; pretrained judge zero-shot: 0.753, 12.7 %;
    # pretrained judge + 400 steps: 0.746, 15.4 %.
    pretrained_judge: bool = True
    judge_steps: int = 0
    judge_batch: int = 4
    judge_lr: float = 5e-4
    judge_negatives: int = 3
    judge_group_weight: float = 1.0
    # embedders. Steps measured on the default world (4 seeds, docs/DEMO.md "three times the steps"): at 80 the
    # baseline's loss is still 1.28 (in-batch accuracy 62 %) and it reaches 37.3 overall P@1; at 240 loss 0.42
    # (86 %), 41.1 (+3.8 [+1.6, +6.0]); only there do hard negatives pay. 240 makes the cached demo ~37 min (80: ~20).
    embed_steps: int = 240
    embed_batch: int = 32
    embed_lr: float = 5e-4
    tau: float = 0.05
    hard_negatives: int = 8
    # mining
    k: int = 50
    count: int = 10
    # reranker. Measured from the pretrained judge (lr 3e-4) on its own mining of the default world, seed 0, 200
    # steps, the listwise pick over the top 5 of an embedder at 46.3 overall P@1: lr 2e-3 25.8 (answers (1), (3),
    # (5) only), 3e-4 28.5 (every position), 1e-4 33.7 but the answer format unlearnt (96 % unparsable, the
    # embedder's order kept). 1,000 steps at 3e-4: 20.3 (listwise does not learn at this scale); pairwise-only
    # resort 35.0. At this scale the reranker is weaker than the embedder it reranks.
    rerank_steps: int = 200
    rerank_batch: int = 4
    rerank_lr: float = 3e-4
    rerank_negatives: int = 4
    rerank_topk: int = 5
    threads: int = 0  # 0 = torch's default
    # learnability reference (`unime eval reference`): its wall budget per seed, meant to equal the
    # baseline embedder's training time per seed (the report shows both)
    reference_seconds: float = 60.0
    # the judge check after mining (unime.demo.judge_gate)
    stop_on_weak_judge: bool = True
    max_fallback_share: float = 0.2
    # Embed-RL group (`--embed-rl`, unime.demo.embed_rl)
    er_records: int = 360  # training records it uses (round-robin over tasks; 0 = all)
    er_judge_steps: int = 150
    er_judge_negatives: int = 3
    er_rl_fraction: float = 0.2
    er_embed_steps: int = 60
    er_embed_batch: int = 16
    er_embed_lr: float = 1e-3
    er_tau: float = DEFAULT_TEMPERATURE
    # measured on the default world (well-formed T-CoTs of the SFT reasoner on the 1,810 eval items). From the base
    # before its captioning stage: 120 records x 16 epochs 83 %, 360 x 8 95 % (120 x 4 epochs gave 3 % on held-out
    # training records). From the captioned base, 360 records, 128 new tokens: 8 epochs 86.5 %, 12 89.8 %, 16 88.5 %
    # (it writes caption-like rethinks and skips a closing tag); 12 epochs with 160 new tokens 90.4 % at one thread,
    # 90.7 % in the demo (2 threads)
    er_sft_epochs: float = 12.0
    er_sft_batch: int = 16
    er_sft_lr: float = 1e-3
    # 30 GRPO steps (80 s): the reward's trend shows over the steps' noise (total 0.100 → 0.132, outcome accuracy
    # 0.75 → 0.81 from the first to the last 10 steps); 6 steps showed only the noise (docs/DEMO.md)
    er_grpo_steps: int = 30
    er_grpo_epochs: int = 5
    er_grpo_lr: float = 3e-6
    er_generations: int = 4
    er_max_new_tokens: int = 160  # the teacher's T-CoTs are up to 145 tokens in the base's tokenizer (99 % <= 123)
    # video (unime.demo.video_rows): eval clips of the world (0 = no video), frames per clip; the trained
    # embedders are evaluated on the world's MMEB-V2 video tasks in the eval stage
    video_clips: int = 24
    video_frames: int = 8
    video_train: bool = True  # train and mine on the world's video training records too (unime.demo.video_rows)

    @classmethod
    def preset(cls, name: str) -> "DemoSettings":
        if name == "default":
            return cls()
        if name == "quick":
            return cls(world_size="tiny", pretrain="quick", world_train_scenes=None, world_train_per_task=None,
                       seeds=(0,), judge_steps=40,
                       embed_steps=20, rerank_steps=20, k=10, count=4, hard_negatives=4, rerank_negatives=3,
                       rerank_topk=3, er_records=24, er_judge_steps=20, er_embed_steps=8, er_sft_epochs=1.0,
                       er_grpo_steps=2, er_max_new_tokens=48, reference_seconds=4.0, video_clips=4,
                       stop_on_weak_judge=False)  # a 40-step smoke judge cannot pass the check
        if name == "large":
            # the world of docs/DEMO.md "How many training records the world needs": 1,000 records per task (4,800
            # training scenes, the default's proportion; its eval split is another draw, so the pretrained models
            # are trained anew for it), each row two epochs of the image records (540 steps), the reference given
            # 1,200 s. Measured there (seeds 0 / 1): reference 62.6, baseline 48.0 / 48.0, judge-mined hard
            # negatives 50.2 / 51.4; on 2 CPU cores several hours: a preset for a GPU or a long run
            return cls(world_train_scenes=4800, world_train_per_task=1000, embed_steps=540,
                       reference_seconds=1200.0)
        raise ValueError(f"unknown preset {name!r} ({', '.join(DEMO_PRESETS)})")


@dataclass
class StageResult:
    name: str
    seconds: float
    commands: list[str] = field(default_factory=list)
    skipped: bool = False
    busy_cores: float | None = None  # other work on the machine at the stage's start (`unime.demo.cpu_load`)
    # the other unimes that computed (part of) the stage's outputs (`unime_code`; None: one that did not record it)
    other_unime: list[str | None] = field(default_factory=list)


class DemoRun:
    """A demo run in its output folder `out`: the stages' shared state and how a stage runs. The stages
    themselves, in order, are `unime.demo.pipeline.Demo`'s."""

    def __init__(self, out: str | os.PathLike, settings: DemoSettings, *, device: str = "cpu",
                 progress: Callable[[str], None] = print, embed_rl: bool = False, oracle_judge: bool = False,
                 timings: str | os.PathLike | None = None, jobs: int = 1,
                 load_probe: Callable[[], float | None] | None = None, console_level: int | None = None):
        from unime.demo.parallel import auto_jobs

        self.out = Path(out)
        # independent commands (one per seed) run `jobs` at a time (unime.demo.parallel); 0 = auto
        self.jobs = jobs if jobs > 0 else auto_jobs(device, len(settings.seeds))
        self.embed_rl = embed_rl
        self.oracle_judge = oracle_judge
        self.s = settings
        self.device = device
        self.say = progress
        # cores busy with other work (None: unknown), checked as each stage starts
        self.load_probe = load_probe or busy_cores
        self.results: list[StageResult] = []
        # stage times of earlier runs with the same settings (for the ETA); default in the user's cache
        self.timings = StageTimes(Path(timings) if timings else default_timings_path(), self.timings_key())
        self.pretrain_seconds = 0.0  # of the stage running: pretraining done in it (timed apart, `stage`)
        self.stage_busy = False  # the stage running started on a busy machine: its times are not recorded
        self._running: Path | None = None  # the running stage's marker (`stage`) and what it holds
        self._running_data: dict = {}
        self._earlier_files: set[str] = set()  # the files the running stage's earlier passes wrote (its marker's)
        # the console during a stage (`unime.demo.stage_logs`): None shows from WARNING up, the stages' records in
        # OUT/logs/STAGE.log; a level (`--log-level` given) shows what it lets through, as without the demo
        self.console_level = console_level
        self._logging = None  # the running stage's (`StageLogging`), for the worker processes of its commands
        self.t_start = time.perf_counter()

    # -- paths ------------------------------------------------------------------------------------
    @property
    def world(self) -> Path:
        return self.out / "world"

    def p(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def reference_runs(self) -> list[Path]:
        return [self.p("eval", f"reference_s{seed}") for seed in self.s.seeds]

    def planned_stages(self) -> list[str]:
        """Every stage `run` goes through, in order (for "stage k of n" and the ETA): the pipeline's stage order
        (`unime.demo.pipeline.Demo`)."""
        raise NotImplementedError

    def timings_key(self) -> str:
        import hashlib

        settings = {k: v for k, v in asdict(self.s).items() if k not in ("stop_on_weak_judge", "max_fallback_share")}
        key = {"settings": settings, "device": self.device, "embed_rl": self.embed_rl,
               "oracle_judge": self.oracle_judge, **({"jobs": self.jobs} if self.jobs > 1 else {})}
        return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def evaluated_models(self) -> list[tuple[str, int, Path]]:
        """(row, seed, model) of every embedder the eval stage evaluates: the embedders' start (the pretrained base,
        not trained on this world; one run under the first seed, it has none of its own), then each trained row."""
        return [(START_ROW, self.s.seeds[0], self.p("models", "embedder-base"))] + [
            (row, seed, out / "merged") for row, outs in self.embedder_runs().items()
            for seed, out in zip(self.s.seeds, outs)]

    def embedder_runs(self) -> dict[str, list[Path]]:
        """Ablation row → one training folder per seed."""
        rows = ("baseline", "hn", "soft") + (("hn_oracle", "soft_oracle") if self.oracle_judge else ())
        return {name: [self.p("embedders", f"{name}_s{seed}") for seed in self.s.seeds] for name in rows}

    @staticmethod
    def embedder_trained(run: Path) -> bool:
        """The `unime train embedder` folder `run` holds its finished run: merged/ and the trainer's finished record
        (written last, `unime.models.run_state`). A run killed after writing merged/ is not: its stage runs the
        command again (it resumes from its last checkpoint and finishes the export)."""
        from unime.train.embedder_trainer import FINISHED_FILE

        return (run / "merged").exists() and (run / FINISHED_FILE).is_file()

    @staticmethod
    def evaluated(dest: Path) -> bool:
        """The `unime eval` folder `dest` holds its finished run: summary.json and the run recorded finished
        (`unime.eval.rerun`, last). An eval killed after writing summary.json (before its results.md and plot) is
        not: its stage runs the command again (the embeddings it saved come from the cache)."""
        from unime.eval.rerun import read_run

        return (dest / "summary.json").is_file() and bool((read_run(dest) or {}).get("finished"))

    # -- running ----------------------------------------------------------------------------------
    def run_command(self, command: str, options: dict, commands: list[str]) -> None:
        """Run `unime COMMAND` with `options` ({flag: value}, True = a bare flag) through its stage function
        (`unime.demo.stage_calls`), and list the command in `commands` (the report shows it)."""
        from unime.demo.parallel import RANKED_COMMANDS, run_ranks, torchrun_line
        from unime.demo.stage_calls import command_line, run_stage_command

        # a command that spreads its work over processes runs as `jobs` torchrun processes (mining's judge shards)
        processes = self.jobs if command in RANKED_COMMANDS else 1
        self.claim_outputs(command_outputs(options))
        line = command_line(command, options)
        commands.append(torchrun_line(processes, line) if processes > 1 else line)
        threads = _torch_threads()
        try:
            if processes > 1:
                run_ranks(command, options, processes=processes, threads=self.threads_per_job(), logs=self._logging)
            else:
                run_stage_command(command, options)
        finally:
            _torch_threads(threads)

    def run_commands(self, calls: list[tuple[str, dict]], commands: list[str]) -> None:
        """`run_command` for independent commands: `self.jobs` at a time in worker processes when jobs > 1
        (each with its share of the torch threads), in order otherwise."""
        if self.jobs <= 1 or len(calls) <= 1:
            for command, options in calls:
                self.run_command(command, options, commands)
            return
        from unime.demo.parallel import run_parallel
        from unime.demo.stage_calls import command_line

        self.claim_outputs([p for _, options in calls for p in command_outputs(options)])
        commands.extend(command_line(command, options) for command, options in calls)
        run_parallel(calls, jobs=self.jobs, threads=self.threads_per_job(), logs=self._logging)

    def threads_per_job(self) -> int:
        """Torch threads of each command: the `threads` setting, else the cores shared out among the jobs."""
        from unime.demo.parallel import threads_per_job

        if self.s.threads:
            return self.s.threads
        return threads_per_job(self.jobs) if self.jobs > 1 else _torch_threads()

    def stage(self, name: str, done_when: list[Path], body: Callable[[list[str]], None], *,
              writes: Iterable[Path] = ()) -> None:
        """Run `body` as stage `name` unless its marker and `done_when` exist. A stage names the outputs it writes
        before writing them (`writes`: the files or folders `body` writes itself; the commands it runs name theirs,
        `claim_outputs`), and only files inside these (`within`) are its: the marker records the files new in the
        demo's folders since it started that are inside them (`files`), so that `--fresh` deletes only these, and
        keeps the outputs (`writes`; a later pass of the stage, run again for outputs added since, claims them
        too). A new file outside them — the user's, added while the stage ran or between a kill and the resume —
        is not the stage's: `--fresh` leaves it and names it in its warning (so a body must name everything it
        writes inside the demo's folders). While it runs, `NAME.running.json` holds the files there before it and
        the outputs named so far; a killed run's is kept: its new files inside those outputs count as the stage's
        (`written_by_stages`), and a resumed run carries them on. Its log records go to `OUT/logs/NAME.log` (the
        stage's file, appended to by each attempt, `unime.demo.stage_logs`); on a failure its console line names
        the file."""
        marker = self.p(STAGES_DIR, f"{name}.json")
        if marker.is_file() and all(p.exists() for p in done_when):
            info = json.loads(marker.read_text())
            self.results.append(StageResult(name, info["seconds"], info["commands"], skipped=True,
                                            busy_cores=info.get("busy_cores"),
                                            other_unime=[c for c in computed_by(info) if c != unime_code()]))
            self.say(f"[demo] {self.progress_line(name)} done before ({info['seconds']:.0f}s), skipped")
            return
        # a stage done before and run again for outputs added since (an eval row of a new option): the body runs only
        # what is missing, so the stage keeps its earlier commands, and its earlier time when this pass ran only new
        # commands (a pass that redid earlier ones, their outputs deleted, is timed anew)
        earlier = json.loads(marker.read_text()) if marker.is_file() else {"seconds": 0.0, "commands": []}
        earlier["commands"] = self.moved_here(earlier)
        self._earlier_files = {f for f in earlier.get("files", []) if isinstance(f, str)}
        self.say(f"[demo] {self.progress_line(name, starting=True)} ...")
        busy = self.load_probe()
        if busy is not None and busy >= BUSY_CORES:
            self.say(f"[demo] WARNING: other processes keep {busy:.1f} of {os.cpu_count()} cores busy; this stage's "
                     "multi-thread steps can run many times slower beside them, so its time is not the demo's "
                     "(marked in the report)")
        else:
            busy = None
        running = self.p(STAGES_DIR, f"{name}{RUNNING}")
        # the unimes that computed the stage's outputs: an earlier pass's, a killed run's, this one
        codes = (computed_by(earlier) if marker.is_file() else []) + [unime_code()]
        if running.is_file():
            killed = json.loads(running.read_text())
            codes[-1:-1] = computed_by(killed)
            before = set(killed.get("before", []))
            self._running_data = {"before": sorted(before), "writes": sorted(set(killed.get("writes", []))),
                                  "unime": list(dict.fromkeys(computed_by(killed) + [unime_code()]))}
        else:
            before = files_in_folders(self.out)
            self._running_data = {"before": sorted(before), "writes": [], "unime": [unime_code()]}
        # the outputs named: by an earlier pass (the finished marker's), a killed run, this body
        earlier_writes = [w for w in earlier.get("writes", []) if isinstance(w, str)] if isinstance(
            earlier.get("writes"), list) else []
        log_file = stage_log_path(self.out, name)
        self._running_data["writes"] = sorted(set(self._running_data["writes"]) | set(earlier_writes) | {
            rel for rel in map(self.relative, [*writes, log_file]) if rel is not None})
        write_json(running, self._running_data)
        self._running = running
        t0 = time.perf_counter()
        commands: list[str] = []
        self.pretrain_seconds, self.stage_busy = 0.0, busy is not None
        self._logging = StageLogging(log_file) if self.console_level is None else \
            StageLogging(log_file, console_level=self.console_level, summary=False)
        try:
            with self._logging.routed(attempt_header(name, unime_code())) as stage_log:
                try:
                    body(commands)
                except BaseException as e:
                    stage_log.write_line(f"stage {name} failed:\n{traceback.format_exc()}" if isinstance(e, Exception)
                                         else f"stage {name} interrupted ({type(e).__name__})")
                    if isinstance(e, Exception):
                        self.say(f"[demo] stage {name} failed; its log: {log_file}")
                    raise
        finally:
            self._running, self._logging = None, None
        now = files_in_folders(self.out) - {f"{STAGES_DIR}/{running.name}"}
        # the stage's files: the new ones inside the outputs it named (this run's, a killed run's, an earlier
        # pass's); a new file elsewhere (the user's, added while it ran or since a kill) is not its
        claimed = self._running_data["writes"]
        new = now - before
        # the stage's log is its own also when an earlier attempt wrote it (each attempt appends)
        written = set(earlier.get("files", [])) | {f for f in new if within(f, claimed)} | {self.relative(log_file)}
        if new - written:
            log.debug("stage %s: files new in the demo's folders outside the outputs it named, not listed as its: %s",
                      name, ", ".join(sorted(new - written)))
        seconds = time.perf_counter() - t0
        if not set(commands) & set(earlier["commands"]):
            seconds += earlier["seconds"]
        commands = earlier["commands"] + [c for c in commands if c not in earlier["commands"]]
        codes = list(dict.fromkeys(codes))
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seconds": seconds, "commands": commands, "out": str(self.out),
                                   **({"busy_cores": round(busy, 2)} if busy is not None else {}),
                                   "unime": codes, "files": sorted(written), "writes": claimed}, indent=1))
        os.replace(tmp, marker)
        running.unlink(missing_ok=True)
        self.results.append(StageResult(name, seconds, commands, busy_cores=busy,
                                        other_unime=[c for c in codes if c != unime_code()]))
        # a stage's own time; a first run's pretraining is recorded apart ("pretrain-base", "pretrain-judge"), so a
        # later run with the models cached does not expect it again. A time taken on a busy machine is not the
        # demo's: the estimate keeps what it had (an earlier run's time, or the reference run's)
        if busy is None:
            self.timings.record(name, max(0.0, seconds - self.pretrain_seconds))
        self.say(f"[demo] {self.progress_line(name)} {seconds:.0f}s")

    def stages_of_other_unime(self) -> dict[str, list[str | None]]:
        """{stage: the other unimes that computed it} of the stages this folder's markers (finished or killed) say
        another unime computed (`unime_code`; None: a unime that did not record it), in the order of the plan."""
        stages, found = self.out / STAGES_DIR, {}
        for path in sorted(stages.glob("*.json")) if stages.is_dir() else ():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict) or not ("commands" in data or "before" in data):
                continue  # not a marker of the demo's
            name = path.name[:-len(RUNNING)] if path.name.endswith(RUNNING) else path.stem
            other = [c for c in computed_by(data) if c != unime_code()]
            if other:
                found[name] = list(dict.fromkeys(found.get(name, []) + other))
        plan = self.planned_stages()
        return dict(sorted(found.items(), key=lambda kv: (plan.index(kv[0]) if kv[0] in plan else len(plan), kv[0])))

    def claim_outputs(self, paths: Iterable[Path]) -> None:
        """Name in the running stage's marker (`writes`), before they are written, files or folders the stage writes:
        of the files new in the demo's folders, a killed stage claims only those inside these (`within`)."""
        if self._running is None:
            return
        claimed = set(self._running_data["writes"])
        new = {rel for rel in map(self.relative, paths) if rel is not None} - claimed
        if new:
            self._running_data["writes"] = sorted(claimed | new)
            write_json(self._running, self._running_data)

    def copy_folder(self, source: Path, dest: Path) -> None:
        """Copy the folder `source` to the running stage's output `dest`, atomically (into `.NAME.partial` beside it,
        then renamed). A stage resumed after a kill finds what it wrote before: its partial copy and a `dest` whose
        files the stage wrote are replaced. A `dest` (or partial copy) holding a file that was there before the stage
        started and that no earlier pass of it wrote, the user's, is refused, naming it (nothing deleted)."""
        from unime.errors import UsageError

        partial = dest.with_name(f".{dest.name}.partial")
        before = set(self._running_data.get("before", [])) - self._earlier_files
        for path in (partial, dest):
            if not path.exists():
                continue
            # the path itself (a file, or a link the user made: a link is a file of the folder, not walked into) and
            # the files inside a folder
            inside = path.rglob("*") if path.is_dir() and not path.is_symlink() else ()
            files = [f for f in (self.relative(p) for p in [path, *inside])
                     if f is not None and (Path(self.out, f).is_symlink() or not Path(self.out, f).is_dir())]
            theirs = sorted(set(files) & before)
            if theirs:
                raise UsageError(f"{path} holds {len(theirs)} file(s) this demo did not write ({theirs[0]}"
                                 f"{', ...' if len(theirs) > 1 else ''}): move it away, or give another --out")
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        self.claim_outputs([dest])
        shutil.copytree(source, partial)
        os.replace(partial, dest)

    def relative(self, path: Path) -> str | None:
        """`path` relative to the demo folder (a POSIX path), None when it is not inside it."""
        try:
            rel = Path(path).relative_to(self.out).as_posix()
        except ValueError:
            return None
        return rel if rel != "." else None

    def moved_here(self, marker: dict) -> list[str]:
        """A stage marker's commands with the output folder it was written in (`out`, when recorded) replaced by
        this run's: in a demo folder copied or moved elsewhere, the earlier commands are still recognised as the
        same commands."""
        was, now = marker.get("out"), str(self.out)
        if not was or was == now:
            return list(marker["commands"])
        return [c.replace(was + os.sep, now + os.sep) for c in marker["commands"]]

    def progress_line(self, name: str, *, starting: bool = False) -> str:
        """`stage k/n name: elapsed …, remaining ≈ …` — the remaining estimate sums the recorded times of the
        stages still to run (this folder's markers, else earlier runs with the same settings)."""
        plan = self.planned_stages()
        if name not in plan:  # a stage this list does not know yet: shown after the planned ones
            plan = plan[:-1] + [name, plan[-1]]
        k = plan.index(name) + 1
        done = {r.name for r in self.results}
        todo = [n for n in plan[k - 1 if starting else k:] if n not in done or (starting and n == name)]
        # a stage with a marker here will be skipped (≈ 0 s); else the time recorded by an earlier run, else the
        # shipped reference run's (a preset's settings only)
        known = [(0.0, False) if n != name and self.p("stages", f"{n}.json").is_file() else self.stage_estimate(n)
                 for n in todo]
        est = sum(x for x, _ in known if x is not None)
        missing = sum(x is None for x, _ in known)
        if not todo:
            remaining = "remaining 0:00"
        elif missing == len(todo):
            remaining = "remaining: no recorded stage times yet"
        else:
            remaining = f"remaining ≈ {_clock(est)}" + (f" + {missing} stage(s) without a recorded time"
                                                        if missing else "")
            if any(ref for _, ref in known):
                remaining += " (partly from a reference run on 2 CPU cores)"
        return f"stage {k}/{len(plan)} {name}: elapsed {_clock(time.perf_counter() - self.t_start)}, {remaining};"

    def note_pretraining(self, what: str, result) -> None:
        """After `pretrain` / `pretrain_judge` in the models stage: a model trained now (not reused from the cache)
        has its seconds recorded apart from the stage's (`stage`)."""
        if not result.reused:
            seconds = float(result.manifest.get("seconds") or 0.0)
            self.pretrain_seconds += seconds
            if not self.stage_busy:
                self.timings.record(f"pretrain-{what}", seconds)

    def stage_estimate(self, name: str) -> tuple[float | None, bool]:
        """(seconds, from the shipped reference run) for a stage still to run: the time an earlier run with these
        settings recorded here, else the reference run's (`reference_times.json`, when the settings are a preset's);
        the models stage adds the pretraining of each model the cache lacks."""
        ref = reference_times(self.s)
        seconds, from_ref = self.timings.get(name), False
        if seconds is None and ref is not None:
            stages = {**ref["stages"], **ref.get("embed_rl_stages", {})}
            seconds, from_ref = stages.get(name), name in stages
        if name != "models" or seconds is None:
            return seconds, from_ref
        from unime.demo.pretrain import JudgePretrainRecipe, PretrainRecipe, uncached

        recipe = PretrainRecipe.preset(self.s.pretrain).replace(family=self.s.family)
        judge = JudgePretrainRecipe.preset(self.s.pretrain) if self.s.pretrained_judge else None
        for what in uncached(recipe, judge, self.world):
            extra = self.timings.get(f"pretrain-{what}")
            if extra is None and ref is not None:
                extra, from_ref = ref["pretraining"][what], True
            if extra is None:
                return None, False
            seconds += extra
        return seconds, from_ref


def _torch_threads(n: int | None = None) -> int:
    import torch

    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _clock(seconds: float) -> str:
    m, sec = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{sec:02d}" if m >= 60 else f"{m}:{sec:02d}"


def reference_times(settings: DemoSettings) -> dict | None:
    """The shipped reference run's stage seconds (`reference_times.json`) when `settings` are those of a preset
    it has, else None."""
    data = json.loads((Path(__file__).with_name("reference_times.json")).read_text(encoding="utf-8"))
    for name, entry in data.items():
        if isinstance(entry, dict) and asdict(DemoSettings.preset(name)) == asdict(settings):
            return entry
    return None


def default_timings_path() -> Path:
    """``$UNIME_CACHE_DIR/demo/stage_seconds.json``, else ``$XDG_CACHE_HOME/unime/demo/...`` (``~/.cache``)."""
    if os.environ.get("UNIME_CACHE_DIR"):
        return Path(os.environ["UNIME_CACHE_DIR"]) / "demo" / "stage_seconds.json"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unime" / "demo" / "stage_seconds.json"


class StageTimes:
    """Seconds per stage from earlier demo runs with the same settings (`key`), kept in one small JSON file
    (the last time of each stage). Only an estimate for the ETA: unreadable or unwritable is not an error."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        try:
            self.data = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            self.data = {}

    def get(self, stage: str) -> float | None:
        v = self.data.get(self.key, {}).get(stage)
        return float(v) if isinstance(v, (int, float)) else None

    def record(self, stage: str, seconds: float) -> None:
        self.data.setdefault(self.key, {})[stage] = round(float(seconds), 1)
        try:
            write_json(self.path, self.data)
        except OSError as e:  # pragma: no cover - a read-only cache folder
            log.warning("stage times not recorded in %s: %s", self.path, e)


@functools.lru_cache(maxsize=None)
def unime_code() -> str:
    """The unime running, as a stage marker records it: its version, and when it runs from a git checkout, the
    commit (`+g` and its first 12 hex digits; `.dirty` with uncommitted changes to the tracked files of its
    source). Nothing of the machine: no path."""
    version = str(getattr(sys.modules.get("unime"), "__version__", None) or "unknown")
    root = Path(__file__).resolve().parents[3]  # src/unime/demo/run.py in a checkout
    if not ((root / ".git").exists() and (root / "src" / "unime").is_dir()):
        return version
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                                  check=True).stdout.strip()
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return version
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        return version
    return f"{version}+g{commit[:12]}" + (".dirty" if dirty else "")


def computed_by(marker: dict) -> list[str | None]:
    """The unimes a stage marker (finished or running) says computed the stage: its `unime`; [None] when it records
    none (a marker of a unime from before it did)."""
    recorded = marker.get("unime")
    if isinstance(recorded, str):
        return [recorded]
    if isinstance(recorded, list) and recorded:
        return [c if isinstance(c, str) else None for c in recorded]
    return [None]


def unime_names(codes: list[str | None]) -> str:
    """Other unimes (`computed_by`) in words, for a warning or the report."""
    named = [f"unime {c}" if c else "an older unime that did not record its version" for c in codes]
    return " and ".join(named)


def command_outputs(options: dict) -> list[Path]:
    """What a demo command writes, from its options (`DemoRun.run_command`): the values of `OUTPUT_FLAGS` and the
    output folder of `--also TASKS OUT`."""
    paths = [Path(options[flag]) for flag in OUTPUT_FLAGS if flag in options]
    also = options.get("--also")
    if isinstance(also, tuple) and len(also) == 2:
        paths.append(Path(also[1]))
    return paths


def within(rel: str, outputs: Iterable[str]) -> bool:
    """Is `rel` (a path relative to the demo folder) one of `outputs`, inside one, or beside one as writing it leaves
    there (`NAME.*`, `.NAME.*`, also with NAME's suffix dropped: an atomic write's temporary, an output file's sidecar
    marker or companion)?"""
    for path in outputs:
        if rel == path or rel.startswith(path + "/"):
            return True
        parent, _, name = path.rpartition("/")
        if parent and not rel.startswith(parent + "/"):
            continue
        entry = rel[len(parent) + 1 if parent else 0:].split("/")[0]
        stem = PurePosixPath(name).stem
        if entry.startswith((name + ".", "." + name + ".", stem + ".", "." + stem + ".")):
            return True
    return False


def files_in_folders(out: Path) -> set[str]:
    """The files (and links) inside the folders of the demo folder `out`, as paths relative to it."""
    found = set()
    for top in (out.iterdir() if out.is_dir() else ()):
        if top.is_dir() and not top.is_symlink():
            for folder, dirs, files in os.walk(top):
                rel = Path(folder).relative_to(out).as_posix()
                found.update(f"{rel}/{n}" for n in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))])
    return found


def written_by_stages(out: Path) -> tuple[set[str], list[str]]:
    """What the demo's stages wrote inside the demo folder's folders (relative paths): the files their markers list
    and the markers themselves; for a stage a run left under way (killed), the files there now that were not there
    before it, inside the outputs it named (`writes`, `within`: a file added after the kill elsewhere is not its).
    Also the stages whose marker lists no files, nor, for a killed one, its outputs (an older unime's)."""
    written, unlisted = set(), []
    stages = out / STAGES_DIR
    for path in sorted(stages.glob("*.json")) if stages.is_dir() else ():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not a marker of the demo's
        if not isinstance(data, dict):
            continue
        if path.name.endswith(RUNNING) and isinstance(data.get("before"), list):
            if isinstance(data.get("writes"), list):
                outputs = [w for w in data["writes"] if isinstance(w, str)]
                written |= {f for f in files_in_folders(out) - set(data["before"]) if within(f, outputs)}
            else:
                unlisted.append(path.name[:-len(RUNNING)])
        elif "commands" in data:
            if isinstance(data.get("files"), list):
                written.update(f for f in data["files"] if isinstance(f, str))
            else:
                unlisted.append(path.stem)
        else:
            continue
        written |= {f"{STAGES_DIR}/{path.name}", f"{STAGES_DIR}/{path.with_suffix('.tmp').name}"}
    return written, unlisted


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
