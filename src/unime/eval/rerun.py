"""`unime eval` follows the trainers' resume convention (`unime.models.run_state`) in its output folder:

- re-running the same command continues from the last complete work: every embedding is written to the
  embedding cache as its batch finishes, so a killed run's re-run encodes only what was not cached yet
  (`--no-cache` has nothing to continue from: its re-run encodes everything again);
- a finished run (same options, same inputs) says so and does nothing;
- other options are refused with the differing keys listed, unless `--overwrite` (start over);
- the task metrics of a resumed run cover every task and query (they are computed from all vectors at
  the end); `summary.json` counts the attempts (`run.attempts`), and its encoding counters and timings
  describe the whole run: each attempt records its saved work as it goes (`record_work`), and the last
  one adds the earlier attempts' (`whole_run`; work a kill lost before it reached the cache is not
  counted: it was done again).

The run's record is `OUT/eval_run.json`: the options (with the working directory, `unime.errors.with_working_dir`),
the identity of the inputs (the checkpoint files, the task files, the bytes of every image the tasks reference —
digests cached by size + mtime in `OUT/.image_digests.tsv`) and whether the run finished.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from unime.data.atomic import atomic_open
from unime.data.image_digests import ImageDigests, digest_items
from unime.data.images import ImageLoader
from unime.errors import changed_option_keys, refuse_changed_options, same_path_value, with_working_dir
from unime.models.embedding_cache import model_fingerprint

log = logging.getLogger(__name__)

RUN_FILE = "eval_run.json"
DIGESTS_FILE = ".image_digests.tsv"
# what the models' fingerprints key here: named when a model not on disk is keyed by its name only
FINISHED_RUN = "unime eval's record of its finished run"


def input_identity(out: str | Path, model: str, tasks, reranker: str | None = None, *,
                   allow_outside_root: bool = False) -> dict[str, Any]:
    """What the results depend on besides the options: checkpoint files, task files, image bytes.
    `tasks`: the loaded (spec, data) pairs; `allow_outside_root`: their media may lie outside the data root."""
    digests = ImageDigests(Path(out) / DIGESTS_FILE)
    files, images = {}, {}
    for spec, data in tasks:
        path = Path(spec.path)
        parts = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files[spec.name] = [[str(p), digests.digest(p)] for p in parts if p.is_file()]
        loader = ImageLoader(str(spec.data_root), allow_outside_root=allow_outside_root)
        images[spec.name] = digest_items(data.table.items, loader, digests)
    digests.save()
    ident = {"model": model_fingerprint(model, keyed=FINISHED_RUN), "task_files": files, "images": images}
    if reranker:
        ident["reranker"] = model_fingerprint(reranker, keyed=FINISHED_RUN)
    return ident


def read_run(out: str | Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(out) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("options"), dict) else None


def write_run(out: str | Path, record: dict[str, Any]) -> None:
    with atomic_open(Path(out) / RUN_FILE) as fh:
        json.dump(record, fh, indent=1, sort_keys=True, default=str)
        fh.write("\n")


def begin(out: str | Path, options: dict[str, Any], inputs: dict[str, Any], *, overwrite: bool,
          config=None, key_fields: dict[str, str] | None = None,
          aliases: dict[str, dict[str, str]] | None = None) -> dict | None:
    """Before the work. Returns the finished run's summary if the folder holds this very run finished
    (nothing to do), else None after recording the attempt. Raises `ChangedOptions` for other options
    unless `overwrite`, naming each option as the user gives it (`refuse_changed_options`: a field of `config`,
    or of `key_fields` {key: field}, by the field from Python, by its option on the command line). `aliases`
    ({key: {spelling: value}}, `unime.options.option_aliases`): the spellings of one value are no change, on either
    side (a run recorded with `--dtype float32` is the run of `--dtype fp32`); the options are recorded as given."""
    out = Path(out)
    options = json.loads(json.dumps(options, default=str))
    before = read_run(out)
    attempts = 0
    earlier: dict = {}  # the saved work of the interrupted attempts this one continues
    if before is not None:
        keys = changed_option_keys(before["options"], options, aliases=aliases)
        if keys and not overwrite:
            raise refuse_changed_options(out, before["options"], options, keys, config, key_fields=key_fields)
        if keys:
            log.warning("%s: options changed (%s); --overwrite: starting over", out, ", ".join(keys))
        else:
            recorded, now = same_path_value(before.get("inputs") or {}), same_path_value(inputs)  # task files' paths
            if recorded != now:
                log.warning("%s: inputs changed since the last run (%s): evaluating again", out,
                            ", ".join(k for k in now if recorded.get(k) != now[k]))
            elif before.get("finished") and not overwrite and (out / "summary.json").is_file():
                log.info("%s: this evaluation finished earlier (same options and inputs); nothing to do", out)
                return json.loads((out / "summary.json").read_text(encoding="utf-8"))
            attempts = int(before.get("attempts", 0))
            if not before.get("finished") and isinstance(before.get("attempt_work"), dict):
                earlier = before["attempt_work"]
    write_run(out, {"options": with_working_dir(options), "inputs": inputs, "finished": False, "attempts": attempts + 1,
                    "attempt_work": earlier})
    return None


def record_work(out: str | Path, *, encoded: int, encode_seconds: float, wall_seconds: float) -> None:
    """During an attempt, after each block of embeddings is saved to the cache: what this attempt has done
    so far (kept in `eval_run.json` as `attempt_work`, so a killed attempt's saved work still counts)."""
    record = read_run(out)
    if record is None:
        return
    work = record.get("attempt_work") if isinstance(record.get("attempt_work"), dict) else {}
    work[str(record.get("attempts", 1))] = {"encoded": int(encoded), "encode_seconds": round(encode_seconds, 3),
                                            "wall_seconds": round(wall_seconds, 3)}
    record["attempt_work"] = work
    write_run(out, record)


def whole_run(out: str | Path, encoding: dict, timing: dict) -> tuple[dict, dict]:
    """The last attempt's encoding counters and timings → the whole run's: the interrupted attempts'
    saved work is added (their encoded items are the last attempt's cache hits, so `from_cache` counts only
    what was cached before the run began); `last_attempt` keeps the last attempt's own figures."""
    record = read_run(out) or {}
    this = str(record.get("attempts", 1))
    work = record.get("attempt_work") if isinstance(record.get("attempt_work"), dict) else {}
    earlier = [w for k, w in work.items() if k != this and isinstance(w, dict)]
    if not earlier:
        return encoding, timing
    enc_before = sum(int(w.get("encoded", 0)) for w in earlier)
    whole_enc = {**encoding, "encoded": encoding["encoded"] + enc_before,
                 "from_cache": encoding["from_cache"] - enc_before,
                 "encode_seconds": round(encoding["encode_seconds"] + sum(float(w.get("encode_seconds", 0))
                                                                          for w in earlier), 3),
                 "last_attempt": dict(encoding)}
    whole_time = {**timing, "wall_seconds": round(timing.get("wall_seconds", 0.0) + sum(
        float(w.get("wall_seconds", 0)) for w in earlier), 3), "last_attempt": dict(timing)}
    return whole_enc, whole_time


def finish(out: str | Path) -> None:
    record = read_run(out)
    if record is not None:
        record["finished"] = True
        write_run(out, record)


def attempts(out: str | Path) -> int:
    record = read_run(out)
    return int(record.get("attempts", 1)) if record else 1
