"""Losses of embedder training (UniME-V2 stage D, SPEC §1.5), as `nn.Module`s.

Every loss has the same call signature (sentence-transformers style: the loss owns its configuration,
the trainer only hands it representations):

    loss(query_reps, candidate_reps, scores=None, *, candidate_ids=None) -> scalar tensor

    query_reps      (B, d)     one embedding per query
    candidate_reps  (B, C, d)  each query's candidate group; column 0 is the positive c_t, columns
                               1..C-1 its mined hard negatives c_1..c_k (C = 1 + k)
    scores          (B, C)     judge scores s(q, ·) of the same group, positive first
                               (`query_pos_scores`, then `hard_negatives_scores`) — soft-label losses only
    candidate_ids   (B, C)     int64 identity of each candidate item (equal iff same content; the
                               collator's `candidate_ids`) — used by in-batch InfoNCE to mask copies of
                               a query's positive elsewhere in the batch; the other losses ignore it

Similarities are cosines: both sides are L2-normalised inside the loss (a no-op for the embedder's
output, which is already normalised). The result is the mean over the B queries. Under data
parallelism the trainer all-gathers the reps before calling the loss, so B is the global batch.

`LOSSES` maps the names used on the command line to the classes; `build_loss(name, **options)`
builds one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unime.train.loss_defaults import DEFAULT_KL_EPS, DEFAULT_TEMPERATURE


class GroupLoss(nn.Module):
    """Base class: shape checks and the query × candidate-group cosine matrix."""

    name = ""
    #: True if the loss needs judge scores (`Record.positive_score` / `negative_scores`)
    requires_scores = False

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    @staticmethod
    def check_shapes(query_reps: torch.Tensor, candidate_reps: torch.Tensor, scores: torch.Tensor | None = None):
        if query_reps.dim() != 2 or candidate_reps.dim() != 3:
            raise ValueError(f"expected query_reps (B, d) and candidate_reps (B, C, d), got "
                             f"{tuple(query_reps.shape)} and {tuple(candidate_reps.shape)}")
        b, d = query_reps.shape
        if candidate_reps.shape[0] != b or candidate_reps.shape[2] != d:
            raise ValueError(f"candidate_reps {tuple(candidate_reps.shape)} does not match "
                             f"query_reps {tuple(query_reps.shape)}")
        if scores is not None and tuple(scores.shape) != tuple(candidate_reps.shape[:2]):
            raise ValueError(f"scores must have shape (B, C) = {tuple(candidate_reps.shape[:2])}, "
                             f"got {tuple(scores.shape)}")

    @staticmethod
    def group_similarities(query_reps: torch.Tensor, candidate_reps: torch.Tensor) -> torch.Tensor:
        """(B, C) cosine of each query with each candidate of its own group."""
        q, c = _unit(query_reps), _unit(candidate_reps)
        return torch.einsum("bd,bcd->bc", q, c)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    def config(self) -> dict:
        return {"temperature": self.temperature}


def _unit(reps: torch.Tensor) -> torch.Tensor:
    """L2-normalised, computed in at least float32."""
    if reps.dtype in (torch.float16, torch.bfloat16):
        reps = reps.float()
    return F.normalize(reps, dim=-1)


def _log_probs(logits: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact log-softmax, log(softmax + eps)); with eps == 0 both are the exact log-softmax."""
    exact = F.log_softmax(logits, dim=-1)
    if eps == 0:
        return exact, exact
    return exact, torch.log(exact.exp() + eps)


