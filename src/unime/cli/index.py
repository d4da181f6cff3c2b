"""`unime index build` and `unime search`: a searchable on-disk index of a corpus (unime.index.store)."""

from __future__ import annotations

import json

from unime.cli import add_config_option
from unime.errors import UsageError


def _model_options(p) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16 (part of the index's model identity)")
    p.add_argument("--batch-size", type=int, default=16)


def add_ann_options(p) -> None:
    """The FAISS index parameters (unime.index.ann.IndexConfig), shared by `unime index build` and `unime mine`."""
    p.add_argument("--nlist", type=int, default=0, help="ivf: number of lists (0 = 4*sqrt(n))")
    p.add_argument("--nprobe", type=int, default=16, help="ivf: lists probed per query")
    p.add_argument("--train-sample", type=int, default=0,
                   help="ivf: vectors sampled to train the lists (0 = min(n, 256*nlist))")
    p.add_argument("--hnsw-m", type=int, default=32, help="hnsw: graph degree")
    p.add_argument("--ef-construction", type=int, default=40, help="hnsw: build breadth")
    p.add_argument("--ef-search", type=int, default=128, help="hnsw: search breadth")
    p.add_argument("--index-storage", default="float32", choices=["float32", "float16"],
                   help="precision of the vectors inside the FAISS index (float16: half the memory)")


def ann_config(args, kind: str = "flat"):
    from unime.index.ann import IndexConfig

    try:
        return IndexConfig(kind=kind, nlist=args.nlist, nprobe=args.nprobe, train_sample=args.train_sample,
                           hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search,
                           storage=args.index_storage)
    except ValueError as e:
        raise UsageError(str(e), command=getattr(args, "_command", None) or args.command) from None


def register(sub) -> None:
    p = sub.add_parser("index", help="build a searchable index of a corpus (vectors, ids, metadata, FAISS)")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    b = isub.add_parser("build", help="encode a corpus JSONL into an index folder (resumable; new ids are appended)")
    b.add_argument("--model", required=True, help="embedder checkpoint (HF folder, hub id, or PEFT adapter)")
    b.add_argument("--items", required=True,
                   help='JSONL, one {"id"?, "metadata"?, "text"?, "image"?|"images"?} per line (id defaults to the content key)')
    b.add_argument("--data-root", default=None, help="folder image paths are relative to (default: the items file's folder)")
    b.add_argument("--out", required=True, help="index folder (created; an existing index is extended)")
    b.add_argument("--vector-dtype", default="float32", choices=["float32", "float16"], help="stored vector precision")
    b.add_argument("--index", default="auto", choices=["auto", "flat", "hnsw", "ivf"],
                   help="FAISS index: flat = exact; auto = flat up to --approx-threshold vectors, hnsw above")
    b.add_argument("--approx-threshold", type=int, default=200_000)
    add_ann_options(b)
    b.add_argument("--recall-k", type=int, default=10, help="k of the recall@k measured for an approximate index")
    b.add_argument("--recall-sample", type=int, default=200, help="rows sampled as queries for that measurement")
    b.add_argument("--chunk-size", type=int, default=1024, help="items per written chunk (unit of resumption)")
    b.add_argument("--cache-dir", default=None,
                   help="embedding cache shared with eval/mine (default: $UNIME_CACHE_DIR or ~/.cache/unime)")
    b.add_argument("--no-thumbnails", action="store_true", help="do not store image thumbnails in the index")
    _model_options(b)
    add_config_option(b)
    b.set_defaults(func=_build)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    s = sub.add_parser("search", help="search an index built by `unime index build` with a text and/or image query")
    s.add_argument("--index", required=True, help="index folder")
    s.add_argument("--query", default="", help="query text")
    s.add_argument("--image", default=None, help="query image file")
    s.add_argument("--instruction", default=None, help="instruction put before the query text")
    s.add_argument("--model", default=None, help="embedder (default: the one recorded in the index manifest)")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    _model_options(s)
    add_config_option(s)
    s.set_defaults(func=_search)


def _build(args) -> int:
    import os

    from unime.index.store import build_corpus_index
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import default_cache_dir, embedding_settings

    cfg = ann_config(args)  # bad index parameters are refused before the model loads
    root = args.data_root or os.path.dirname(os.path.abspath(args.items))
    emb = Embedder.from_pretrained(args.model, device=args.device, dtype=args.dtype, data_root=root,
                                   batch_size=args.batch_size)
    idx, stats = build_corpus_index(
        args.items, args.out, embedder=emb, model=args.model, data_root=root,
        cache_dir=args.cache_dir or default_cache_dir(), vector_dtype=args.vector_dtype, index=args.index,
        index_config=cfg, approx_threshold=args.approx_threshold, chunk_size=args.chunk_size,
        recall_k=args.recall_k, recall_sample=args.recall_sample, thumbnails=not args.no_thumbnails,
        batch_size=args.batch_size, show_progress=True, model_settings=embedding_settings(emb, args.dtype))
    info = idx.manifest.get("index", {})
    print(f"{args.out}: {len(idx)} items ({stats.added} added, {stats.already_indexed} already indexed, "
          f"{stats.encoded} encoded, {stats.from_cache} from the embedding cache); index {info.get('kind')}, "
          f"recall@{info.get('recall', {}).get('k')} vs exact = {info.get('recall', {}).get('recall')}")
    return 0


def _search(args) -> int:
    from pathlib import Path

    from unime.data.items import Item
    from unime.index.store import CorpusIndex, check_model, search_items
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import embedding_settings

    text = args.query
    if args.instruction:
        text = f"{args.instruction}\n{text}" if text else args.instruction
    images = (Path(args.image).read_bytes(),) if args.image else ()
    query = Item(text=text, images=images)
    if query.is_empty:  # refused before the index and the model are loaded
        raise UsageError("give --query and/or --image", command="search")
    idx = CorpusIndex(args.index)
    model = args.model or idx.manifest["model"]
    emb = Embedder.from_pretrained(model, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    check_model(idx, model, embedding_settings(emb, args.dtype))
    hits = search_items(idx, emb.encode([query]), args.k)[0]
    for h in hits:
        if args.json:
            h = {k: v for k, v in h.items() if k != "thumbnail"}
            print(json.dumps(h, ensure_ascii=False))
        else:
            label = h["item"].get("text") or ", ".join(h["item"].get("images", []))
            print(f"{h['rank']:>3}  {h['score']:.4f}  {h['id']}  {label[:80]}")
    return 0
