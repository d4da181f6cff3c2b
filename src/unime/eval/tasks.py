"""Evaluation task lists (data, not code) and the readers of each task format.

A task config is YAML (see docs/CONTRACTS.md, "Eval task config")::

    root: .                 # optional: folder task paths are relative to (default: this file's folder);
                            # may use ${ENV_VAR}; `unime eval --tasks-root DIR` overrides it
    data_root: .            # optional, relative to root: image paths in the data are relative to it
    defaults: {format: mmeb}  # optional: keys merged into every task
    tasks:
      - {name: shape_cls, format: mmeb, path: eval/mmeb/shape_cls.jsonl, meta_task: classification, split: IND}
      - {name: scene_captions, format: retrieval, path: eval/retrieval/scene_captions.jsonl}
      - {name: swap, format: compositional, path: eval/compositional/swap.jsonl}
      - {name: docs, format: qrels, path: eval/qrels/docs.jsonl}

Formats and their files (`path` may also be a folder: every ``*.jsonl`` / ``*.parquet`` in it, sorted,
is read as one task — the layout of a Hugging Face dataset snapshot such as MMEB-eval):

- ``mmeb``: VLM2Vec's MMEB-eval rows ``{qry_text, qry_img_path, tgt_text: [..], tgt_img_path: [..]}``,
  the positive at index 0 (JSONL or Parquet). Optional ``id``. ``meta_task`` (classification, vqa,
  retrieval, grounding, or any other label) and ``split`` (IND / OOD) feed the aggregates.
- ``retrieval``: Flickr30K / COCO style ``{"image": path, "captions": [..]}`` per line. Options:
  ``text_template`` (default ``"{text}"``), ``image_template`` (the text that goes with each image,
  e.g. an instruction with ``<|image_1|>``; default empty), ``recall_ks`` (default [1, 5, 10]).
- ``compositional``: SugarCrepe style ``{"image", "positive", "negative", "category"?, "id"?}``; the
  category defaults to the task's ``category`` option, else the task name. Options as retrieval.
- ``qrels`` (graded relevance): either a JSONL file with one query per line
  ``{"id"?, "query": {item}, "candidates": [{item}, ..], "relevance": [grade, ..]}`` (grades >= 0), or a
  BEIR folder ``corpus.jsonl`` (``_id``, ``text``, ``title``?, ``image``?), ``queries.jsonl`` (``_id``,
  ``text``, ``image``?), ``qrels/<qrels_split>.tsv`` (``query-id  corpus-id  score``, header line),
  every query ranked against the whole corpus; a BEIR folder's image paths are relative to it (or to the root
  recorded for its corpus, `unime.data.beir.beir_data_root`) unless the task or the config sets ``data_root``.
  Options: ``query_template``, ``candidate_template``, ``ks`` (NDCG / recall cut-offs, default [5, 10]),
  ``qrels_split`` (default ``test``), ``ignore_identical_ids`` (BEIR folders; default true, as BEIR's
  ``EvaluateRetrieval.evaluate``: a corpus document whose ``_id`` is the query's is never retrieved for it,
  `unime.eval.runners.score_graded_queries`; false keeps it).

- ``mmeb_v2``: VLM2Vec's MMEB-V2 rows (video and visual-document tasks; ``unime.data.mmeb_v2``), local or
  global ranking, Hit@1 or NDCG@5 (``unime.eval.mmeb_v2``). Any task may carry ``modality`` (image, video,
  visdoc): the MMEB-V2 aggregates group by it.

MMEB rows, retrieval entries, compositional pairs and BEIR folders are parsed by the data layer
(`unime.data.eval_formats`, `unime.data.beir`), one row at a time, with its error policy: a bad row raises `DataError`
naming file, record and field, or with ``on_error="skip"`` is left out and counted. Rows of every format
have their images and videos checked as they are read (`_parsed_rows`), so bad media counts as a bad row —
except, under the skip policy, a bad candidate of an MMEB, qrels or MMEB-V2 row: that candidate leaves the row
(counted in the task's ``dropped_candidates``) when the row keeps a relevant candidate (MMEB: its positive; qrels:
one with a grade > 0; MMEB-V2: a label or one graded > 0 — a bad relevant one leaves while another remains) and
another candidate. In a global MMEB-V2 task it leaves the one pool every row ranks (counted once); a row whose
relevant candidates all left is skipped.
A task whose data file (or folder, or corpus) is missing raises `MissingTaskDataError`, an `EmptyTaskError`
(under the skip policy `unime eval` reports it and scores the tasks it has). A task left with no rows raises
`EmptyTaskError`, and so, under the skip policy, does a graded task (qrels,
MMEB-V2) left with no query that has a relevant candidate (`unime eval` reports it and scores the other tasks).

Each task's data is interned into an `ItemTable` (its distinct items) plus integer arrays, so a task
with 1,000 queries x 1,000 shared candidates holds 1,000 + distinct items, not a million.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

from unime.data.beir import (CORPUS_FILE, QRELS_FOLDER, QUERIES_FILE, beir_data_root, beir_files, beir_row_from_dict,
                             first_of_each_id, is_beir_folder, looks_like_beir_folder, read_beir_qrels)
from unime.data.eval_formats import (MMEBRow, QrelsRow, compositional_pair_from_dict, mmeb_row_from_dict,
                                     qrels_row_from_dict, retrieval_entry_from_dict)
from unime.data.eval_formats import iter_rows as iter_format_rows
from unime.data.items import Item
from unime.data.jsonl import read_text_file
from unime.data.mmeb_v2 import V2Row, v2_row_from_dict
from unime.data.skips import ErrorPolicy, SkipReport, data_error, reason_of
from unime.errors import DataError
from unime.eval.mmeb_v2 import DEFAULT_EVAL_TYPE, EVAL_TYPES

FORMATS = ("mmeb", "retrieval", "compositional", "qrels", "mmeb_v2")
MMEB_META_TASKS = ("classification", "vqa", "retrieval", "grounding")  # paper's column order
SPLITS = ("IND", "OOD")
TASK_CONFIG_FILENAME = "eval_tasks.yaml"

log = logging.getLogger(__name__)


class EmptyTaskError(DataError):
    """A task with no (good) rows to score; under the skip policy `load_task_data` sets the rows it skipped
    (`skipped`) and the first of them (`first_skipped`, its `DataError`: file, record, field)."""

    skipped: int = 0
    first_skipped: DataError | None = None


class MissingTaskDataError(EmptyTaskError):
    """A task whose data file or folder (or corpus) is not there: a partial copy of a benchmark."""


_COMMON_KEYS = {"name", "format", "path", "data_root", "meta_task", "split", "modality"}
_FORMAT_KEYS = {
    "mmeb": set(),
    "retrieval": {"text_template", "image_template", "recall_ks"},
    "compositional": {"text_template", "image_template", "category"},
    "qrels": {"query_template", "candidate_template", "ks", "qrels_split", "ignore_identical_ids"},
    "mmeb_v2": {"eval_type", "corpus", "metric", "ks"},  # see unime.eval.mmeb_v2
}
MODALITIES = ("image", "video", "visdoc")  # MMEB-V2's three groups
_META_ALIASES = {"cls": "classification", "classification": "classification", "vqa": "vqa", "qa": "vqa",
                 "retrieval": "retrieval", "ret": "retrieval", "grounding": "grounding", "vg": "grounding",
                 "visual_grounding": "grounding", "mret": "moment_retrieval",
                 "moment_retrieval": "moment_retrieval"}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    format: str
    path: Path            # absolute
    data_root: Path       # absolute: image paths are relative to it
    meta_task: str | None = None
    split: str | None = None
    options: dict = field(default_factory=dict, hash=False, compare=False)
    modality: str | None = None  # MMEB-V2: image, video or visdoc

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass
class TaskSuite:
    source: Path
    tasks: list[TaskSpec]


# -- config --------------------------------------------------------------------------------------------

def packaged_task_configs() -> list[str]:
    """Names of the task configs shipped with unime (usable as `--tasks NAME`)."""
    folder = resources.files("unime") / "configs"
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_task_config(arg: str | os.PathLike) -> Path:
    """`--tasks` argument → config file: a folder means FOLDER/eval_tasks.yaml; a file is itself; a bare
    name of a shipped config (e.g. ``mmeb_v1``) is that config."""
    p = Path(arg)
    if p.is_dir():
        cfg = p / TASK_CONFIG_FILENAME
        if not cfg.is_file():
            raise DataError(f"folder has no {TASK_CONFIG_FILENAME}", source=str(p))
        return cfg
    if p.is_file():
        return p
    name = str(arg)
    if name in packaged_task_configs():
        return Path(str(resources.files("unime") / "configs" / f"{name}.yaml"))
    raise DataError(f"no such task config file or folder; shipped configs: {packaged_task_configs()}",
                    source=str(arg))


def _expand(value: str, *, source: str, field_name: str) -> str:
    out = os.path.expanduser(os.path.expandvars(value))
    missing = re.findall(r"\$\{?(\w+)\}?", out)
    if missing:
        raise DataError(f"{value!r} uses unset environment variable(s) {missing}; set them or pass "
                        "--tasks-root", source=source, field=field_name)
    return out


MMEB_FILE_SUFFIXES = (".jsonl", ".parquet")


def _is_mmeb_source(arg: str | os.PathLike) -> bool:
    p = Path(arg)
    if p.is_file():
        return p.suffix.lower() in MMEB_FILE_SUFFIXES
    return p.is_dir() and not (p / TASK_CONFIG_FILENAME).is_file() and any(
        f.suffix.lower() in MMEB_FILE_SUFFIXES for f in p.iterdir())


def _is_beir_source(arg: str | os.PathLike) -> bool:
    """A BEIR folder given to --tasks (detected as `unime data check` detects it), not a folder with a task config."""
    return looks_like_beir_folder(arg) and not (Path(arg) / TASK_CONFIG_FILENAME).is_file()


def beir_folder_task(folder: str | os.PathLike, *, root: str | os.PathLike | None = None) -> TaskSpec:
    """A BEIR folder given directly, as a qrels task named after the folder: its images relative to `root`, else to
    the folder (`beir_data_root`); its judgements ``qrels/test.tsv``, else the folder's one ``qrels/*.tsv`` (several
    without test.tsv: a task config's ``qrels_split`` says which). A missing part is a `DataError` naming it."""
    _, _, qrels = beir_files(folder)
    splits = [q.stem for q in qrels]
    if "test" not in splits and len(splits) > 1:
        raise DataError(f"BEIR folder with several qrels files {splits} and no test.tsv: write a task config naming "
                        "the split, e.g. tasks: [{name: NAME, format: qrels, path: FOLDER, qrels_split: "
                        f"{splits[0]}}}]", source=str(folder))
    path = Path(folder).resolve()
    options = {} if "test" in splits else {"qrels_split": splits[0]}
    return TaskSpec(name=path.name, format="qrels", path=path, data_root=beir_data_root(path, root), options=options)


