"""Embedding losses against hand-computed values and an independent numpy implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unime.train.losses import (LOSSES, InfoNCELoss, JensenShannonLoss, SymmetricKLLoss, build_loss)

E = math.e

# One query, three candidates (positive first), τ = 1 so the numbers stay readable:
#   q = (1, 0);  c_t = (1, 0), c_1 = (0, 1), c_2 = (-1, 0)   → cosines (1, 0, -1)
#   judge scores (1, 0.5, 0)
#   P = softmax(1, 0, -1)  = (e, 1, 1/e) / (e + 1 + 1/e)              = (0.665241, 0.244728, 0.090031)
#   Q = softmax(1, .5, 0)  = (e, e^.5, 1) / (e + e^.5 + 1)            = (0.506480, 0.307196, 0.186324)
#   log Q_i − log P_i = (s_i − sim_i) − (log Z_Q − log Z_P) = (0, .5, 1) − (1.680270 − 1.407606)
#                     = (−0.272664, 0.227336, 0.727336)
#   KL(Q‖P) =  Σ Q_i (log Q_i − log P_i) = −0.138099 + 0.069837 + 0.135520 = 0.067258
#   KL(P‖Q) = −Σ P_i (log Q_i − log P_i) =  0.181387 − 0.055636 − 0.065483 = 0.060269
#   symmetric KL = ½ (0.067258 + 0.060269) = 0.063763
Q1 = torch.tensor([[1.0, 0.0]])
C1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
S1 = torch.tensor([[1.0, 0.5, 0.0]])
P_HAND = [E / (E + 1 + 1 / E), 1 / (E + 1 + 1 / E), (1 / E) / (E + 1 + 1 / E)]
Q_HAND = [E / (E + E ** 0.5 + 1), E ** 0.5 / (E + E ** 0.5 + 1), 1 / (E + E ** 0.5 + 1)]


def test_hand_distributions_match_the_comment():
    assert P_HAND == pytest.approx([0.665241, 0.244728, 0.090031], abs=1e-6)
    assert Q_HAND == pytest.approx([0.506480, 0.307196, 0.186324], abs=1e-6)


def test_symmetric_kl_hand_computed():
    loss = SymmetricKLLoss(temperature=1.0, eps=0.0)(Q1, C1, S1)
    kl_qp = sum(q * math.log(q / p) for p, q in zip(P_HAND, Q_HAND))
    kl_pq = sum(p * math.log(p / q) for p, q in zip(P_HAND, Q_HAND))
    assert kl_qp == pytest.approx(0.067258, abs=1e-6)
    assert kl_pq == pytest.approx(0.060269, abs=1e-6)
    assert float(loss) == pytest.approx(0.063763, abs=1e-6)
    # the release's eps = 1e-8 is invisible when no probability is tiny
    assert float(SymmetricKLLoss(temperature=1.0)(Q1, C1, S1)) == pytest.approx(0.063763, abs=1e-6)


def test_js_hand_computed():
    # M = (P + Q)/2 = (0.585861, 0.275962, 0.138177)
    # JS = ½ Σ P log(P/M) + ½ Σ Q log(Q/M)
    #    = ½ (0.084530 − 0.029395 − 0.038568) + ½ (−0.073742 + 0.032938 + 0.055701) = 0.015732
    m = [(p + q) / 2 for p, q in zip(P_HAND, Q_HAND)]
    assert m == pytest.approx([0.585861, 0.275962, 0.138177], abs=1e-6)
    loss = JensenShannonLoss(temperature=1.0)(Q1, C1, S1)
    assert float(loss) == pytest.approx(0.015732, abs=1e-6)
    assert float(loss) <= math.log(2)


def test_temperature_divides_both_sides():
    # τ = 0.5 doubles every logit: same as τ = 1 with sims (2, 0, -2) and scores (2, 1, 0)
    a = SymmetricKLLoss(temperature=0.5, eps=0.0)(Q1, C1, S1)
    b = SymmetricKLLoss(temperature=1.0, eps=0.0)(Q1, C1 * 1.0, S1 * 2.0)  # scores doubled only ...
    sims2 = torch.tensor([[2.0, 0.0, -2.0]])
    p = torch.softmax(sims2, -1)
    q = torch.softmax(S1 * 2.0, -1)
    expect = 0.5 * ((q * (q.log() - p.log())).sum() + (p * (p.log() - q.log())).sum())
    assert float(a) == pytest.approx(float(expect), abs=1e-6)
    assert float(a) != pytest.approx(float(b), abs=1e-3)  # ... is not the same: sims must be scaled too
    # label temperature separately
    c = SymmetricKLLoss(temperature=0.5, label_temperature=1.0, eps=0.0)(Q1, C1, S1)
    q1 = torch.softmax(S1, -1)
    expect_c = 0.5 * ((q1 * (q1.log() - p.log())).sum() + (p * (p.log() - q1.log())).sum())
    assert float(c) == pytest.approx(float(expect_c), abs=1e-6)


def test_infonce_hand_computed():
    # two queries, τ = 1;  q1 = (1,0), q2 = (0,1);  positives p1 = (1,0), p2 = (0.6, 0.8);
    # hard negatives n1 = (-1, 0), n2 = (0, -1)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[0.6, 0.8], [0.0, -1.0]]])
    # own group only: row 1 logits (1, -1), row 2 (0.8, -1)
    own = 0.5 * ((math.log(E + 1 / E) - 1) + (math.log(math.exp(0.8) + 1 / E) - 0.8))
    assert float(InfoNCELoss(1.0, in_batch=False)(q, c)) == pytest.approx(own, abs=1e-6)
    # in-batch, positives only: row 1 (q1·p1, q1·p2) = (1, 0.6), row 2 (0, 0.8)
    inb = 0.5 * ((math.log(E + math.exp(0.6)) - 1) + (math.log(1 + math.exp(0.8)) - 0.8))
    loss = InfoNCELoss(1.0, in_batch=True, use_hard_negatives=False)(q, c)
    assert float(loss) == pytest.approx(inb, abs=1e-6)
    assert float(InfoNCELoss(1.0, in_batch=True)(q[:, :], c[:, :1])) == pytest.approx(inb, abs=1e-6)  # k = 0
    # in-batch + hard negatives: columns (p1, p2, n1, n2): row 1 (1, .6, -1, 0), row 2 (0, .8, 0, -1)
    both = 0.5 * ((math.log(E + math.exp(0.6) + 1 / E + 1) - 1) + (math.log(1 + math.exp(0.8) + 1 + 1 / E) - 0.8))
    assert float(InfoNCELoss(1.0, in_batch=True)(q, c)) == pytest.approx(both, abs=1e-6)
    # symmetric: target→query rows p1 (p1·q1, p1·q2) = (1, 0), p2 (0.6, 0.8)
    t2q = 0.5 * ((math.log(E + 1) - 1) + (math.log(math.exp(0.6) + math.exp(0.8)) - 0.8))
    sym = InfoNCELoss(1.0, in_batch=True, use_hard_negatives=False, symmetric=True)(q, c)
    assert float(sym) == pytest.approx(0.5 * (inb + t2q), abs=1e-6)


def test_infonce_own_group_is_cross_entropy_on_position_zero():
    assert float(InfoNCELoss(1.0, in_batch=False)(Q1, C1)) == pytest.approx(-math.log(P_HAND[0]), abs=1e-6)


# -- independent numpy implementation ---------------------------------------------------------------
def _np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _np_normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_symmetric_kl(q, c, s, tau, eps):
    sims = np.einsum("bd,bcd->bc", _np_normalise(q), _np_normalise(c))
    p, qq = _np_softmax(sims / tau), _np_softmax(s / tau)
    kl_qp = np.sum(qq * (np.log(qq) - np.log(p + eps)), -1).mean()
    kl_pq = np.sum(p * (np.log(p) - np.log(qq + eps)), -1).mean()
    return 0.5 * (kl_qp + kl_pq)


def np_js(q, c, s, tau):
    sims = np.einsum("bd,bcd->bc", _np_normalise(q), _np_normalise(c))
    p, qq = _np_softmax(sims / tau), _np_softmax(s / tau)
    m = 0.5 * (p + qq)
    return (0.5 * np.sum(p * np.log(p / m), -1) + 0.5 * np.sum(qq * np.log(qq / m), -1)).mean()


def np_infonce(q, c, tau, in_batch, use_hn):
    q, c = _np_normalise(q), _np_normalise(c)
    b, k1, d = c.shape
    if in_batch:
        pool = c[:, 0] if not use_hn else np.concatenate([c[:, 0], c[:, 1:].reshape(-1, d)])
        logits, target = q @ pool.T / tau, np.arange(b)
    else:
        logits, target = np.einsum("bd,bcd->bc", q, c) / tau, np.zeros(b, dtype=int)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return -logp[np.arange(b), target].mean()


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_against_numpy(tau):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 7))
    c = rng.normal(size=(5, 4, 7))
    s = rng.uniform(size=(5, 4))
    tq, tc, ts = (torch.tensor(x, dtype=torch.float64) for x in (q, c, s))
    for eps in (0.0, 1e-8):
        got = SymmetricKLLoss(tau, eps=eps)(tq, tc, ts)
        assert float(got) == pytest.approx(np_symmetric_kl(q, c, s, tau, eps), rel=1e-6)
    assert float(JensenShannonLoss(tau)(tq, tc, ts)) == pytest.approx(np_js(q, c, s, tau), rel=1e-6)
    for in_batch, use_hn in ((True, True), (True, False), (False, True)):
        got = InfoNCELoss(tau, in_batch=in_batch, use_hard_negatives=use_hn)(tq, tc)
        assert float(got) == pytest.approx(np_infonce(q, c, tau, in_batch, use_hn), rel=1e-6)


def test_release_eps_bounds_the_penalty_at_small_temperature():
    # τ = 0.02 with 0/1 judge scores makes Q's negatives ~e^-50: the exact KL(P‖Q) is huge, the release's
    # log(q + 1e-8) caps log q at about -18.4
    rng = np.random.default_rng(1)
    q, c = rng.normal(size=(3, 8)), rng.normal(size=(3, 5, 8))
    s = np.zeros((3, 5))
    s[:, 0] = 1.0
    tq, tc, ts = (torch.tensor(x, dtype=torch.float64) for x in (q, c, s))
    exact = float(SymmetricKLLoss(0.02, eps=0.0)(tq, tc, ts))
    released = float(SymmetricKLLoss(0.02)(tq, tc, ts))
    assert exact == pytest.approx(np_symmetric_kl(q, c, s, 0.02, 0.0), rel=1e-6)
    assert released == pytest.approx(np_symmetric_kl(q, c, s, 0.02, 1e-8), rel=1e-6)
    assert released < exact


def test_losses_are_zero_when_distributions_agree_and_gradients_check():
    # candidates whose cosines equal the scores → P == Q → both divergences 0
    q = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    s = torch.tensor([[1.0, 0.0]])
    assert float(SymmetricKLLoss(0.5, eps=0.0)(q, c, s)) == pytest.approx(0.0, abs=1e-7)
    assert float(JensenShannonLoss(0.5)(q, c, s)) == pytest.approx(0.0, abs=1e-7)
    torch.manual_seed(0)
    qd = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    cd = torch.randn(3, 3, 4, dtype=torch.float64, requires_grad=True)
    sd = torch.rand(3, 3, dtype=torch.float64)
    for loss in (SymmetricKLLoss(0.3, eps=0.0), JensenShannonLoss(0.3), InfoNCELoss(0.3)):
        assert torch.autograd.gradcheck(lambda a, b: loss(a, b, sd), (qd, cd), fast_mode=True)


def test_errors():
    with pytest.raises(ValueError, match="judge scores"):
        SymmetricKLLoss()(Q1, C1, None)
    with pytest.raises(ValueError, match="shape"):
        SymmetricKLLoss()(Q1, C1, torch.ones(1, 2))
    with pytest.raises(ValueError, match="hard negatives"):
        InfoNCELoss(in_batch=False)(Q1, C1[:, :1])
    with pytest.raises(ValueError, match="in-batch"):
        InfoNCELoss(in_batch=False, symmetric=True)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("triplet")
    assert set(LOSSES) == {"symmetric_kl", "js", "infonce"}
    assert LOSSES["symmetric_kl"].requires_scores and LOSSES["js"].requires_scores
    assert not LOSSES["infonce"].requires_scores


# -- in-batch duplicates: copies of a query's positive are masked, not negatives ----------------------
# Three queries, τ = 1, k = 1. Queries 0 and 2 share the positive "red" (id 10); query 1's hard negative
# is another copy of "red".
#   q0 = (1, 0), q1 = (0, 1), q2 = (0.6, 0.8)
#   positives p0 = (1, 0) [10], p1 = (0, 1) [20], p2 = (1, 0) [10]
#   hard negatives n0 = (-1, 0) [30], n1 = (1, 0) [10], n2 = (0, -1) [40]
#   pool columns (p0, p1, p2, n0, n1, n2), ids (10, 20, 10, 30, 10, 40)
DQ = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
DC = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, -1.0]]])
DIDS = torch.tensor([[10, 30], [20, 10], [10, 40]], dtype=torch.long)


def _np_ce(logits: np.ndarray, target: np.ndarray) -> float:
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(target)), target].mean())


def test_infonce_masks_copies_of_the_positive_hand_computed():
    # row 0: sims (1, 0, 1, -1, 1, 0); columns 2 and 4 are "red" too → masked: (1, 0, -1, 0) remain
    # row 1: sims (0, 1, 0, 0, 0, -1); its positive (20) has no copy → nothing masked
    # row 2: sims (.6, .8, .6, -.6, .6, -.8), target column 2; columns 0 and 4 masked
    row0 = math.log(E + 1 + 1 / E + 1) - 1
    row1 = math.log(4 + E + 1 / E) - 1
    row2 = math.log(math.exp(0.8) + math.exp(0.6) + math.exp(-0.6) + math.exp(-0.8)) - 0.6
    masked = InfoNCELoss(1.0)(DQ, DC, candidate_ids=DIDS)
    assert float(masked) == pytest.approx((row0 + row1 + row2) / 3, abs=1e-6)

    # the same as a numpy cross-entropy on the logits with the masked entries at -inf
    q, c = _np_normalise(DQ.numpy().astype(np.float64)), _np_normalise(DC.numpy().astype(np.float64))
    pool = np.concatenate([c[:, 0], c[:, 1:].reshape(-1, 2)])
    logits = q @ pool.T
    mask = np.zeros_like(logits, dtype=bool)
    mask[0, [2, 4]] = True
    mask[2, [0, 4]] = True
    assert float(masked) == pytest.approx(_np_ce(np.where(mask, -np.inf, logits), np.arange(3)), abs=1e-6)

    # unmasked, the copies count as negatives: a larger loss, and exactly today's result
    unmasked_hand = (math.log(3 * E + 1 + 1 / E + 1) - 1 + row1
                     + math.log(3 * math.exp(0.6) + math.exp(0.8) + math.exp(-0.6) + math.exp(-0.8)) - 0.6) / 3
    plain = InfoNCELoss(1.0, mask_duplicates=False)(DQ, DC, candidate_ids=DIDS)
    assert float(plain) == pytest.approx(unmasked_hand, abs=1e-6)
    assert float(plain) == pytest.approx(_np_ce(logits, np.arange(3)), abs=1e-6)
    assert float(masked) < float(plain) - 0.1


def test_infonce_without_ids_is_unchanged():
    no_ids = InfoNCELoss(1.0)(DQ, DC)
    assert float(no_ids) == pytest.approx(np_infonce(DQ.numpy(), DC.numpy(), 1.0, True, True), rel=1e-6)
    assert float(no_ids) == pytest.approx(float(InfoNCELoss(1.0, mask_duplicates=False)(DQ, DC, candidate_ids=DIDS)),
                                          abs=1e-7)
    # all ids distinct: nothing to mask
    distinct = torch.arange(6, dtype=torch.long).reshape(3, 2)
    assert float(InfoNCELoss(1.0)(DQ, DC, candidate_ids=distinct)) == pytest.approx(float(no_ids), abs=1e-7)
    # own-group InfoNCE ignores ids (only in-batch pools hold other queries' candidates)
    own = InfoNCELoss(1.0, in_batch=False)
    assert float(own(DQ, DC, candidate_ids=DIDS)) == pytest.approx(float(own(DQ, DC)), abs=1e-7)


def test_infonce_symmetric_masks_queries_with_the_same_positive():
    # positives only (k = 0 in the pool):
    # query → target: row 0 (1, 0, 1) mask col 2; row 1 (0, 1, 0); row 2 (.6, .8, .6) target 2, mask col 0
    q2t = (math.log(E + 1) - 1 + math.log(2 + E) - 1 + math.log(math.exp(0.8) + math.exp(0.6)) - 0.6) / 3
    # target → query (row j = p_j · (q0, q1, q2)): p0 (1, 0, .6) mask q2; p1 (0, 1, .8); p2 (1, 0, .6) target 2,
    # mask q0 (its positive is p2's copy)
    t2q = (math.log(E + 1) - 1 + math.log(1 + E + math.exp(0.8)) - 1 + math.log(1 + math.exp(0.6)) - 0.6) / 3
    loss = InfoNCELoss(1.0, use_hard_negatives=False, symmetric=True)(DQ, DC, candidate_ids=DIDS)
    assert float(loss) == pytest.approx(0.5 * (q2t + t2q), abs=1e-6)
    # numpy on the masked target → query logits
    q, p = _np_normalise(DQ.numpy().astype(np.float64)), _np_normalise(DC[:, 0].numpy().astype(np.float64))
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 2] = mask[2, 0] = True
    assert t2q == pytest.approx(_np_ce(np.where(mask, -np.inf, p @ q.T), np.arange(3)), abs=1e-6)
    # unmasked symmetric: p0 and p2 rows see the duplicate query as a negative
    t2q_plain = (math.log(E + 1 + math.exp(0.6)) - 1 + math.log(1 + E + math.exp(0.8)) - 1
                 + math.log(E + 1 + math.exp(0.6)) - 0.6) / 3
    q2t_plain = (math.log(2 * E + 1) - 1 + math.log(2 + E) - 1 + math.log(math.exp(0.8) + 2 * math.exp(0.6)) - 0.6) / 3
    plain = InfoNCELoss(1.0, use_hard_negatives=False, symmetric=True, mask_duplicates=False)
    assert float(plain(DQ, DC, candidate_ids=DIDS)) == pytest.approx(0.5 * (q2t_plain + t2q_plain), abs=1e-6)
    assert float(plain(DQ, DC)) == pytest.approx(0.5 * (q2t_plain + t2q_plain), abs=1e-6)


def test_masked_infonce_gradients_and_option_plumbing():
    torch.manual_seed(0)
    qd = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    cd = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[1, 5], [2, 1], [1, 6], [2, 7]])
    for loss in (InfoNCELoss(0.3), InfoNCELoss(0.3, symmetric=True)):
        assert torch.autograd.gradcheck(lambda a, b: loss(a, b, candidate_ids=ids), (qd, cd), fast_mode=True)
        out = loss(qd, cd, candidate_ids=ids)
        out.backward()
        assert torch.isfinite(qd.grad).all() and torch.isfinite(cd.grad).all()
        qd.grad = cd.grad = None
    assert InfoNCELoss().config()["mask_duplicates"] is True
    assert build_loss("infonce", mask_duplicates=False).config()["mask_duplicates"] is False
    assert "mask_duplicates=True" in repr(InfoNCELoss())
    # the soft-label losses take the keyword and ignore it (their group is the query's own candidates)
    s = torch.rand(4, 2, dtype=torch.float64)
    for loss in (SymmetricKLLoss(0.3), JensenShannonLoss(0.3)):
        with torch.no_grad():
            assert float(loss(qd, cd, s, candidate_ids=ids)) == float(loss(qd, cd, s))
    with pytest.raises(ValueError, match="candidate_ids"):
        InfoNCELoss()(qd, cd, candidate_ids=ids[:, :1])


def _soft_in_batch_reference(q, cands, scores, ids, tau, label_tau, eps, kind):
    """Per query, the candidate list written out: its own group, then every other query's positive that is not an
    item of its group, with label score 0; P and Q over that list, numpy in float64."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    cands = cands / np.linalg.norm(cands, axis=-1, keepdims=True)
    out = []
    for i in range(len(q)):
        items = [(cands[i, c], scores[i, c]) for c in range(cands.shape[1])]
        items += [(cands[j, 0], 0.0) for j in range(len(q)) if j != i and ids[j, 0] not in set(ids[i])]
        sims = np.array([q[i] @ v for v, _ in items]) / tau
        labels = np.array([s for _, s in items]) / label_tau
        p = np.exp(sims - sims.max()); p /= p.sum()
        qq = np.exp(labels - labels.max()); qq /= qq.sum()
        if kind == "symmetric_kl":
            out.append(0.5 * (np.sum(qq * (np.log(qq) - np.log(p + eps))) + np.sum(p * (np.log(p) - np.log(qq + eps)))))
        else:
            m = (p + qq) / 2
            out.append(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(qq * np.log(qq / m)))
    return float(np.mean(out))


