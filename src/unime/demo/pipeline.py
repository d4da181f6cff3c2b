"""The demo pipeline: a list of stages, each one `unime` command (run in this process as the command's
stage function, `unime.demo.stage_calls`), skipped when its outputs exist so an interrupted demo resumes
where it stopped.

Every stage is exactly a command a user could type; the report lists them so any number can be
reproduced by hand. The stages (SPEC §1, issue #8):

 1. world       `unime data synth`                       the generated demo world
    reference   `unime eval reference` (per seed)          the learnability reference (CNN + GRU dual
                encoder, InfoNCE, from scratch) for `reference_seconds` of wall time
 2. models      the pretrained embedder and judge backbones (`unime models pretrain` / `pretrain-judge`,
                cached per machine; `unime.demo.pretrain`)
 3. judge-data  labelled (query, Yes/No candidate) records from the world's ground truth
 4. judge       `unime train judge`                      the tiny MLLM judge
 5. baseline    `unime train embedder --loss infonce --hard-negatives 0`   (no HN, no soft labels)
 6. mine        `unime mine --audit`                     retrieval → judge → filter + sample
                then the judge check (`unime.demo.judge_gate`): the demo stops (`DemoStopped`) when the
                judge's scores do not vary within a query (median spread < β) or too many queries fell
                back to random negatives, unless `stop_on_weak_judge` is off (`--allow-weak-judge`)
 7. hn          `unime train embedder --loss infonce --hard-negatives 8`   (+ HN)
 8. soft        `unime train embedder --loss symmetric_kl`                 (+ HN + soft labels)
 9. reranker    `unime train reranker`                   pairwise + listwise on the mined set
10. eval        `unime eval` for every embedder (+ reranker rows)
11. report      report.md / report.html

`--oracle-judge` adds a diagnostic: `mine-oracle` (`unime mine --backend oracle`, the world's ground-truth
relevance in place of the judge, same retriever) and the two UniME-V2 rows trained on it (`hn-oracle`,
`soft-oracle`), so the report separates what the tiny judge costs from what the training recipe gives.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from unime.demo.run import DEMO_PRESETS, DemoRun, DemoSettings, write_json
from unime.models.tiny import FAMILIES
from unime.options import RangeChecked, option


class Demo(DemoRun):
    """The demo's stages in order (`run`), each one `unime` command run through `DemoRun.stage`."""

    def planned_stages(self) -> list[str]:
        """Every stage `run` goes through, in order (for "stage k of n" and the ETA)."""
        names = ["world", "reference", "models", "judge-data", "judge", "baseline", "mine", "hn", "soft"]
        if self.oracle_judge:
            names += ["mine-oracle", "hn-oracle", "soft-oracle"]
        names += ["reranker", "eval"]
        if self.embed_rl:
            names += EMBED_RL_STAGES
        return names + ["report"]

    def check_judge(self, mined_dir: Path) -> None:
        """After `mine`: stop (`DemoStopped`) when the judge does not discriminate within a query."""
        from unime.demo.judge_gate import judge_gate, stop_message
        from unime.errors import DemoStopped

        gate = judge_gate(mined_dir, max_fallback_share=self.s.max_fallback_share)
        write_json(self.p("judge_gate.json"), {**gate.to_dict(), "stop_on_weak_judge": self.s.stop_on_weak_judge})
        if not gate.weak:
            self.say(f"[demo] judge check: median within-query score spread {gate.median_spread:.4f} >= β "
                     f"{gate.beta:g}, fallback {100 * gate.fallback_share:.1f} %: ok")
            if gate.weak_datasets():
                self.say("[demo] note: " + gate.weak_datasets_line())
            return
        if self.s.stop_on_weak_judge:
            raise DemoStopped(stop_message(gate, mined_dir))
        self.say("[demo] WARNING (continuing, weak judge allowed): " + "; ".join(gate.reasons()))

    def check_settings(self) -> None:
        """Refuse to resume a demo folder made with other settings (`changed_settings`): its finished stages would
        be reused as they are, mixed with stages run with these (`--fresh` starts over)."""
        from unime.errors import UsageError

        path = self.out / "settings.json"
        if not path.is_file():
            return
        changed = changed_settings(json.loads(path.read_text()), asdict(self.s))
        if not (self.embed_rl or self.p("er").exists()):  # the Embed-RL group's settings matter only with it
            changed = {k: v for k, v in changed.items() if not k.startswith("er_")}
        if changed:
            diff = ", ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in changed.items())
            raise UsageError(f"{self.out} holds a demo run made with other settings ({diff}); its finished stages "
                             "would be reused as they are. Start over with --fresh, or give another --out",
                             command="demo")

    def warn_other_unime(self) -> None:
        """On resuming: one warning line naming the stages another unime computed (reused as they are, not refused:
        users upgrade; the report marks them). Not the report stage: each run rewrites it."""
        from unime.demo.run import unime_code

        other = {k: v for k, v in self.stages_of_other_unime().items() if k != "report"}
        if not other:
            return
        codes = {c for cs in other.values() for c in cs}
        shown = sorted(c for c in codes if c) + ["an older unime that did not record its version"] * (None in codes)
        many = len(other) > 1
        were = f"stages {', '.join(other)} were" if many else f"stage {next(iter(other))} was"
        they = "they are" if many else "it is"
        self.say(f"[demo] WARNING: {were} computed by another unime ({', '.join(shown)}), this is unime "
                 f"{unime_code()}: {they} reused as {they} "
                 "(--fresh recomputes every stage)")

    def run(self) -> Path:
        self.check_settings()
        self.warn_other_unime()
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "settings.json", asdict(self.s))  # atomic: the next run's `check_settings` reads it
        s, dev = self.s, {"--device": self.device}
        world = self.world

        world_sizes = {flag: value for flag, value in (("--train-scenes", s.world_train_scenes),
                                                       ("--train-per-task", s.world_train_per_task))
                       if value is not None}
        from unime.demo.video_rows import (VIDEO_TASKS_FILE, run_video_evals, training_records, trains_on_video,
                                           video_eval_dir, video_eval_done, video_options, world_args)

        self.stage("world", [world / "world.json"], lambda c: self.run_command(
            "data synth", {"--out": world, "--size": s.world_size, **world_sizes, **world_args(self),
                           "--overwrite": True}, c))

        def reference_done(seed: int, dest: Path) -> list[Path]:
            # a seed's command writes its summary first, then the --also summary, the training log and last the
            # weights' record (reference.json): a seed killed in between is run again, not skipped by its summary
            return [dest / "summary.json", dest / "reference.json"] + (
                [video_eval_dir(self, "reference", seed) / "summary.json"] if trains_on_video(self) else [])

        def reference(c):
            # the records the embedders train on (with the video ones when video training is on), and the video
            # tasks evaluated by the same trained reference
            recs = training_records(self)
            self.run_commands([("eval reference", {
                "--tasks": world, "--records": recs, "--data-root": world, "--out": dest,
                "--seconds": s.reference_seconds, "--seed": seed, "--threads": self.threads_per_job(),
                **({"--also": (world / VIDEO_TASKS_FILE, video_eval_dir(self, "reference", seed))}
                   if trains_on_video(self) else {})})
                for seed, dest in zip(s.seeds, self.reference_runs())
                if not all(p.exists() for p in reference_done(seed, dest))], c)
        self.stage("reference", [p for seed, dest in zip(s.seeds, self.reference_runs())
                                 for p in reference_done(seed, dest)], reference)

        def models(c):
            # the paper starts from pretrained models: the pretrained tiny base (cached per machine by recipe,
            # its corpus disjoint from this world's eval scenes) is both the embedder's and the judge's start
            from unime.demo.pretrain import PretrainRecipe, pretrain

            recipe = PretrainRecipe.preset(s.pretrain).replace(family=s.family)
            c.append(f"unime models pretrain --preset {s.pretrain} --family {s.family} --exclude-world "
                     f"{shlex.quote(str(world))} --device {self.device}")
            result = pretrain(recipe, exclude_world=world, device=self.device, progress=self.say)
            self.note_pretraining("base", result)
            self.copy_folder(result.model, self.p("models", "embedder-base"))
            (self.p("models", "pretrained.json")).write_text(json.dumps(
                {**result.manifest, "path": str(result.path), "reused": result.reused}, indent=1))
            judge_base = result
            if s.pretrained_judge:
                from unime.demo.pretrain import JudgePretrainRecipe, pretrain_judge

                c.append(f"unime models pretrain-judge --preset {s.pretrain} --exclude-world "
                         f"{shlex.quote(str(world))} --device {self.device}")
                judge_base = pretrain_judge(JudgePretrainRecipe.preset(s.pretrain), recipe, exclude_world=world,
                                            device=self.device, progress=self.say, base=result)
                self.note_pretraining("judge", judge_base)
                (self.p("models", "pretrained_judge.json")).write_text(json.dumps(
                    {**judge_base.manifest, "path": str(judge_base.path), "reused": judge_base.reused}, indent=1))
            self.copy_folder(judge_base.model, self.p("models", "judge-base"))
        self.stage("models", [self.p("models", "embedder-base"), self.p("models", "judge-base")], models,
                   writes=[self.p("models", name) for name in ("embedder-base", "pretrained.json", "judge-base",
                                                               "pretrained_judge.json")])

        judge_records = self.p("judge", "records.jsonl")

        def judge_data(c):
            from unime.data.io import write_records
            from unime.data.synth import World
            from unime.demo.judge_data import judge_training_records

            stats: dict = {}
            recs = judge_training_records(World.load(world), negatives_per_query=s.judge_negatives, stats=stats)
            judge_records.parent.mkdir(parents=True, exist_ok=True)
            write_records(recs, judge_records)
            write_json(self.p("judge", "records_stats.json"), stats)
            c.append(f"# python: unime.demo.judge_data.judge_training_records(World.load('{world}')) "
                     f"-> {len(recs)} records ({stats.get('other_task', 0)} of {stats.get('negatives', 0)} "
                     "negatives from other tasks)")
        self.stage("judge-data", [judge_records], judge_data,
                   writes=[judge_records, self.p("judge", "records_stats.json")])

        judge_dir = self.p("judge", "model")
        # judge_steps 0: the judge base judges as it is (zero-shot on this world); the stage has nothing to do
        judge_model = judge_dir / "merged" if s.judge_steps > 0 else self.p("models", "judge-base")
        self.stage("judge", [judge_model], lambda c: c.append("# judge_steps 0: the judge base judges zero-shot")
                   if s.judge_steps == 0 else self.run_command("train judge", {
                       "--model": self.p("models", "judge-base"), "--records": judge_records, "--data-root": world,
                       "--out": judge_dir, "--judge-negatives": s.judge_negatives, "--steps": s.judge_steps,
                       "--batch-size": s.judge_batch, "--lr": s.judge_lr, "--full": True,
                       "--group-weight": s.judge_group_weight, "--warmup": max(s.judge_steps // 20, 1), "--seed": 0,
                       "--overwrite": True, **dev}, c))

        runs = self.embedder_runs()
        records = training_records(self)  # the image records, and the video ones when video training is on
        video = video_options(self)

        def train_embedders(row: str, loss: dict, recs: Path):
            def body(c):
                self.run_commands([("train embedder", {
                    "--model": self.p("models", "embedder-base"), "--records": recs, "--data-root": world,
                    "--out": out, **loss, "--tau": s.tau, "--full": True, "--batch-size": s.embed_batch,
                    "--steps": s.embed_steps, "--lr": s.embed_lr, "--warmup": 0.1, "--seed": seed,
                    "--save-steps": max(s.embed_steps // 2, 1), **dev})
                    for seed, out in zip(s.seeds, runs[row]) if not self.embedder_trained(out)], c)
            return body

        self.stage("baseline", [r / "merged" for r in runs["baseline"]], train_embedders(
            "baseline", {"--loss": "infonce", "--in-batch": True, "--hard-negatives": 0}, records))

        mined_dir = self.p("mined")
        self.stage("mine", [mined_dir / "mined.parquet"], lambda c: self.run_command("mine", {
            "--records": records, "--embedder": runs["baseline"][0] / "merged", "--judge": judge_model,
            "--out": mined_dir, "--data-root": world, "--k": s.k, "--count": s.count, "--audit": True,
            "--world": world, "--cache-dir": self.p("cache", "mining"), **video, **dev}, c))
        mined = mined_dir / "mined.parquet"
        self.check_judge(mined_dir)

        self.stage("hn", [r / "merged" for r in runs["hn"]], train_embedders(
            "hn", {"--loss": "infonce", "--in-batch": True, "--hard-negatives": s.hard_negatives}, mined))
        self.stage("soft", [r / "merged" for r in runs["soft"]], train_embedders(
            # the demo shows the method as it is, even with a weak tiny judge: its report states the fallback
            # share, so soft labels are trained on whatever the judge produced
            "soft", {"--loss": "symmetric_kl", "--hard-negatives": s.hard_negatives, "--allow-fallback-labels": True},
            mined))

        if self.oracle_judge:  # diagnostic: the same mining and rows with a perfect judge
            oracle_dir = self.p("mined-oracle")
            self.stage("mine-oracle", [oracle_dir / "mined.parquet"], lambda c: self.run_command("mine", {
                "--records": records, "--embedder": runs["baseline"][0] / "merged", "--judge": world,
                "--backend": "oracle", "--out": oracle_dir, "--data-root": world, "--k": s.k, "--count": s.count,
                "--cache-dir": self.p("cache", "mining"), **video, **dev}, c))
            oracle_mined = oracle_dir / "mined.parquet"
            self.stage("hn-oracle", [r / "merged" for r in runs["hn_oracle"]], train_embedders(
                "hn_oracle", {"--loss": "infonce", "--in-batch": True, "--hard-negatives": s.hard_negatives},
                oracle_mined))
            self.stage("soft-oracle", [r / "merged" for r in runs["soft_oracle"]], train_embedders(
                "soft_oracle", {"--loss": "symmetric_kl", "--hard-negatives": s.hard_negatives,
                                "--allow-fallback-labels": True}, oracle_mined))

        reranker_dir = self.p("reranker")
        self.stage("reranker", [reranker_dir / "unime_reranker.json"], lambda c: self.run_command("train reranker", {
            "--model": self.p("models", "judge-base"), "--records": mined, "--data-root": world,
            "--out": reranker_dir, "--negatives": s.rerank_negatives, "--steps": s.rerank_steps,
            "--batch-size": s.rerank_batch, "--lr": s.rerank_lr, "--lora-r": 32, "--lora-alpha": 64,
            "--lora-targets": "all-linear", "--lora-vision": True, "--train-module": "lm_head", "--seed": 0,
            "--overwrite": True, **dev}, c))

        def evaluate(c):
            calls = []
            for row, seed, model in self.evaluated_models():
                dest = self.p("eval", f"{row}_s{seed}")
                if self.evaluated(dest):
                    continue
                extra = {}
                if row == "soft":  # the paper's Table 3: the UniME-V2 embedder with its reranker
                    extra = {"--rerank": reranker_dir, "--topk": s.rerank_topk, "--mode": "top1"}
                calls.append(("eval", {"--model": model, "--tasks": world, "--out": dest,
                                       "--cache-dir": self.p("cache", "eval"), **extra, **dev}))
            self.run_commands(calls, c)
            run_video_evals(self, c)
        eval_done = [self.p("eval", f"{row}_s{seed}", "summary.json") for row, seed, _ in self.evaluated_models()]
        eval_done += video_eval_done(self)
        self.stage("eval", eval_done, evaluate)

        if self.embed_rl:
            from unime.demo.embed_rl import run_embed_rl

            run_embed_rl(self)

        def report(c):
            from unime.demo.report import write_report

            path = write_report(self)
            c.append(f"# python: unime.demo.report.write_report -> {path}")
        # the report is always rewritten (cheap), so it includes this run's timings
        marker = self.p("stages", "report.json")
        marker.unlink(missing_ok=True)
        self.stage("report", [self.p("report.md")], report)
        return self.p("report.md")



EMBED_RL_STAGES = ["er-models", "er-teacher", "er-judge-data", "er-judge", "er-split", "er-materialize",
                   "er-embedders", "er-sft", "er-grpo", "er-eval"]


# settings a demo folder may be resumed with changed: each seed's outputs are its own (more or fewer seeds reuse the
# others), and `--allow-weak-judge` is how a run stopped by the judge check goes on
RESUMABLE_SETTINGS = {"seeds", "stop_on_weak_judge"}


def changed_settings(recorded: dict, current: dict) -> dict[str, tuple]:
    """{setting: (recorded, current)} for the settings both name whose values differ, but `RESUMABLE_SETTINGS`
    (a setting only one of them names — one an older or newer unime has — is not compared)."""
    now = json.loads(json.dumps(current))  # tuples as the recorded JSON has them
    return {k: (recorded[k], now[k]) for k in sorted(recorded.keys() & now.keys())
            if k not in RESUMABLE_SETTINGS and recorded[k] != now[k]}


# what a demo run writes in its folder (`Demo.p`, `unime.demo.report`, `unime.demo.embed_rl`, `unime.demo.video_rows`):
# the stages' folders and files, and the temporaries of the files it writes there
DEMO_ENTRIES = frozenset({
    "world", "eval", "models", "judge", "embedders", "mined", "mined-oracle", "reranker", "er", "cache", "stages",
    "logs",
    "settings.json", "settings.tmp", "judge_gate.json", "judge_gate.tmp", "train_records.jsonl", "report.md",
    "report.md.tmp", "report.html"})


def fresh(out: str | os.PathLike, *, overwrite: bool = False) -> list[str]:
    """`unime demo --fresh`: delete what earlier demo runs wrote in `out`: the files of its layout (`DEMO_ENTRIES`)
    and, inside its folders, the files its stages recorded writing (`unime.demo.run.written_by_stages`: a finished
    stage's `files`, a killed stage's new files inside the outputs it named), then the folders that leaves empty.
    A stage's files are only those inside the outputs it named (`DemoRun.stage`), so every other entry stays — a
    file the user added inside the demo's folders, before, while or after a stage ran, is named in a warning — and
    a folder the demo does not own is refused unless `overwrite` (see `unime.outdir`)."""
    from unime.data.atomic import remove_listed, warn_left
    from unime.demo.run import files_in_folders, written_by_stages
    from unime.outdir import remove_owned

    out = Path(out)
    written, unlisted = written_by_stages(out)
    left: list[str] = []

    def clear(folder: Path) -> None:
        remove_listed(out, sorted(f for f in written if f.split("/")[0] == folder.name))
        left.extend(sorted(f for f in files_in_folders(out) if f.split("/")[0] == folder.name))

    removed = remove_owned(out, "demo", DEMO_ENTRIES, overwrite=overwrite, clear=clear)
    warn_left(out, left, "inside the demo's folders (no demo stage recorded writing them)",
              f" (the markers of stages {', '.join(unlisted)} list no files — an older unime's —: remove those "
              "stages' files by hand, or give another --out)" if unlisted else "")
    return removed


@dataclass(kw_only=True)
class DemoOptions(RangeChecked):
    """Options of `unime demo` (`unime.options`): a preset's `DemoSettings` with a few overrides."""

    out: str = option("runs/demo", "output folder (stages already done there are skipped)")
    preset: str = option("default", "sizes and budgets: default (150 training records per task, 240 steps per "
                         "row); large (1,000 records per task, 540 steps per row, its own pretrained models: hours on "
                         "2 CPU cores, docs/DEMO.md); quick (= --quick)", choices=list(DEMO_PRESETS))
    quick: bool = option(False, "smoke-test sizes (CI): a tiny world and a few steps")
    fresh: bool = option(False, "delete what earlier demo runs wrote in OUT and re-run every stage (other files stay)")
    seeds: int | None = option(None, "seeds per embedder row (default: preset's)", at_least=1)
    embed_steps: int | None = option(None, "training steps of each embedder row: baseline, hard negatives, soft "
                                     "labels (default: preset's, 240; 80 takes a third of the rows' time, and there "
                                     "hard negatives do not pay: docs/DEMO.md)", metavar="N", at_least=1)
    family: str | None = option(None, "model family of the tiny models (default qwen2_vl)",
                                choices=list(FAMILIES))
    embed_rl: bool = option(False, "also run the Embed-RL stages (T-CoTs, match judge, <emb> embedders, reasoner "
                            "SFT + GRPO)")
    oracle_judge: bool = option(False, "diagnostic: also mine with the world's ground truth as the judge and train "
                                "the HN and HN + soft rows on it (separates the judge's quality from the training "
                                "recipe)")
    allow_weak_judge: bool = option(False, "continue after mining even when the judge's scores do not vary within a "
                                    "query (median spread < beta) or too many queries fell back to random negatives "
                                    "(default: stop there)")
    video_clips: int | None = option(None, "eval clips of the world's video tasks, whose rows the report shows "
                                     "(default: preset's, 24; 0 = no video)", metavar="N", at_least=0)
    device: str = option("cpu", "cpu or cuda")
    jobs: int = option(0, "run N of a stage's independent commands (one per seed) side by side in worker processes, "
                       "the CPU cores shared out among them (default 0 = auto: one per core on the CPU, at most one "
                       "per seed; 1 on a GPU)", metavar="N", at_least=0)
    overwrite: bool = option(False, cli=False)  # the command's --overwrite (with --fresh: a folder it did not create)

    def settings(self) -> DemoSettings:
        if self.quick and self.preset not in ("default", "quick"):
            from unime.errors import UsageError

            raise UsageError(f"--quick is the quick preset: it cannot be combined with --preset {self.preset}",
                             command="demo")
        settings = DemoSettings.preset("quick" if self.quick else self.preset)
        if self.seeds:
            settings.seeds = tuple(range(self.seeds))
        if self.embed_steps:
            settings.embed_steps = self.embed_steps
        if self.family:
            settings.family = self.family
        if self.allow_weak_judge:
            settings.stop_on_weak_judge = False
        if self.video_clips is not None:
            settings.video_clips = max(0, self.video_clips)
        return settings


def run_demo(opts: DemoOptions, *, console_level: int | None = None) -> Path:
    """`unime demo`: the report's path (`DemoStopped` when a gate stops the run). `console_level`: the level
    `--log-level` gives (the console shows every record it lets through), None when not given (`DemoRun`)."""
    if opts.fresh:
        fresh(opts.out, overwrite=opts.overwrite)
    return Demo(opts.out, opts.settings(), device=opts.device, embed_rl=opts.embed_rl, oracle_judge=opts.oracle_judge,
                jobs=max(0, opts.jobs), console_level=console_level).run()