def _known_mmeb_tasks() -> dict[str, tuple[str | None, str | None]]:
    """name → (meta_task, split) of the shipped MMEB config (so MMEB-eval files keep their aggregates)."""
    try:
        cfg = yaml.safe_load((resources.files("unime") / "configs" / "mmeb_v1.yaml").read_text(encoding="utf-8"))
        return {t["name"]: (t.get("meta_task"), t.get("split")) for t in cfg.get("tasks", [])}
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError):
        return {}


def mmeb_file_suite(sources: list[str | os.PathLike], *, root: str | os.PathLike | None = None) -> TaskSuite:
    """A suite of MMEB-eval files given directly: each ``.jsonl`` / ``.parquet`` file is one task named after
    it; a folder (without an eval_tasks.yaml) contributes every such file in it, sorted. Image paths are
    relative to `root`, else to the folder's recorded data root (`unime.data.roots`), else the file's
    folder. A name of the shipped MMEB-v1 config keeps its meta-task and split; a name ending in
    ``_cls`` counts as classification."""
    from unime.data.roots import resolve_data_root

    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in MMEB_FILE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError("no such MMEB file or folder", source=str(src))
    known = _known_mmeb_tasks()
    tasks: list[TaskSpec] = []
    seen: set[str] = set()
    for f in files:
        name = f.stem
        if name in seen:
            raise DataError(f"two MMEB files are named {name!r}; give them distinct names or write a task config",
                            source=str(f))
        seen.add(name)
        guess = "classification" if name.endswith("_cls") else "retrieval" if name.endswith(("_i2t", "_t2i")) else None
        meta, split = known.get(name, (guess, None))
        data_root = Path(resolve_data_root(f, root))
        tasks.append(TaskSpec(name=name, format="mmeb", path=f.resolve(), data_root=data_root.resolve(),
                              meta_task=meta, split=split))
    if not tasks:
        raise DataError("no MMEB files (.jsonl / .parquet)", source=", ".join(map(str, sources)))
    return TaskSuite(source=Path(sources[0]).resolve(), tasks=tasks)


