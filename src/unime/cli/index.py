"""`unime index build` and `unime search`: a searchable on-disk index of a corpus (unime.index.store). The
options are declared on `IndexBuildConfig` and `SearchConfig` there."""

from __future__ import annotations

import dataclasses
import json

from unime.cli import add_config_option, given_by_user
from unime.cli.dataclass_options import add_options, config_from_args
from unime.errors import UsageError
from unime.index.ann import ANN_GROUP, AnnOptions


def register(sub) -> None:
    from unime.index.store import IndexBuildConfig, SearchConfig

    p = sub.add_parser("index", help="build a searchable index of a corpus (vectors, ids, metadata, FAISS)")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    b = isub.add_parser("build", help="encode a corpus JSONL into an index folder (resumable; new ids are appended)")
    add_options(b, IndexBuildConfig, groups=(ANN_GROUP, "video"), own_first=True)
    add_config_option(b)
    b.set_defaults(func=_build)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    s = sub.add_parser("search",
                       help="search an index built by `unime index build` with a text, image and/or video query")
    add_options(s, SearchConfig, own_first=True)
    add_config_option(s)
    s.set_defaults(func=_search)


def _build(args) -> int:
    from unime.data.skips import SkipReport, shown_on_failure
    from unime.index.store import IndexBuildConfig, build_index_folder

    cfg = config_from_args(IndexBuildConfig, args)
    try:
        cfg.index_config()  # bad index parameters are refused before the model loads
    except ValueError as e:
        raise UsageError(str(e), command="index build") from None
    # the index options given (command line or --config) change an existing index's; the others keep its own
    given = {f.name for f in dataclasses.fields(AnnOptions) if given_by_user(args, f.name)}
    with shown_on_failure(SkipReport()) as skips:  # every item skipped: the reasons before "no items to index"
        idx, stats = build_index_folder(cfg, given=given, skips=skips)
    info = idx.manifest.get("index", {})
    recall = info.get("recall") or {}
    measured = f"{recall['recall']:.4f}" if isinstance(recall.get("recall"), (int, float)) else recall.get("recall")
    rebuilt = f" (rebuilt from the stored vectors: {stats.rebuilt})" if stats.rebuilt else ""
    updated = "".join([f", {stats.reencoded} re-encoded (content changed)" if stats.reencoded else "",
                       f", {stats.metadata_updated} metadata updated" if stats.metadata_updated else ""])
    # every item added or re-encoded is one of these three (a repeat was not counted: 8,397 + 1,150 of 10,000, QA)
    repeats = f", {stats.repeats} repeating an item above" if stats.repeats else ""
    print(f"{args.out}: {len(idx)} items ({stats.added} added, {stats.already_indexed} already indexed{updated}, "
          f"{stats.encoded} encoded, {stats.from_cache} from the embedding cache{repeats}); index {info.get('kind')}"
          f"{rebuilt}, recall@{recall.get('k')} vs exact = {measured}"
          + (f"; {skips.summary()}" if skips.total else ""))
    return 0


def _search(args) -> int:
    from unime.index.store import SearchConfig, search_index_folder

    try:
        cfg = config_from_args(SearchConfig, args)
    except ValueError as e:
        raise UsageError(str(e), command="search") from None
    query = cfg.query_item()
    if query.is_empty:  # refused before the index and the model are loaded
        raise UsageError("give --query, --image and/or --video", command="search")
    hits = search_index_folder(cfg, query)
    if args.json:
        for h in hits:
            h = {k: v for k, v in h.items() if k != "thumbnail"}
            print(json.dumps(h, ensure_ascii=False))
        return 0
    labels = [_one_line(h["item"].get("text") or ", ".join(h["item"].get("images", []) or
                                                           h["item"].get("video", [])))[:80] for h in hits]
    # the metadata (only --json showed it: QA), cut short, in a column after the labels padded to one width
    metas = [_cut(json.dumps(h["metadata"], ensure_ascii=False), META_CHARS) if h.get("metadata") else ""
             for h in hits]
    width = max(map(len, labels), default=0) if any(metas) else 0
    for h, label, meta in zip(hits, labels, metas):
        hid = _one_line(str(h["id"]))
        print(f"{h['rank']:>3}  {h['score']:.4f}  {hid}  {label:<{width}}  {meta}".rstrip()
              if meta else f"{h['rank']:>3}  {h['score']:.4f}  {hid}  {label}")
    return 0


META_CHARS = 60  # of a hit's metadata shown in `unime search`'s table


def _one_line(text: str) -> str:
    """`text` on one table line: its line breaks, tabs and other control characters escaped (`\\n`, `\\t`, `\\x1b`);
    a hit whose text had a newline broke the table (QA)."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"