class SoftLabelLoss(GroupLoss):
    """Base of the losses that match the embedder's distribution over a query's group to the judge's:

        P = softmax(sim(q, ·) / τ)            over {c_t, c_1, ..., c_k}
        Q = softmax(s(q, ·) / τ_label)        over the judge scores of the same candidates

    As released (`in_batch=False`), only each query's own group is scored (the judge scored nothing else): no
    in-batch negatives. `in_batch=True` (not in the paper) adds the other queries' positives to each query's
    candidates with the label score `IN_BATCH_SCORE` (0, the bottom of the judge's P(Yes) scale: the assumption
    in-batch InfoNCE makes about them); with `candidate_ids`, a column that is a copy of an item of the query's
    own group is left out of both P and Q (it is already in the group, with the judge's score).
    """

    requires_scores = True

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, label_temperature: float | None = None,
                 eps: float = 0.0, in_batch: bool = False):
        super().__init__(temperature)
        self.label_temperature = float(label_temperature if label_temperature is not None else temperature)
        if not self.label_temperature > 0:
            raise ValueError(f"label_temperature must be > 0, got {label_temperature}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)
        self.in_batch = bool(in_batch)

    def config(self) -> dict:
        return {"temperature": self.temperature, "label_temperature": self.label_temperature, "eps": self.eps,
                **({"in_batch": True} if self.in_batch else {})}

    def distributions(self, query_reps, candidate_reps, scores, candidate_ids=None):
        """Log-probabilities of P (embedder) and Q (judge), each as (exact, log(p + eps)), and the (B, C')
        mask of the columns that take part (None: all of them; only `in_batch` leaves columns out)."""
        self.check_shapes(query_reps, candidate_reps, scores)
        if scores is None:
            raise ValueError(f"the {self.name} loss needs judge scores for every candidate")
        sims = self.group_similarities(query_reps, candidate_reps)
        labels = scores.to(sims.dtype)
        valid = None
        if self.in_batch:
            b, c = sims.shape
            others = _unit(query_reps) @ _unit(candidate_reps[:, 0]).T  # (B, B): query i against positive j
            left_out = torch.eye(b, dtype=torch.bool, device=sims.device)  # its own positive is column 0 already
            if candidate_ids is not None:
                ids = candidate_ids.to(sims.device)
                if tuple(ids.shape) != (b, c):
                    raise ValueError(f"candidate_ids must have shape (B, C) = {(b, c)}, got {tuple(ids.shape)}")
                left_out = left_out | (ids[:, :, None] == ids[None, :, 0]).any(1)  # positive j is in i's group
            valid = torch.cat([torch.ones_like(sims, dtype=torch.bool), ~left_out], dim=1)
            sims = torch.cat([sims, others], dim=1).masked_fill(~valid, float("-inf"))
            labels = torch.cat([labels, torch.full_like(others, IN_BATCH_SCORE)], dim=1).masked_fill(~valid,
                                                                                                 float("-inf"))
        log_p = _log_probs(sims / self.temperature, self.eps)
        log_q = _log_probs(labels / self.label_temperature, self.eps)
        if valid is not None:  # a left-out column's log-probabilities are −inf: 0 here, and its terms are masked
            log_p, log_q = (tuple(x.masked_fill(~valid, 0.0) for x in pair) for pair in (log_p, log_q))
        return log_p, log_q, valid


#: the label score of another query's positive under `in_batch` (SoftLabelLoss)
IN_BATCH_SCORE = 0.0


def _masked(term: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """`term` with the columns left out of P and Q set to 0."""
    return term if valid is None else term.masked_fill(~valid, 0.0)


class SymmetricKLLoss(SoftLabelLoss):
    """Symmetric KL between the embedder's P and the judge's Q (see `SoftLabelLoss`):

        L = ½ [KL(Q‖P) + KL(P‖Q)],   mean over queries.

    This is the loss of the released UniME-V2 code (`SoftLabelSoftKLContrastiveLoss`), which the paper
    calls "JS divergence"; `JensenShannonLoss` is the true JS. Defaults follow the release: τ = τ_label
    = 0.02 and `eps` = 1e-8, the release's `log(p + 1e-8)` on the second argument of each KL term
    (it bounds the penalty where one distribution is ~0); `eps=0` gives the exact divergence.

    Reference: Gu et al., "UniME-V2: MLLM-as-a-Judge for Universal Multimodal Embedding Learning",
    AAAI 2026, arXiv:2510.13515, §3.3 (and the released training code).
    """

    name = "symmetric_kl"

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, label_temperature: float | None = None,
                 eps: float = DEFAULT_KL_EPS, in_batch: bool = False):
        super().__init__(temperature, label_temperature, eps, in_batch)

    def forward(self, query_reps: torch.Tensor, candidate_reps: torch.Tensor,
                scores: torch.Tensor | None = None, *, candidate_ids: torch.Tensor | None = None) -> torch.Tensor:
        # candidate_ids only matter with in_batch (copies of the group's items among the other positives)
        (log_p, log_p_eps), (log_q, log_q_eps), valid = self.distributions(query_reps, candidate_reps, scores,
                                                                           candidate_ids)
        kl_q_p = _masked(log_q.exp() * (log_q - log_p_eps), valid).sum(-1).mean()  # KL(Q‖P)
        kl_p_q = _masked(log_p.exp() * (log_p - log_q_eps), valid).sum(-1).mean()  # KL(P‖Q)
        return 0.5 * (kl_q_p + kl_p_q)


class JensenShannonLoss(SoftLabelLoss):
    """True Jensen–Shannon divergence between the embedder's P and the judge's Q (see `SoftLabelLoss`):

        M = ½ (P + Q),   L = ½ KL(P‖M) + ½ KL(Q‖M),   mean over queries.

    Bounded by log 2; what the UniME-V2 paper's text names, as opposed to its released symmetric KL.
    Computed in log space (log M = logsumexp(log P, log Q) − log 2), so it needs no epsilon.

    Reference: Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory 1991;
    Gu et al., UniME-V2, arXiv:2510.13515, §3.3.
    """

    name = "js"

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, label_temperature: float | None = None,
                 in_batch: bool = False):
        super().__init__(temperature, label_temperature, eps=0.0, in_batch=in_batch)

    def config(self) -> dict:
        return {"temperature": self.temperature, "label_temperature": self.label_temperature,
                **({"in_batch": True} if self.in_batch else {})}

    def forward(self, query_reps: torch.Tensor, candidate_reps: torch.Tensor,
                scores: torch.Tensor | None = None, *, candidate_ids: torch.Tensor | None = None) -> torch.Tensor:
        # candidate_ids only matter with in_batch (copies of the group's items among the other positives)
        (log_p, _), (log_q, _), valid = self.distributions(query_reps, candidate_reps, scores, candidate_ids)
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
        kl_p_m = _masked(log_p.exp() * (log_p - log_m), valid).sum(-1)
        kl_q_m = _masked(log_q.exp() * (log_q - log_m), valid).sum(-1)
        return (0.5 * (kl_p_m + kl_q_m)).mean()