def load_task_config(path_or_dir: str | os.PathLike | list, *, root: str | os.PathLike | None = None,
                     only: list[str] | None = None) -> TaskSuite:
    """Read and validate a task config. `root` overrides the config's ``root``; `only` keeps the named
    tasks (in config order; an unknown name is an error). MMEB-eval files, or folders of them, and BEIR folders
    may be given instead of a config (one or a list; see `mmeb_file_suite`, `beir_folder_task`)."""
    sources = list(path_or_dir) if isinstance(path_or_dir, (list, tuple)) else [path_or_dir]
    if len(sources) > 1 or _is_beir_source(sources[0]) or _is_mmeb_source(sources[0]):
        if not all(_is_beir_source(s) or _is_mmeb_source(s) for s in sources):
            bad = [str(s) for s in sources if not (_is_beir_source(s) or _is_mmeb_source(s))]
            raise DataError("several --tasks values must all be MMEB files (.jsonl / .parquet), folders of them or "
                            "BEIR folders", source=bad[0])
        beir = [beir_folder_task(s, root=root) for s in sources if _is_beir_source(s)]
        mmeb = [s for s in sources if not _is_beir_source(s)]
        suite = mmeb_file_suite(mmeb, root=root) if mmeb else TaskSuite(source=Path(sources[0]).resolve(), tasks=[])
        names = [t.name for t in suite.tasks]
        for t in beir:
            if t.name in names:
                raise DataError(f"two tasks are named {t.name!r} (a task is named after its file or BEIR folder); "
                                "write a task config to name them", source=str(t.path))
            names.append(t.name)
        return _keep_only(TaskSuite(source=suite.source, tasks=suite.tasks + beir), only)
    path_or_dir = sources[0]
    cfg_path = resolve_task_config(path_or_dir)
    source = str(cfg_path)
    try:
        cfg = yaml.safe_load(read_text_file(cfg_path))
    except yaml.YAMLError as e:
        raise DataError(f"malformed YAML: {e}", source=source) from None
    if not isinstance(cfg, dict):
        raise DataError("a task config must be a mapping with a 'tasks' list", source=source)
    unknown = set(cfg) - {"root", "data_root", "defaults", "tasks", "name", "description"}
    if unknown:
        raise DataError(f"unknown top-level keys {sorted(unknown)}", source=source)
    if root is not None:
        base = Path(root)
    elif cfg.get("root") is not None:
        base = Path(_expand(str(cfg["root"]), source=source, field_name="root"))
        if not base.is_absolute():
            base = cfg_path.parent / base
    else:
        base = cfg_path.parent
    base = base.resolve()
    data_root = cfg.get("data_root")
    data_root = (base / _expand(str(data_root), source=source, field_name="data_root")).resolve() \
        if data_root is not None else base
    defaults = cfg.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise DataError("'defaults' must be a mapping", source=source, field="defaults")
    raw_tasks = cfg.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise DataError("'tasks' must be a non-empty list", source=source, field="tasks")

    tasks: list[TaskSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_tasks):
        if not isinstance(raw, dict):
            raise DataError("a task must be a mapping", source=source, record=i + 1, field="tasks")
        t = {**defaults, **raw}
        rec = t.get("name", i + 1)
        name = t.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DataError("missing task name", source=source, record=i + 1, field="name")
        if name in seen:
            raise DataError(f"duplicate task name {name!r}", source=source, record=name, field="name")
        seen.add(name)
        fmt = t.get("format")
        if fmt not in FORMATS:
            raise DataError(f"format must be one of {FORMATS}, got {fmt!r}", source=source, record=rec,
                            field="format")
        bad = set(t) - _COMMON_KEYS - _FORMAT_KEYS[fmt]
        if bad:
            raise DataError(f"unknown keys {sorted(bad)} for format {fmt}", source=source, record=rec,
                            field=sorted(bad)[0])
        if not isinstance(t.get("path"), str) or not t["path"]:
            raise DataError("missing path", source=source, record=rec, field="path")
        meta = t.get("meta_task")
        if meta is not None:
            meta = _META_ALIASES.get(str(meta).lower(), str(meta).lower())
        split = t.get("split")
        if split is not None:
            split = str(split).upper()
            if split not in SPLITS:
                raise DataError(f"split must be one of {SPLITS}, got {t['split']!r}", source=source, record=rec,
                                field="split")
        task_root = data_root
        if t.get("data_root") is not None:
            task_root = (base / _expand(str(t["data_root"]), source=source, field_name="data_root")).resolve()
        path = (base / _expand(t["path"], source=source, field_name="path")).resolve()
        if fmt == "qrels" and cfg.get("data_root") is None and t.get("data_root") is None and is_beir_folder(path):
            task_root = beir_data_root(path)  # a BEIR folder is self-contained: as `unime data check` reads it
        options = {k: v for k, v in t.items() if k in _FORMAT_KEYS[fmt]}
        _check_options(options, source=source, record=rec)
        modality = t.get("modality")
        if modality is not None and modality not in MODALITIES:
            raise DataError(f"modality must be one of {MODALITIES}, got {modality!r}", source=source, record=rec,
                            field="modality")
        if fmt == "mmeb_v2":
            eval_type = options.get("eval_type", DEFAULT_EVAL_TYPE)
            if eval_type not in EVAL_TYPES:
                raise DataError("eval_type must be 'local' or 'global'", source=source, record=rec, field="eval_type")
            if eval_type == "local" and options.get("corpus") is not None:
                raise DataError("a corpus joins the pool of a global task; a local task ranks each row's own "
                                "candidates (drop `corpus` or set `eval_type: global`)", source=source, record=rec,
                                field="corpus")
            if options.get("metric", "hit@1") not in ("hit@1", "ndcg@5"):
                raise DataError("metric must be 'hit@1' or 'ndcg@5'", source=source, record=rec, field="metric")
            if options.get("corpus") is not None:
                if not isinstance(options["corpus"], str) or not options["corpus"]:
                    raise DataError("must be a path", source=source, record=rec, field="corpus")
                options["corpus"] = str((base / _expand(options["corpus"], source=source,
                                                        field_name="corpus")).resolve())
        tasks.append(TaskSpec(name=name, format=fmt, path=path, data_root=task_root, meta_task=meta, split=split,
                              options=options, modality=modality))
    return _keep_only(TaskSuite(source=cfg_path, tasks=tasks), only)


