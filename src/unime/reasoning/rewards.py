"""EG-RL rewards of Embed-RL (SPEC §2.3): format, outcome (from the frozen Embedder), process (judge pick).

A GRPO batch holds B (query, positive) pairs; the Reasoner writes n T-CoTs (rollouts) for each query
and each positive. `RolloutLayout` says which flat completion index is which (pair, side, rollout),
so the rewards never depend on an assumed completion order (the release mixed it up).

Outcome reward of a query rollout (row i of S = cosine(query rollouts, positive rollouts)):

    Pos(i)   = the n columns of i's own positive's rollouts, Neg(i) = every other column, except (by default
               in GRPO, `--mask-duplicates`) those of other pairs whose positive is the same item
    acc_i    = |Pos(i) ∩ top-|Pos(i)| columns of row i| / |Pos(i)|
    margin_i = mean(S_i[Pos]) − Σ_j softmax(S_i[Neg] / 0.5)_j · S_i[Neg]_j
    r_out    = 0.5 · acc_i · margin_i

and symmetrically for positive rollouts (columns of S against the query rollouts).
Ties in the top-k count against the rollout (a negative tied with a positive ranks first), so acc
depends only on the scores, never on the column order.

Process reward: a judge sees the rollout's reasoning and, in a shuffled order, the same-pair
rollouts of the other side plus, of each of the `n_hard` hardest negative pairs, its rollout most similar
to this one (as the release); r_proc = margin_i if it picks a same-pair rollout, else 0.
Total r = 0.05·r_fmt + 0.8·r_out + 0.2·r_proc.
"""

from __future__ import annotations

import re
from typing import Any, Hashable, Literal, NamedTuple, Sequence

import numpy as np

from unime.reasoning.tcot import MatchMode, format_ok

QUERY, POSITIVE = "query", "positive"
SIDES = (QUERY, POSITIVE)
DEFAULT_WEIGHTS = (0.05, 0.8, 0.2)  # format, outcome, process

Side = Literal["query", "positive"]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (any dtype / device); avoids importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# format reward