class InfoNCELoss(GroupLoss):
    """InfoNCE (cross-entropy over cosine / τ) with the positive as the target; judge scores are ignored.

    Negatives of query i:
    - `in_batch=True`: the positives of every other query in the (global) batch, plus — if
      `use_hard_negatives` — every hard negative in the batch (VLM2Vec / sentence-transformers'
      MultipleNegativesRankingLoss layout);
    - `in_batch=False`: only its own hard negatives c_1..c_k (needs k >= 1).

    The paper's ablations (Table 4): "no hard negatives, no soft labels" = in-batch with k = 0;
    "+ hard negatives" = in-batch with the mined hard negatives. `symmetric=True` adds the
    target → query direction over the in-batch queries (Embed-RL's contrastive stage, SPEC §2.1).

    Duplicates (`mask_duplicates=True`, the default, and `candidate_ids` given): when several queries
    share the same positive (classification labels, duplicated retrieval targets), the other copies of
    query i's positive in the pool are not negatives of query i — every pool column j != i whose id
    equals the id of query i's positive (another query's positive, or a hard negative anywhere in the
    batch) gets logit -inf. Query i's own column i is never masked. In the symmetric direction, target
    j's row masks every query i != j whose positive has the same id. Without ids (or with
    `mask_duplicates=False`) nothing is masked. `in_batch=False` ignores ids: a query's own group is
    the miner's (false-negative filter's) responsibility.

    Reference: van den Oord et al., "Representation Learning with Contrastive Predictive Coding",
    arXiv:1807.03748; Jiang et al., VLM2Vec, arXiv:2410.05160.
    """

    name = "infonce"

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, in_batch: bool = True, use_hard_negatives: bool = True,
                 symmetric: bool = False, mask_duplicates: bool = True):
        super().__init__(temperature)
        if symmetric and not in_batch:
            raise ValueError("symmetric InfoNCE needs in-batch negatives (the other queries are the negatives "
                             "of the target → query direction)")
        self.in_batch = bool(in_batch)
        self.use_hard_negatives = bool(use_hard_negatives)
        self.symmetric = bool(symmetric)
        self.mask_duplicates = bool(mask_duplicates)

    def config(self) -> dict:
        return {"temperature": self.temperature, "in_batch": self.in_batch,
                "use_hard_negatives": self.use_hard_negatives, "symmetric": self.symmetric,
                "mask_duplicates": self.mask_duplicates}

    def forward(self, query_reps: torch.Tensor, candidate_reps: torch.Tensor,
                scores: torch.Tensor | None = None, *, candidate_ids: torch.Tensor | None = None) -> torch.Tensor:
        self.check_shapes(query_reps, candidate_reps)
        b, c, d = candidate_reps.shape
        if candidate_ids is not None and tuple(candidate_ids.shape) != (b, c):
            raise ValueError(f"candidate_ids must have shape (B, C) = {(b, c)}, got {tuple(candidate_ids.shape)}")
        use_hn = self.use_hard_negatives and c > 1
        if not self.in_batch:
            if not use_hn:
                raise ValueError("InfoNCE without in-batch negatives needs hard negatives (k >= 1)")
            logits = self.group_similarities(query_reps, candidate_reps) / self.temperature
            target = torch.zeros(b, dtype=torch.long, device=logits.device)
            return F.cross_entropy(logits, target)
        q, cands = _unit(query_reps), _unit(candidate_reps)
        positives = cands[:, 0]
        pool = torch.cat([positives, cands[:, 1:].reshape(-1, d)]) if use_hn else positives
        logits = q @ pool.T / self.temperature  # (B, B [+ B*k]); query i's positive is column i
        target = torch.arange(b, device=logits.device)
        same_positive = None
        if self.mask_duplicates and candidate_ids is not None:
            ids = candidate_ids.to(logits.device)
            pos_ids = ids[:, 0]
            pool_ids = torch.cat([pos_ids, ids[:, 1:].reshape(-1)]) if use_hn else pos_ids
            duplicate = pool_ids.unsqueeze(0) == pos_ids.unsqueeze(1)  # (B, pool): column is a copy of row's positive
            duplicate[target, target] = False  # the target itself
            logits = logits.masked_fill(duplicate, float("-inf"))
            same_positive = duplicate[:, :b]  # (B, B), symmetric: queries i != j with equal positives
        loss = F.cross_entropy(logits, target)
        if self.symmetric:
            t2q = positives @ q.T / self.temperature  # row j: target j against every query
            if same_positive is not None:
                t2q = t2q.masked_fill(same_positive, float("-inf"))
            loss = 0.5 * (loss + F.cross_entropy(t2q, target))
        return loss


LOSSES: dict[str, type[GroupLoss]] = {
    SymmetricKLLoss.name: SymmetricKLLoss,
    JensenShannonLoss.name: JensenShannonLoss,
    InfoNCELoss.name: InfoNCELoss,
}


def build_loss(name: str, **options) -> GroupLoss:
    """Build a loss by its command-line name; `options` are its constructor's keyword arguments."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name](**options)