def _keep_only(suite: TaskSuite, only: list[str] | None) -> TaskSuite:
    if not only:
        return suite
    names = {t.name for t in suite.tasks}
    missing = [n for n in only if n not in names]
    if missing:
        raise DataError(f"unknown task(s) {missing}; the config has {sorted(names)}", source=str(suite.source))
    return TaskSuite(source=suite.source, tasks=[t for t in suite.tasks if t.name in set(only)])


def _check_options(options: dict, *, source: str, record) -> None:
    for key in ("text_template", "image_template", "query_template", "candidate_template", "category",
                "qrels_split"):
        if key in options and not isinstance(options[key], str):
            raise DataError("must be a string", source=source, record=record, field=key)
    if "ignore_identical_ids" in options and not isinstance(options["ignore_identical_ids"], bool):
        raise DataError("must be true or false", source=source, record=record, field="ignore_identical_ids")
    for key in ("recall_ks", "ks"):
        if key in options:
            ks = options[key]
            if not isinstance(ks, list) or not ks or not all(isinstance(k, int) and k >= 1 for k in ks):
                raise DataError("must be a non-empty list of positive integers", source=source, record=record,
                                field=key)


# -- interned task data ---------------------------------------------------------------------------------

Where = tuple[str, str, str]  # (file, record, field) an item was read from


class ItemTable:
    """The distinct items of one task, each stored once; `add` returns the item's index. `origins` holds, per
    item, where it was first read (file, record, field), when the reader said: a video decoded only when the
    item is encoded is named there if it fails (`RunEncoder.add`)."""

    def __init__(self):
        self.items: list[Item] = []
        self.origins: list[Where | None] = []
        self._index: dict[Item, int] = {}

    def add(self, item: Item, where: Where | None = None) -> int:
        idx = self._index.get(item)
        if idx is None:
            idx = self._index[item] = len(self.items)
            self.items.append(item)
            self.origins.append(where)
        return idx

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class MMEBData:
    table: ItemTable
    query: np.ndarray              # (n,) item index of each query
    candidates: list[np.ndarray]   # per query: item indices of its candidates, positive first
    ids: list[str]

    skipped: int = 0  # rows left out under on_error="skip"
    dropped_candidates: int = 0  # bad candidates (not the positive) left out of their rows under on_error="skip"

    @property
    def references(self) -> int:
        return len(self.query) + sum(len(c) for c in self.candidates)


@dataclass
class RetrievalData:
    table: ItemTable
    image: np.ndarray         # (n_images,) item index of each image item
    caption: np.ndarray       # (n_captions,) item index of each caption item
    caption_image: np.ndarray  # (n_captions,) position (0..n_images-1) of the caption's image

    skipped: int = 0  # rows left out under on_error="skip"

    @property
    def references(self) -> int:
        return len(self.image) + len(self.caption)


@dataclass
class CompositionalData:
    table: ItemTable
    image: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    category: list[str]
    ids: list[str]

    skipped: int = 0  # rows left out under on_error="skip"

    @property
    def references(self) -> int:
        return 3 * len(self.image)


@dataclass
class QrelsData:
    table: ItemTable
    query: np.ndarray
    candidates: list[np.ndarray]   # per query: item indices of its candidates (may be one shared array)
    grades: list[np.ndarray]       # per query: grade of each candidate (float, >= 0)
    ids: list[str]
    shared_corpus: bool = False    # BEIR: every query ranks the same corpus
    corpus_ids: list[str] | None = None  # BEIR: the corpus' `_id`s, in `candidates[0]`'s order (a run file's doc ids)
    # BEIR (``ignore_identical_ids``): per query, the corpus position of the document with the query's id (-1: none),
    # which is never retrieved for it
    identical: list[int] | None = None

    skipped: int = 0  # rows left out under on_error="skip"
    dropped_candidates: int = 0  # bad candidates left out of their rows under on_error="skip" (qrels, mmeb_v2)

    @property
    def references(self) -> int:
        if self.shared_corpus:
            return len(self.query) + (len(self.candidates[0]) if self.candidates else 0)
        return len(self.query) + sum(len(c) for c in self.candidates)


TaskData = MMEBData | RetrievalData | CompositionalData | QrelsData


# -- MMEB-V2 rows (format ``mmeb_v2``, options: `unime.eval.mmeb_v2`) --------------------------------------------------

