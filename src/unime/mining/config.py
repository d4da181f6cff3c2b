"""The options of `unime mine` (`MineConfig`): one declaration each, read by the command line, the YAML options file
and `unime.mining.pipeline.run_mining`."""

from __future__ import annotations

from dataclasses import dataclass

from unime.index.ann import INDEX_KINDS, AnnOptions, IndexConfig
from unime.mining.backends import JudgeOptions
from unime.mining.retrieval import CandidateWindow
from unime.mining.sampling import DEFAULT_BETA, DEFAULT_COUNT, DEFAULT_INTERVAL, STRATEGIES
from unime.errors import OptionError
from unime.models.item_format import ItemFormatOptions
from unime.options import on_error_option, option


@dataclass
class MineConfig(JudgeOptions, AnnOptions, ItemFormatOptions):
    """Options of `unime mine`: each field declares its option (`unime.options`)."""

    records: str = option(help="training records (.jsonl, .parquet, UniME-V2 .json)")
    embedder: str = option(help="embedder checkpoint for the global retrieval")
    judge: str = option(help="judge checkpoint (a generative MLLM answering Yes/No); with --backend oracle, the "
                        "world folder or a labels / qrels JSONL (grades in [0, 1] are the scores; a file with a "
                        "grade above 1, e.g. qrels 0-3, has every grade divided by its largest)")
    out: str = option(help="output folder (resumable: re-run the same command to resume)")
    pool: str | None = option(None, "JSONL of candidate items (default: the de-duplicated union of all positives)")
    data_root: str | None = option(None, "folder image paths are relative to (default: --world if given, else the "
                                   "records' folder)")
    k: int = option(50, "candidates retrieved per query: the first K survivors of the δ rule (and margins), "
                    "searching deeper until K survive (SPEC 1.2); alias --range-max, but sentence-transformers' "
                    "range_max is a rank before its margins, which can leave fewer", at_least=1,
                    flag=("--k", "--range-max"))
    range_min: int = option(0, "skip the N most similar candidates left after the δ rule and margins (the judge "
                            "sees ranks N+1..K); must be below --k", at_least=0, metavar="N")
    absolute_margin: float = option(0.0, "keep a candidate only if sim(q,c) <= sim(q,pos) - M (0: the δ rule "
                                    "alone, sim(q,c) < sim(q,pos))", at_least=0, metavar="M")
    relative_margin: float = option(0.0, "keep a candidate only if sim(q,c) <= sim(q,pos) - |sim(q,pos)| * R, "
                                    "as sentence-transformers (0: the δ rule alone)", at_least=0, metavar="R")
    exclude_query_positives: bool = option(False, "records with the same query item are one query, as "
                                           "sentence-transformers groups rows by anchor: no positive of the query "
                                           "is a candidate of any of its records (default: only the record's own "
                                           "positive is excluded)")
    # the judge's scores are probabilities (P(Yes); the oracle's graded relevance): in [0, 1], where a beta of -1
    # keeps every candidate and one of 1 drops all but those scored 0 below a positive of 1
    beta: float = option(DEFAULT_BETA, "false negative: s(q,c) > s(q,c_t) - beta (the scores are in [0, 1]; -1: "
                         "no candidate is one)", at_least=-1, at_most=1)
    interval: int = option(DEFAULT_INTERVAL, "cyclical sampling interval", at_least=1)
    sampling_strategy: str = option("cyclical", "which survivors of the judge's filter are stored: cyclical (SPEC "
                                    "1.4, every --interval-th in retrieval order), top (the first --count), random "
                                    "(--count drawn with --seed, stored in retrieval order as sentence-transformers)",
                                    choices=list(STRATEGIES))
    count: int = option(DEFAULT_COUNT, "negatives stored per query", at_least=1)
    fallback: str = option("random", "no survivor: draw at random from the K with score 1.0 (paper), or drop the "
                           "query", choices=["random", "drop"])
    seed: int = option(0, "random seed (the fallback draw, --sampling-strategy random, IVF's training sample)")
    index: str = option("flat", "FAISS index (flat = exact)", choices=list(INDEX_KINDS))
    shard_size: int = option(64, "queries per judge shard (unit of resumption)", at_least=1)
    embed_batch_size: int = option(16, "embedder batch size of the retrieval", at_least=1)
    cache_dir: str | None = option(None, "embedding cache, shared format with `unime eval --cache-dir` (default: "
                                   "OUT/cache/embeddings)")
    on_error: str = on_error_option("skip bad records (counted and reported) instead of stopping at the first")
    audit: bool = option(False, "audit the judge against the demo world (needs --world)")
    world: str | None = option(None, "demo world folder (for --audit)")
    audit_threshold: float = option(1.0, "audit: relevance (in [0, 1]) at or above which a retrieved candidate is a "
                                    "false negative", above=0, at_most=1)
    show_progress: bool = option(False, "show progress bars", dest="progress")
    backend_options: dict = option(factory=dict, cli=False)  # `make_backend`'s (`BackendOptions.for_backend`)
    overwrite: bool = option(False, cli=False)  # a re-run with other options: redo what depends on them (else refused)

    def index_config(self) -> IndexConfig:
        return AnnOptions.index_config(self, self.index, self.seed)

    def index_key(self) -> list:
        """The index parameters in the retrieval stage's hash: [kind, nprobe, efSearch] as before, then only
        the parameters set away from their defaults (an existing run's stage stays reused)."""
        c, defaults = self.index_config(), IndexConfig()
        extra = {k: v for k, v in c.to_dict().items()
                 if k not in ("kind", "nprobe", "ef_search") and v != getattr(defaults, k)
                 and (k != "seed" or c.kind == "ivf")}  # the seed draws IVF's training sample
        return [c.kind, c.nprobe, c.ef_search] + ([extra] if extra else [])

    def candidate_window(self) -> CandidateWindow:
        """The retrieval's range and margins (`unime.mining.retrieval.CandidateWindow`)."""
        return CandidateWindow(self.range_min, self.absolute_margin, self.relative_margin)

    def __post_init__(self):
        super().__post_init__()  # out of range: OptionError naming the field (`k`; on the command line `--k`)
        if self.range_min >= self.k:
            raise OptionError(self, "{range_min} must be below {k} (it skips that many of the K candidates), got "
                              f"{self.range_min} with {self.k}")
        if self.sampling_strategy not in STRATEGIES:
            raise ValueError(f"sampling_strategy must be one of {', '.join(STRATEGIES)}, got "
                             f"{self.sampling_strategy!r}")
        if self.fallback not in ("random", "drop"):
            raise ValueError(f"fallback must be 'random' or 'drop', got {self.fallback!r}")
        if self.audit and not self.world:
            raise ValueError("audit needs a demo world (world=...)")

    @property
    def video_sampling(self):
        """A `VideoSampling` from the video options, or None when none is set (the defaults apply)."""
        from unime.data.video import VideoSampling

        return VideoSampling.from_options(**self.video_options)

    @property
    def resolved_data_root(self) -> str:
        from unime.data.roots import resolve_data_root

        return resolve_data_root(self.records, self.data_root)