@pytest.mark.parametrize("kind", ["symmetric_kl", "js"])
def test_soft_label_losses_with_in_batch_negatives_match_the_written_out_candidate_lists(kind):
    """`in_batch=True` (not in the release): the other queries' positives join each query's candidates with label
    score 0, except copies of an item of its own group (query 2's positive is query 0's hard negative, query 3's
    positive equals query 1's): against a per-query numpy implementation, and gradients stay finite."""
    rng = np.random.default_rng(0)
    b, c, d = 4, 3, 5
    q = rng.normal(size=(b, d))
    cands = rng.normal(size=(b, c, d))
    ids = np.arange(b * c).reshape(b, c)
    cands[2, 0], ids[2, 0] = cands[0, 2], ids[0, 2]
    cands[3, 0], ids[3, 0] = cands[1, 0], ids[1, 0]
    scores = rng.uniform(size=(b, c))
    options = {"temperature": 0.5, "label_temperature": 0.25}
    if kind == "symmetric_kl":
        options["eps"] = 1e-3
    loss_fn = build_loss(kind, in_batch=True, **options)
    qt = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    got = loss_fn(qt, torch.tensor(cands), torch.tensor(scores), candidate_ids=torch.tensor(ids))
    want = _soft_in_batch_reference(q, cands, scores, ids, 0.5, 0.25, options.get("eps", 0.0), kind)
    assert got.item() == pytest.approx(want, rel=1e-9)
    got.backward()
    assert torch.isfinite(qt.grad).all() and qt.grad.abs().sum() > 0
    # without ids only a query's own positive is left out of its in-batch columns
    no_ids = loss_fn(torch.tensor(q), torch.tensor(cands), torch.tensor(scores))
    want = _soft_in_batch_reference(q, cands, scores, np.arange(b * c).reshape(b, c), 0.5, 0.25,
                                    options.get("eps", 0.0), kind)
    assert float(no_ids) == pytest.approx(want, rel=1e-9)
    # the released loss (in_batch off) is the mean of the group-only values (each query alone: no other positives)
    group_only = build_loss(kind, **options)(torch.tensor(q), torch.tensor(cands), torch.tensor(scores))
    alone = [_soft_in_batch_reference(q[i:i + 1], cands[i:i + 1], scores[i:i + 1], ids[i:i + 1], 0.5, 0.25,
                                      options.get("eps", 0.0), kind) for i in range(b)]
    assert float(group_only) == pytest.approx(np.mean(alone), rel=1e-9)
    assert float(group_only) != pytest.approx(got.item(), rel=1e-3)