def completion_text(completion: Any) -> str:
    """The text of a completion as TRL passes it: a string, or (conversational) a list of messages whose
    content is a string or a list of `{"type": "text", "text": ...}` parts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        parts = []
        for msg in completion:
            content = msg.get("content", "") if isinstance(msg, dict) else msg
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, (list, tuple)):
                parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return "".join(parts)
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}")


def format_reward(completions: Sequence[Any], *, mode: MatchMode = "search", **trl_kwargs: Any) -> list[float]:
    """1.0 per completion matching the T-CoT regex (`unime.reasoning.tcot.format_ok`), else 0.0.

    `mode="search"` (default): the tags in order anywhere in the completion, as SPEC §2.3 ("matches ... (in
    order)") and the release (`re.search`) have it, so a leading space / newline, a preamble or a Qwen3
    `<think>\n\n</think>\n\n` prefix still earns the format reward; "match" anchors it at the start.

    Usable directly as a TRL reward function: TRL's other keyword arguments (prompts, completion_ids,
    dataset columns, trainer state) are accepted and ignored.
    """
    return [1.0 if format_ok(completion_text(c), mode=mode) else 0.0 for c in completions]


# ------------------------------------------------------------------------------------------------
# outcome reward


class OutcomeRewards(NamedTuple):
    reward: np.ndarray  # scale · acc · margin
    acc: np.ndarray
    margin: np.ndarray


def _softmax_weighted_mean(values: np.ndarray, temperature: float) -> float:
    z = values / temperature
    w = np.exp(z - z.max())
    w /= w.sum()
    return float((w * values).sum())


def outcome_rewards(S: Any, pos_index_sets: Sequence[Sequence[int]], *, neg_temperature: float = 0.5,
                    scale: float = 0.5, excluded_index_sets: Sequence[Sequence[int]] | None = None
                    ) -> OutcomeRewards:
    """Per-row outcome reward of SPEC §2.3 for a similarity matrix `S` (rows = the rollouts being
    rewarded, columns = the other side's rollouts of the whole batch). `pos_index_sets[i]` = the
    columns of row i's own pair. Returns `(reward, acc, margin)`, each of shape (rows,).

    `excluded_index_sets[i]`: columns that are neither positives nor negatives of row i (the rollouts of
    other pairs with the same positive item, `RolloutLayout.duplicate_index_sets`); they leave the top-k and
    the Neg softmax. A row left with no negative gets the negative term 0 (as the release does), so
    acc = 1 and margin = mean(S_i[Pos]).

    For the positive rollouts pass `S.T` with the query-rollout columns of each positive's own pair.
    """
    S = _to_numpy(S)
    if S.ndim != 2:
        raise ValueError(f"S must be a matrix, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError("S contains NaN or infinite similarities")
    if len(pos_index_sets) != S.shape[0]:
        raise ValueError(f"{len(pos_index_sets)} positive index sets for {S.shape[0]} rows")
    if neg_temperature <= 0:
        raise ValueError(f"neg_temperature must be > 0, got {neg_temperature}")
    if excluded_index_sets is not None and len(excluded_index_sets) != S.shape[0]:
        raise ValueError(f"{len(excluded_index_sets)} excluded index sets for {S.shape[0]} rows")
    n_rows, n_cols = S.shape
    acc, margin = np.zeros(n_rows), np.zeros(n_rows)
    for i, pos in enumerate(pos_index_sets):
        pos = np.asarray(list(pos), dtype=np.int64)
        if pos.size == 0:
            raise ValueError(f"row {i} has no positive columns")
        if len(set(pos.tolist())) != pos.size:
            raise ValueError(f"row {i}: repeated positive columns {pos.tolist()}")
        if pos.min() < 0 or pos.max() >= n_cols:
            raise ValueError(f"row {i}: positive columns {pos.tolist()} outside 0..{n_cols - 1}")
        if pos.size == n_cols:
            raise ValueError(f"row {i} has no negative column (a batch needs at least 2 pairs)")
        is_pos = np.zeros(n_cols, dtype=bool)
        is_pos[pos] = True
        kept = np.ones(n_cols, dtype=bool)
        if excluded_index_sets is not None and len(excluded_index_sets[i]):
            excl = np.asarray(list(excluded_index_sets[i]), dtype=np.int64)
            if excl.min() < 0 or excl.max() >= n_cols or is_pos[excl].any():
                raise ValueError(f"row {i}: excluded columns {excl.tolist()} must be in 0..{n_cols - 1} and not "
                                 f"positives {pos.tolist()}")
            kept[excl] = False
        row, is_pos = S[i][kept], is_pos[kept]
        # sort by similarity descending; among equal similarities negatives come first (pessimistic ties)
        order = np.lexsort((is_pos.astype(np.int8), -row))
        acc[i] = is_pos[order[:pos.size]].sum() / pos.size
        negatives = row[~is_pos]
        neg_term = _softmax_weighted_mean(negatives, neg_temperature) if negatives.size else 0.0
        margin[i] = row[is_pos].mean() - neg_term
    return OutcomeRewards(reward=scale * acc * margin, acc=acc, margin=margin)


# ------------------------------------------------------------------------------------------------
# rollout bookkeeping


class RolloutLayout:
    """Which flat completion index is (pair b, side, rollout r), for B pairs and group size n.

    TRL's GRPO repeats each prompt n times consecutively, so the completions of prompt p are flat
    indices p·n … p·n + n − 1. The order of the prompts is the batch's:

    - `prompt_order="interleaved"` (default): [q_0, p_0, q_1, p_1, …, q_{B−1}, p_{B−1}];
    - `prompt_order="blocked"`: [q_0, …, q_{B−1}, p_0, …, p_{B−1}];
    - `prompts=[(pair, side), …]`: any explicit prompt order (one entry per prompt, 2B of them);
    - `RolloutLayout.from_completion_keys(pair_ids, sides, group_size)`: read the pair and side of every
      completion from the dataset columns TRL passes to reward functions — no order assumed at all.

    Matrix convention: rows of `similarity_matrix` are query rollouts in (pair, rollout) order,
    row = b·n + r; columns are positive rollouts in the same order.
    """

    def __init__(self, batch_pairs: int, group_size: int, *,
                 prompt_order: Literal["interleaved", "blocked"] = "interleaved",
                 prompts: Sequence[tuple[int, str]] | None = None):
        if batch_pairs < 1 or group_size < 1:
            raise ValueError(f"need batch_pairs >= 1 and group_size >= 1, got {batch_pairs}, {group_size}")
        B, n = batch_pairs, group_size
        if prompts is None:
            if prompt_order == "interleaved":
                prompts = [(b, s) for b in range(B) for s in SIDES]
            elif prompt_order == "blocked":
                prompts = [(b, s) for s in SIDES for b in range(B)]
            else:
                raise ValueError(f"prompt_order must be 'interleaved' or 'blocked', got {prompt_order!r}")
        prompts = [(int(b), s) for b, s in prompts]
        expected = {(b, s) for b in range(B) for s in SIDES}
        if len(prompts) != 2 * B or set(prompts) != expected:
            raise ValueError(f"prompts must list every (pair, side) of {B} pairs exactly once, got {prompts}")
        slots = [(b, s, r) for b, s in prompts for r in range(n)]
        self._init_slots(B, n, slots)
        self.prompts = prompts

    def _init_slots(self, B: int, n: int, slots: list[tuple[int, str, int]]) -> None:
        self.batch_pairs, self.group_size = B, n
        self._slots = slots
        self._flat = np.full((B, 2, n), -1, dtype=np.int64)
        for f, (b, s, r) in enumerate(slots):
            self._flat[b, SIDES.index(s), r] = f
        assert (self._flat >= 0).all()

    @classmethod
    def from_completion_keys(cls, pair_ids: Sequence[Hashable], sides: Sequence[str], group_size: int
                             ) -> "RolloutLayout":
        """Layout from per-completion pair ids and sides ("query" / "positive"). Pairs are numbered in
        order of first appearance; rollout r = the r-th completion of that (pair, side)."""
        if len(pair_ids) != len(sides):
            raise ValueError(f"{len(pair_ids)} pair ids for {len(sides)} sides")
        pair_index: dict[Hashable, int] = {}
        counts: dict[tuple[int, str], int] = {}
        slots = []
        for f, (pid, side) in enumerate(zip(pair_ids, sides)):
            if side not in SIDES:
                raise ValueError(f"completion {f}: side must be 'query' or 'positive', got {side!r}")
            b = pair_index.setdefault(pid, len(pair_index))
            r = counts.get((b, side), 0)
            counts[(b, side)] = r + 1
            slots.append((b, side, r))
        B = len(pair_index)
        ids = list(pair_index)
        for b in range(B):
            for s in SIDES:
                if counts.get((b, s), 0) != group_size:
                    raise ValueError(f"pair {ids[b]!r} has {counts.get((b, s), 0)} {s} completions, expected "
                                     f"{group_size}")
        self = cls.__new__(cls)
        self._init_slots(B, group_size, slots)
        self.prompts = None
        return self

    # -- index maps ------------------------------------------------------------------------------

    @property
    def num_completions(self) -> int:
        return 2 * self.batch_pairs * self.group_size

    def flat_index(self, pair: int, side: Side, rollout: int) -> int:
        return int(self._flat[pair, SIDES.index(side), rollout])

    def slot(self, flat_index: int) -> tuple[int, str, int]:
        """(pair, side, rollout) of a flat completion index."""
        return self._slots[flat_index]

    def side_flat_indices(self, side: Side) -> np.ndarray:
        """Flat indices of one side's rollouts in matrix order (b·n + r)."""
        return self._flat[:, SIDES.index(side), :].reshape(-1).copy()

    def own_pair_indices(self, pair: int) -> list[int]:
        """Matrix indices (rows or columns) of a pair's n rollouts."""
        n = self.group_size
        return list(range(pair * n, (pair + 1) * n))

    def pos_index_sets(self) -> list[list[int]]:
        """`pos_index_sets` for `outcome_rewards`, valid for S (query rows) and S.T (positive rows)."""
        return [self.own_pair_indices(b) for b in range(self.batch_pairs) for _ in range(self.group_size)]

    def duplicate_pairs(self, positive_keys: Sequence[Hashable]) -> list[list[int]]:
        """Per pair b: the other pairs whose positive has the same key (`positive_keys[c]`, one per pair, e.g.
        `Item.key`: same text and images, the contrastive trainer's `--mask-duplicates` identity)."""
        if len(positive_keys) != self.batch_pairs:
            raise ValueError(f"{len(positive_keys)} positive keys for {self.batch_pairs} pairs")
        return [[c for c in range(self.batch_pairs) if c != b and positive_keys[c] == positive_keys[b]]
                for b in range(self.batch_pairs)]

    def duplicate_index_sets(self, positive_keys: Sequence[Hashable]) -> list[list[int]]:
        """`excluded_index_sets` for `outcome_rewards`: per matrix row, the rollouts of the other pairs sharing
        the row's positive item (`duplicate_pairs`); those are copies of its match, not negatives. Valid for S and
        S.T: a query's rollouts match the positive of every pair with its positive, and the other way round."""
        dup = self.duplicate_pairs(positive_keys)
        return [[j for c in dup[b] for j in self.own_pair_indices(c)]
                for b in range(self.batch_pairs) for _ in range(self.group_size)]

    # -- matrices and rewards --------------------------------------------------------------------

    def similarity_matrix(self, embeddings: Any) -> np.ndarray:
        """Cosine matrix S (B·n × B·n): rows query rollouts, columns positive rollouts, from the flat
        embeddings (one row per completion, in completion order)."""
        E = _to_numpy(embeddings)
        if E.ndim != 2 or E.shape[0] != self.num_completions:
            raise ValueError(f"expected ({self.num_completions}, d) embeddings, got shape {E.shape}")
        norms = np.linalg.norm(E, axis=1, keepdims=True)
        if np.any(norms == 0) or not np.all(np.isfinite(norms)):
            raise ValueError("an embedding is zero or not finite")
        E = E / norms
        return E[self.side_flat_indices(QUERY)] @ E[self.side_flat_indices(POSITIVE)].T

    def outcome_rewards(self, embeddings: Any, *, neg_temperature: float = 0.5, scale: float = 0.5,
                        positive_keys: Sequence[Hashable] | None = None) -> OutcomeRewards:
        """Outcome reward, acc and margin of every completion, in flat completion order. `positive_keys` (one
        per pair): the rollouts of pairs with the same positive are not each other's negatives
        (`duplicate_index_sets`); None counts every other pair as negative."""
        S = self.similarity_matrix(embeddings)
        pos = self.pos_index_sets()
        excl = None if positive_keys is None else self.duplicate_index_sets(positive_keys)
        q = outcome_rewards(S, pos, neg_temperature=neg_temperature, scale=scale, excluded_index_sets=excl)
        p = outcome_rewards(S.T, pos, neg_temperature=neg_temperature, scale=scale, excluded_index_sets=excl)
        out = [np.zeros(self.num_completions) for _ in range(3)]
        qi, pi = self.side_flat_indices(QUERY), self.side_flat_indices(POSITIVE)
        for arr, a, b in zip(out, q, p):
            arr[qi], arr[pi] = a, b
        return OutcomeRewards(*out)


# ------------------------------------------------------------------------------------------------
# process reward


def process_candidates(row: int, S: Any, layout: RolloutLayout, *, n_hard: int = 4, rng: np.random.Generator,
                       excluded_pairs: Sequence[int] = ()) -> tuple[list[int], np.ndarray]:
    """The judge's candidates for completion `row` (a flat completion index, either side).

    Candidates = the other side's n rollouts of the same pair + **one** rollout of each of the `n_hard`
    hardest other pairs, as the release does: of each other pair, its rollout most similar to this one
    (ties → lower rollout index); the hardest pairs are those whose such rollout is the most similar (ties →
    lower pair index). n + n_hard candidates (B = 5, n = 4, n_hard = 4: 8), as **flat completion indices** in
    a random order drawn from `rng` (never positives-first, SPEC §2.3). Returns (candidates, positive_mask).
    `excluded_pairs`: pairs never shown as negatives (those sharing the row's positive item,
    `RolloutLayout.duplicate_pairs`: their rollouts match it as well as its own pair's).
    """
    S = _to_numpy(S)
    B, n = layout.batch_pairs, layout.group_size
    if S.shape != (B * n, B * n):
        raise ValueError(f"S has shape {S.shape}, the layout expects {(B * n, B * n)}")
    b, side, r = layout.slot(row)
    sims = S[b * n + r, :] if side == QUERY else S[:, b * n + r]
    other: Side = POSITIVE if side == QUERY else QUERY
    per_pair = sims.reshape(B, n)
    best_rollout = per_pair.argmax(axis=1)  # the first of equal maxima
    best_sim = per_pair.max(axis=1)
    skip = {b, *excluded_pairs}
    others = [c for c in np.argsort(-best_sim, kind="stable").tolist() if c not in skip][:max(0, n_hard)]
    cands = [layout.flat_index(b, other, k) for k in range(n)]
    cands += [layout.flat_index(c, other, int(best_rollout[c])) for c in others]
    mask = np.array([k < n for k in range(len(cands))])
    perm = rng.permutation(len(cands))
    return [cands[i] for i in perm], mask[perm]


ITEM_LABELS = {QUERY: "Instruction", POSITIVE: "Text"}  # the release's labels of a query's / a positive's text


def process_judge_text(reasoning: str, item_text: str, side: Side, *, as_candidate: bool = False) -> str:
    """What the generative process judge reads of a rollout, as the release shows it: the rollout being rewarded
    with its item's text — `Instruction: {query text}\n\nReasoning: {T-CoT}` for a query, `Text: {positive
    text}\n\nReasoning: {T-CoT}` for a positive; a candidate that is a query rollout the same way as a query, a
    candidate that is a positive rollout by its reasoning alone (the release's candidates for a query). An item
    without text (an image alone): the reasoning alone, not an empty label."""
    if side not in ITEM_LABELS:
        raise ValueError(f"side must be 'query' or 'positive', got {side!r}")
    if (as_candidate and side == POSITIVE) or not (item_text or "").strip():
        return reasoning
    return f"{ITEM_LABELS[side]}: {item_text.strip()}\n\nReasoning: {reasoning}"


_ANS = re.compile(r"Ans\s*:\s*\(?\s*(\d+)\s*\)?", re.IGNORECASE)
_PAREN = re.compile(r"\(\s*(\d+)\s*\)")
_BARE = re.compile(r"\A\s*(\d+)\s*[.)]?\s*\Z")


def pick_answer_done(text: str) -> bool:
    """True once generating a pick may stop: an `Ans: k` / `Ans: (k)` answer whose number is followed by another
    character. Nothing appended can then change `parse_pick`: that form wins, `search` keeps its leftmost match,
    and the match's number is complete."""
    m = _ANS.search(text)
    return m is not None and m.end(1) < len(text)


def parse_pick(text: str, n: int) -> int | None:
    """The judge's pick as a **0-based** index into the candidate list, or None.

    The judge answers "(k)" with k 1-based (as listed "(1) … (2) …"); accepted forms: "Ans: (k)" /
    "Ans: k" (first one wins), otherwise a single distinct "(k)" in the text, otherwise a bare number.
    Several different "(k)", no number, or k outside 1..n → None (no process reward).
    """
    if not isinstance(text, str):
        return None
    m = _ANS.search(text)
    if m:
        k = int(m.group(1))
    else:
        found = {int(x) for x in _PAREN.findall(text)}
        if len(found) == 1:
            k = found.pop()
        elif not found and (m := _BARE.match(text)):
            k = int(m.group(1))
        else:
            return None
    return k - 1 if 1 <= k <= n else None


def process_reward(picked_index: int | None, positive_mask: Sequence[bool], margin_i: float) -> float:
    """margin_i if the judge picked a same-pair rollout, else 0.0 (also for no / unparseable pick)."""
    if picked_index is None:
        return 0.0
    if not 0 <= picked_index < len(positive_mask):
        raise ValueError(f"picked index {picked_index} outside 0..{len(positive_mask) - 1}")
    return float(margin_i) if bool(positive_mask[picked_index]) else 0.0


def combine_rewards(fmt: Sequence[float], out: Sequence[float], proc: Sequence[float],
                    weights: tuple[float, float, float] = DEFAULT_WEIGHTS) -> list[float]:
    """r = w_fmt·r_fmt + w_out·r_out + w_proc·r_proc per completion (SPEC: 0.05, 0.8, 0.2)."""
    f, o, p = (_to_numpy(x).reshape(-1) for x in (fmt, out, proc))
    if not len(f) == len(o) == len(p):
        raise ValueError(f"reward lists differ in length: {len(f)}, {len(o)}, {len(p)}")
    w_f, w_o, w_p = weights
    return (w_f * f + w_o * o + w_p * p).tolist()