def read_mmeb_v2_task(spec: TaskSpec, policy: ErrorPolicy, images=None) -> QrelsData:
    """V2 rows → per query: candidate item indices and their relevance grades. Under the skip policy a bad
    candidate leaves its row (`_v2_keep`), or in a global task the pool, counted once (`_v2_pool_keep`): a row
    whose relevant candidates all left the pool, or whose pool was left with one candidate, is skipped."""
    table = ItemTable()
    eval_type = spec.option("eval_type", DEFAULT_EVAL_TYPE)
    rows: list[tuple[str, str, V2Row]] = []
    images = images or _image_checker(spec)
    dropped = _candidate_drops(policy, by_name=eval_type == "global")
    keep = _v2_pool_keep if eval_type == "global" else _v2_keep
    for f in _data_files(spec.path, task=spec.name):
        for source, label, row in _parsed_rows(f, v2_row_from_dict, policy, task=spec.name, images=images,
                                               dropped=dropped, keep=keep):
            rows.append((source, label, row))
    if not rows:
        raise _no_rows(spec)
    queries, cands, grades, ids = [], [], [], []
    names = QueryNames(spec, policy)

    def grades_for(row: V2Row, names: list[str], where: tuple[str, str]) -> np.ndarray | None:
        pos: dict[str, list[int]] = {}  # a name listed twice names both places: each is that candidate
        for j, n in enumerate(names):
            pos.setdefault(n, []).append(j)
        for lab in row.labels:
            if lab not in pos:
                policy.handle(data_error("schema", f"label {lab!r} is not among the "
                                         f"{'pool' if eval_type == 'global' else 'row'}'s candidates",
                                         source=where[0], record=where[1], field="dataset_infos.label_name"))
                return None
        return np.asarray([_v2_grade(row, n) for n in names], dtype=np.float64)

    if eval_type == "global":
        pool_names: list[str] = []
        pool_items: list[int] = []
        seen: dict[str, int] = {}

        def add_pool(row: V2Row, where: tuple[str, str]) -> None:
            for j, c in enumerate(row.candidates):
                idx = table.add(c.item, (*where, f"cand[{j}]"))
                if c.name in seen:
                    if pool_items[seen[c.name]] != idx:
                        policy.handle(data_error("schema", f"candidate name {c.name!r} names two different items",
                                                 source=where[0], record=where[1], field="dataset_infos.cand_names"))
                    continue
                seen[c.name] = len(pool_names)
                pool_names.append(c.name)
                pool_items.append(idx)

        corpus = spec.option("corpus")
        if not corpus and spec.meta_task == "classification":
            log.warning("task %s: a global classification task without `corpus`: its pool holds only the labels its "
                        "rows list, VLM2Vec's every label of the dataset (leaderboard parity needs the label "
                        "corpus: see the shipped mmeb_v2 config)", spec.name)
        # VLM2Vec's order (generate_cand_dataset): the rows' candidates, then the corpus; `--ties index` sees it
        for source, label, row in rows:
            add_pool(row, (source, label))
        if corpus:
            for f in _data_files(Path(corpus), task=spec.name):
                for source, label, row in _parsed_rows(f, lambda o, **kw: v2_row_from_dict(o, corpus=True, **kw),
                                                       policy, task=spec.name, images=images, dropped=dropped,
                                                       keep=keep):
                    add_pool(row, (source, label))
        pool = np.asarray(pool_items, dtype=np.int64)
        for source, label, row in rows:
            try:
                row = _v2_in_pool(row, dropped, pool_names, source=source, record=label)
            except DataError as e:
                policy.handle(e)
                continue
            g = grades_for(row, pool_names, (source, label))
            name = None if g is None else names.name(source, label, row.id)
            if name is None:
                continue
            queries.append(table.add(row.query, (source, label, "query")))
            cands.append(pool)
            grades.append(g)
            ids.append(name)
        shared = True
    else:
        single = [label for _, label, row in rows if len(row.candidates) == 1]
        if single:
            log.warning("task %s: %d of %d rows have a single candidate, a hit whatever the model (local ranking; "
                        "VLM2Vec's default, eval_type: global, ranks the pool of all rows' candidates): rows %s%s",
                        spec.name, len(single), len(rows), ", ".join(single[:5]), ", ..." if len(single) > 5 else "")
        for source, label, row in rows:
            g = grades_for(row, [c.name for c in row.candidates], (source, label))
            name = None if g is None else names.name(source, label, row.id)
            if name is None:
                continue
            queries.append(table.add(row.query, (source, label, "query")))
            cands.append(np.asarray([table.add(c.item, (source, label, f"cand[{j}]"))
                                     for j, c in enumerate(row.candidates)], dtype=np.int64))
            grades.append(g)
            ids.append(name)
        shared = False
    n_dropped = _dropped_total(spec, dropped)
    if not queries:
        raise _no_rows(spec)
    return QrelsData(table=table, query=np.asarray(queries, dtype=np.int64), candidates=cands, grades=grades,
                     ids=ids, shared_corpus=shared, dropped_candidates=n_dropped)


def _v2_in_pool(row: V2Row, dropped: CandidateDrops | None, pool_names: list[str], *, source: str,
                record: str) -> V2Row:
    """A global row ready to be graded against the pool after bad candidates left it (`_v2_pool_keep`): without
    the labels and scores of those candidates. It cannot be scored when all its relevant candidates left, or the
    pool kept one candidate only: then the error of a bad candidate, named at the row, is raised."""
    if not dropped or not dropped.first:
        return row
    from unime.data.io import raw_message

    in_pool = set(pool_names)
    relevant = [n for n in dict.fromkeys((*row.labels, *row.rel_scores)) if _v2_grade(row, n) > 0]
    lost = [n for n in relevant if n in dropped.first and n not in in_pool]
    if lost and not any(n in in_pool for n in relevant):
        name, why = lost[0], "its relevant candidate"
    elif len(pool_names) < 2:
        name, why = next(iter(dropped.first)), "a candidate of the pool (one is left)"
    else:
        return _v2_without(row, row.candidates, set(lost))
    err = dropped.first[name]
    raise data_error(reason_of(err), f"{why} {name!r} is bad: {raw_message(err)}", source=source, record=record,
                     field="dataset_infos.label_name")


def load_task_data(spec: TaskSpec, *, on_error: str = "raise", skips: SkipReport | None = None,
                   image_loader=None) -> TaskData:
    """Read one task's data. Bad rows raise `DataError` (file, record, field), or under
    ``on_error="skip"`` are left out and counted in `skips` (and in the task's ``skipped``).

    Videos are checked from their headers (the encoder decodes them later; one that fails then names its
    file, line and field: `ItemTable.origins`), except under the skip policy: there each is decoded here with
    the run's video sampling, so a clip damaged past its header leaves its row out like any bad media, and the
    encoder finds the frames in the frame cache. The media are checked by the rules of `image_loader` (the
    model's, from `unime.models.loading.checkpoint_image_loader`: its video sampling, its processor's
    aspect-ratio limit, whether paths may leave the data root), under the task's data root; default: an
    `ImageLoader`'s defaults (no aspect-ratio limit, media paths inside the task's data root)."""
    reader = {"mmeb": read_mmeb_task, "retrieval": read_retrieval_task, "compositional": read_compositional_task,
              "qrels": read_qrels_task, "mmeb_v2": read_mmeb_v2_task}[spec.format]
    policy = ErrorPolicy(on_error, skips, f"task {spec.name}")
    try:
        data = reader(spec, policy, _image_checker(spec, image_loader, decode_video=on_error == "skip"))
        data.skipped = policy.skipped
        policy.finish()
        if on_error == "skip" and isinstance(data, QrelsData) and not any(np.any(g > 0) for g in data.grades):
            raise EmptyTaskError(f"task {spec.name!r}: no query has a relevant candidate", source=str(spec.path))
    except EmptyTaskError as e:  # the rows skipped before the task ran empty: counted and the first one named
        e.skipped, e.first_skipped = policy.skipped, policy.first
        raise
    return data


# -- raw rows --------------------------------------------------------------------------------------------

def _data_files(path: Path, *, task: str) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".parquet") and p.is_file())
        if not files:
            raise MissingTaskDataError(f"task {task!r}: folder has no .jsonl or .parquet files", source=str(path))
        return files
    if not path.is_file():
        raise MissingTaskDataError(f"task {task!r}: data file not found", source=str(path))
    return [path]


def _image_checker(spec: TaskSpec, image_loader=None, *, decode_video: bool = False):
    """The media check of a task's rows by `image_loader`'s rules (default: `ImageLoader`'s) under the task's data
    root: images decoded; videos from their headers only, as the encoder decodes them anyway, unless
    `decode_video` (with the loader's video sampling: the frames land in the frame cache the encoder reads,
    `unime.data.video.load_video`). A missing file names the folder a relative path was looked in, as in every
    command (`unime.data.video.missing_file_problem`). See `ImageChecker`."""
    from unime.data.images import ImageLoader
    from unime.data.io import ImageChecker

    return ImageChecker((image_loader or ImageLoader()).under(spec.data_root), decode_video=decode_video)


def _parsed_rows(path: Path, parse: Callable, policy: ErrorPolicy, *, task: str, images=None,
                 dropped: CandidateDrops | None = None, keep: Callable | None = None) -> Iterator[tuple[str, str, Any]]:
    """(file, record label, parsed row) for every good row of a task's file(s); bad rows go through `policy`.
    Rows are parsed by the data layer (`unime.data.eval_formats`), one at a time. With `images` (an
    `ImageChecker`, `_image_checker`) every image of a row is opened and decoded here, before any model is
    loaded, and every video opened and its header checked (decoded under the skip policy, `load_task_data`): a
    bad one names the file, the row and the field, and under the skip policy leaves the row out. With `dropped`
    and `keep` (MMEB, qrels and MMEB-V2 rows, skip policy) a bad candidate leaves only its row's candidate list
    when the row stays scorable, counted in `dropped` (`_without_bad_candidates`)."""
    for f in _data_files(path, task=task):
        for label, obj in iter_format_rows(f, policy):
            try:
                row = parse(obj, source=str(f), record=label)
                if images is not None and dropped is not None:
                    row = _without_bad_candidates(row, images, dropped, keep, source=str(f), record=label)
                elif images is not None:
                    images.check(row, source=str(f), record=label)
                yield str(f), label, row
            except DataError as e:
                policy.handle(e)


class QueryNames:
    """Each query's name in a task (`TaskResult.per_query`'s ``id``): its row's ``id``, else where it was read
    ("line 5"), prefixed with its file's path in the task's folder when the task reads several files ("b.jsonl
    line 5"), as two files both have a line 5. Per-query results are matched by this name (the paired bootstrap,
    `unime.eval.significance`; a TREC run's query ids), so a name given twice in a task is refused as BEIR's
    reader refuses a repeated ``_id``: a `DataError` naming both places, through `policy` (the later row left out
    under the skip policy)."""

    def __init__(self, spec: TaskSpec, policy: ErrorPolicy):
        self.policy = policy
        self.task = spec.name
        self.folder = spec.path if spec.path.is_dir() and len(_data_files(spec.path, task=spec.name)) > 1 else None
        self.first: dict[str, str] = {}

    def name(self, source: str, label: str, row_id: str) -> str | None:
        """The row's name, or None when the task already has a query of that name (the error handled)."""
        name = row_id or (f"{Path(source).relative_to(self.folder).as_posix()} {label}" if self.folder else label)
        where = f"{source}, {label}"
        if name in self.first:
            self.policy.handle(data_error("schema", f"task {self.task!r}: query id {name!r} given twice (first at "
                                          f"{self.first[name]}); per-query results would merge them",
                                          source=source, record=label, field="id"))
            return None
        self.first[name] = where
        return name


def _template(template: str, text: str) -> str:
    return template.replace("{text}", text)


def _without_bad_candidates(row, images, dropped: CandidateDrops, keep: Callable, *, source: str, record: str):
    """`row` (with `item_fields()`: its query, if any, then its candidates) without its candidates whose media is
    bad, each counted in `dropped`, when ``keep(row, kept)`` returns the row reduced to the good candidates at
    indices `kept` (`None`: it would not be scorable, e.g. `_mmeb_keep`, `_qrels_keep`, `_v2_keep`); else the
    first bad item raises (the whole row is bad). One bad image listed among every row's candidates (an import's
    t2i task) thus costs each row a candidate, not every row."""
    where = {"source": source, "record": record}
    kept, bad = [], {}
    for fname, item in row.item_fields():
        if fname == "query":
            images.check_item(fname, item, **where)
            continue
        i = len(kept) + len(bad)
        try:
            images.check_item(fname, item, **where)
            kept.append(i)
        except DataError as e:
            bad[i] = e
    if not bad:
        return row
    reduced = keep(row, kept)
    if reduced is None:
        raise next(iter(bad.values()))
    for i, e in bad.items():
        dropped.add(row, i, e)
    return reduced


def _mmeb_keep(row: MMEBRow, kept: list[int]) -> MMEBRow | None:
    """An MMEB row keeps its good candidates when they are its positive (index 0) and at least one other."""
    return replace(row, candidates=[row.candidates[i] for i in kept]) if kept[:1] == [0] and len(kept) >= 2 else None


def _qrels_keep(row: QrelsRow, kept: list[int]) -> QrelsRow | None:
    """A qrels row keeps its good candidates when one of them is relevant (grade > 0) and there is another: a
    bad relevant candidate leaves the row while another relevant one remains."""
    if len(kept) < 2 or not any(row.grades[i] > 0 for i in kept):
        return None
    return replace(row, candidates=[row.candidates[i] for i in kept], grades=[row.grades[i] for i in kept])


def _v2_grade(row: V2Row, name: str) -> float:
    """The relevance of the candidate named `name` to `row`: a label's score (1 without one), else its
    ``rel_scores`` entry (ViDoRe qrels grade candidates that are not labels), else 0."""
    return row.rel_scores.get(name, 1.0) if name in row.labels else row.rel_scores.get(name, 0.0)


def _v2_without(row: V2Row, candidates: list, gone: set[str]) -> V2Row:
    """`row` with `candidates` (some of its own), its labels and scores of the names in `gone` left out."""
    return replace(row, candidates=candidates, labels=[n for n in row.labels if n not in gone],
                   rel_scores={n: s for n, s in row.rel_scores.items() if n not in gone})


def _v2_keep(row: V2Row, kept: list[int]) -> V2Row | None:
    """A local MMEB-V2 row keeps its good candidates when one of them is relevant (a label, or graded > 0 by
    ``rel_scores``) and there is another; the labels and scores of the names that left go with them."""
    if len(kept) < 2 or not any(_v2_grade(row, row.candidates[i].name) > 0 for i in kept):
        return None
    cands = [row.candidates[i] for i in kept]
    return _v2_without(row, cands, {c.name for c in row.candidates} - {c.name for c in cands})


def _v2_pool_keep(row: V2Row, kept: list[int]) -> V2Row:
    """A global MMEB-V2 row (or corpus row) keeps its good candidates, whatever they are: they only join the
    task's pool, and whether the row can be scored is decided against the pool (`_v2_in_pool`)."""
    return replace(row, candidates=[row.candidates[i] for i in kept])


class CandidateDrops:
    """The bad candidates left out of their rows under the skip policy (`_without_bad_candidates`), counted in
    `report`; with `by_name` once per candidate name (a global MMEB-V2 pool: a candidate listed by many rows is
    one candidate of the pool), the first error of each name kept in `first`."""

    def __init__(self, *, by_name: bool = False):
        self.report = SkipReport()
        self.by_name = by_name
        self.first: dict[str, DataError] = {}

    def add(self, row, i: int, err: DataError) -> None:
        if self.by_name:
            name = row.candidates[i].name
            if name in self.first:
                return
            self.first[name] = err
        self.report.add(err)


def _candidate_drops(policy: ErrorPolicy, *, by_name: bool = False) -> CandidateDrops | None:
    """Where a task counts the bad candidates left out of its rows: under the skip policy only."""
    return CandidateDrops(by_name=by_name) if policy.on_error == "skip" else None


def _dropped_total(spec: TaskSpec, dropped: CandidateDrops | None) -> int:
    """Warn about the bad candidates a task left out of its rows (`_without_bad_candidates`); their number."""
    if dropped and dropped.report:
        log.warning("task %s: bad candidates left out of %s: %s", spec.name,
                    "the task's candidate pool" if dropped.by_name else
                    "their rows, each row keeping a relevant candidate (MMEB: its positive) and another one",
                    dropped.report.summary(what="candidate(s)"))
    return dropped.report.total if dropped else 0


def _no_rows(spec: TaskSpec) -> EmptyTaskError:
    return EmptyTaskError(f"task {spec.name!r} has no (good) rows", source=str(spec.path))


# -- MMEB ------------------------------------------------------------------------------------------------

def read_mmeb_task(spec: TaskSpec, policy: ErrorPolicy, images=None) -> MMEBData:
    table = ItemTable()
    queries, candidates, ids = [], [], []
    dropped = _candidate_drops(policy)
    names = QueryNames(spec, policy)
    for source, label, row in _parsed_rows(spec.path, mmeb_row_from_dict, policy, task=spec.name,
                                           images=images or _image_checker(spec), dropped=dropped, keep=_mmeb_keep):
        name = names.name(source, label, row.id)
        if name is None:
            continue
        queries.append(table.add(row.query, (source, label, "query")))
        candidates.append(np.fromiter((table.add(c, (source, label, f"candidates[{j}]"))
                                       for j, c in enumerate(row.candidates)), dtype=np.int64,
                                      count=len(row.candidates)))
        ids.append(name)
    n_dropped = _dropped_total(spec, dropped)
    if not queries:
        raise _no_rows(spec)
    return MMEBData(table=table, query=np.asarray(queries, dtype=np.int64), candidates=candidates, ids=ids,
                    dropped_candidates=n_dropped)


# -- retrieval -------------------------------------------------------------------------------------------

def read_retrieval_task(spec: TaskSpec, policy: ErrorPolicy, images=None) -> RetrievalData:
    text_t = spec.option("text_template", "{text}")
    image_t = spec.option("image_template", "")
    table = ItemTable()
    images, captions, caption_image = [], [], []
    seen_images: dict[str, str] = {}
    for _, label, entry in _parsed_rows(spec.path, retrieval_entry_from_dict, policy, task=spec.name,
                                 images=images or _image_checker(spec)):
        if entry.image in seen_images:
            policy.handle(DataError(f"image {entry.image!r} listed twice (first at {seen_images[entry.image]}); put "
                                    "all its captions on one line", source=str(spec.path), record=label,
                                    field="image"))
            continue
        seen_images[entry.image] = label
        pos = len(images)
        images.append(table.add(Item(text=_template(image_t, ""), images=(entry.image,))))
        for c in entry.captions:
            captions.append(table.add(Item(text=_template(text_t, c))))
            caption_image.append(pos)
    if not images:
        raise _no_rows(spec)
    return RetrievalData(table=table, image=np.asarray(images, dtype=np.int64),
                         caption=np.asarray(captions, dtype=np.int64),
                         caption_image=np.asarray(caption_image, dtype=np.int64))


# -- compositional ---------------------------------------------------------------------------------------

def read_compositional_task(spec: TaskSpec, policy: ErrorPolicy, images=None) -> CompositionalData:
    text_t = spec.option("text_template", "{text}")
    image_t = spec.option("image_template", "")
    default_cat = spec.option("category", spec.name)
    table = ItemTable()
    image, pos, neg, cats, ids = [], [], [], [], []
    names = QueryNames(spec, policy)
    for source, label, pair in _parsed_rows(spec.path, compositional_pair_from_dict, policy, task=spec.name,
                                            images=images or _image_checker(spec)):
        name = names.name(source, label, pair.id)
        if name is None:
            continue
        image.append(table.add(Item(text=_template(image_t, ""), images=(pair.image,))))
        pos.append(table.add(Item(text=_template(text_t, pair.positive))))
        neg.append(table.add(Item(text=_template(text_t, pair.negative))))
        cats.append(pair.category or default_cat)
        ids.append(name)
    if not image:
        raise _no_rows(spec)
    arr = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
    return CompositionalData(table=table, image=arr(image), positive=arr(pos), negative=arr(neg), category=cats,
                             ids=ids)


# -- qrels -----------------------------------------------------------------------------------------------


def _templated(item: Item, template: str) -> Item:
    return Item(text=_template(template, item.text), images=item.images, video=item.video)


def read_qrels_task(spec: TaskSpec, policy: ErrorPolicy, images=None) -> QrelsData:
    if is_beir_folder(spec.path):
        return _read_beir(spec, policy, images)
    qt, ct = spec.option("query_template", "{text}"), spec.option("candidate_template", "{text}")
    table = ItemTable()
    queries, cands, grades, ids = [], [], [], []
    dropped = _candidate_drops(policy)
    names = QueryNames(spec, policy)
    for source, label, row in _parsed_rows(spec.path, qrels_row_from_dict, policy, task=spec.name,
                                           images=images or _image_checker(spec), dropped=dropped, keep=_qrels_keep):
        name = names.name(source, label, row.id)
        if name is None:
            continue
        queries.append(table.add(_templated(row.query, qt), (source, label, "query")))
        cands.append(np.asarray([table.add(_templated(c, ct), (source, label, f"candidates[{j}]"))
                                 for j, c in enumerate(row.candidates)], dtype=np.int64))
        grades.append(np.asarray(row.grades, dtype=np.float64))
        ids.append(name)
    n_dropped = _dropped_total(spec, dropped)
    if not queries:
        raise _no_rows(spec)
    return QrelsData(table=table, query=np.asarray(queries, dtype=np.int64), candidates=cands, grades=grades,
                     ids=ids, dropped_candidates=n_dropped)


def _read_beir(spec: TaskSpec, policy: ErrorPolicy, images=None) -> QrelsData:
    qt, ct = spec.option("query_template", "{text}"), spec.option("candidate_template", "{text}")
    table = ItemTable()
    corpus_pos: dict[str, int] = {}
    corpus: list[int] = []
    query_rows: dict[str, Item] = {}
    images = images or _image_checker(spec)
    for fname, template, target in ((CORPUS_FILE, ct, None), (QUERIES_FILE, qt, query_rows)):
        f = spec.path / fname
        if not f.is_file():
            raise DataError(f"task {spec.name!r}: BEIR folder without {fname}", source=str(spec.path))
        rows = _parsed_rows(f, lambda o, **kw: beir_row_from_dict(o, template=template, **kw), policy,
                            task=spec.name, images=images)
        for _, beir in first_of_each_id(((label, row) for _, label, row in rows), policy, source=str(f)):
            if target is None:
                corpus_pos[beir.id] = len(corpus)
                corpus.append(table.add(beir.item))
            else:
                target[beir.id] = beir.item
    qrels_path = spec.path / QRELS_FOLDER / f"{spec.option('qrels_split', 'test')}.tsv"
    if not qrels_path.is_file():
        raise DataError(f"task {spec.name!r}: qrels file not found", source=str(qrels_path))
    judged: dict[str, dict[int, float]] = {}
    src = str(qrels_path)
    for qid, did, grade in read_beir_qrels(qrels_path, query_rows, corpus_pos, policy):
        judged.setdefault(qid, {})[corpus_pos[did]] = grade
    corpus_arr = np.asarray(corpus, dtype=np.int64)
    queries, grades, ids = [], [], []
    skip_own = spec.option("ignore_identical_ids", True)
    for qid, item in query_rows.items():
        if qid not in judged:  # BEIR / pytrec_eval evaluate only the judged queries
            continue
        g = np.zeros(len(corpus), dtype=np.float64)
        for pos, grade in judged[qid].items():
            g[pos] = grade
        queries.append(table.add(item))
        grades.append(g)
        ids.append(qid)
    if not queries:
        raise EmptyTaskError(f"task {spec.name!r}: no query has judgements", source=src)
    return QrelsData(table=table, query=np.asarray(queries, dtype=np.int64),
                     candidates=[corpus_arr] * len(queries), grades=grades, ids=ids, shared_corpus=True,
                     corpus_ids=list(corpus_pos),
                     identical=[corpus_pos.get(qid, -1) for qid in ids] if skip_own else None)
