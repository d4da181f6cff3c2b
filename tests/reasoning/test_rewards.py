"""EG-RL rewards (SPEC §2.3): format, outcome, process, rollout layout, combination."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.stop_rule_property import check_done_texts_parse_the_same
from unime.reasoning.rewards import (
    RolloutLayout,
    combine_rewards,
    completion_text,
    format_reward,
    outcome_rewards,
    parse_pick,
    pick_answer_done,
    process_candidates,
    process_judge_text,
    process_reward,
)

GOOD = '<thinking>{"text_keywords": ["red"]}</thinking><rethink>A red shape.</rethink><answer>red</answer>'


def softmax_weights(a, b, t=0.5):
    """weights of (a, b) in softmax([a, b] / t), by hand: w_a = 1 / (1 + e^{(b - a)/t})."""
    wa = 1.0 / (1.0 + math.exp((b - a) / t))
    return wa, 1.0 - wa


# ------------------------------------------------------------------------------------------------
# format reward


def test_format_reward_strings_and_conversational():
    bad_order = "<thinking>{}</thinking><answer>a</answer><rethink>r</rethink>"
    completions = [GOOD, bad_order, "", [{"role": "assistant", "content": GOOD}],
                   [{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}]]
    # TRL passes extra keyword arguments; they are ignored
    assert format_reward(completions, prompts=["p"] * 5, completion_ids=None) == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert completion_text([{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]) == "xy"
    with pytest.raises(TypeError):
        completion_text(3)


@pytest.mark.parametrize("prefix", ["\n", " ", "Sure! ", "<think>\n\n</think>\n\n"])
def test_format_reward_finds_the_tags_after_a_prefix(prefix):
    # SPEC §2.3 / the release (re.search): the tags in order anywhere; a Qwen3 empty <think> block, a leading
    # space or newline, or a preamble before <thinking> still earns the format reward (QA: all four got 0)
    assert format_reward([prefix + GOOD]) == [1.0]
    assert format_reward([prefix + GOOD], mode="match") == [0.0]  # the anchored mode, on request
    assert format_reward([prefix + "<rethink>r</rethink>" + GOOD.split("<rethink>")[0]]) == [0.0]  # order


# ------------------------------------------------------------------------------------------------
# outcome reward, by hand on B = 2 pairs, n = 2 rollouts

# rows: query rollouts q0r0, q0r1, q1r0, q1r1 ; columns: positive rollouts p0r0, p0r1, p1r0, p1r1
S_HAND = np.array([
    [0.9, 0.7, 0.8, 0.2],
    [0.6, 0.5, 0.1, 0.1],
    [0.3, 0.3, 0.3, 0.9],
    [0.0, 0.4, -0.2, 0.2],
])
POS = [[0, 1], [0, 1], [2, 3], [2, 3]]


def test_outcome_rewards_rows_by_hand():
    # row 0: Pos {0,1} = [0.9, 0.7], Neg = [0.8, 0.2]. top-2 = {c0 (0.9), c2 (0.8)} → acc = 1/2.
    #   softmax([0.8, 0.2]/0.5): w = 1/(1+e^{-1.2}) = 0.768525, 0.231475 → Σ w·s = 0.661115
    #   margin = 0.8 − 0.661115 = 0.138885 ; r = 0.5 · 0.5 · 0.138885 = 0.034721
    # row 1: Pos = [0.6, 0.5] are the top-2 → acc = 1 ; Neg [0.1, 0.1] → weighted mean 0.1
    #   margin = 0.55 − 0.1 = 0.45 ; r = 0.5 · 1 · 0.45 = 0.225
    # row 2: Pos {2,3} = [0.3, 0.9], Neg [0.3, 0.3]; c3 is first, then a tie at 0.3 between the
    #   negatives c0, c1 and the positive c2: ties rank negatives first → top-2 = {c3, c0}, acc = 1/2
    #   margin = 0.6 − 0.3 = 0.3 ; r = 0.25 · 0.3 = 0.075
    # row 3: Pos = [-0.2, 0.2], Neg = [0.0, 0.4]; top-2 = {c1 (0.4 neg), c3 (0.2 pos)} → acc = 1/2
    #   softmax([0.0, 0.4]/0.5): w(0.4) = 1/(1+e^{-0.8}) = 0.689974 → Σ w·s = 0.275990
    #   margin = 0.0 − 0.275990 ; r = 0.25 · (−0.275990) = −0.068997
    reward, acc, margin = outcome_rewards(S_HAND, POS)
    w0, w1 = softmax_weights(0.8, 0.2)
    assert w0 == pytest.approx(0.768525, abs=1e-6)
    assert acc.tolist() == [0.5, 1.0, 0.5, 0.5]
    assert margin == pytest.approx([0.8 - (w0 * 0.8 + w1 * 0.2), 0.45, 0.3, -softmax_weights(0.4, 0.0)[0] * 0.4])
    assert margin == pytest.approx([0.138885, 0.45, 0.3, -0.275990], abs=1e-6)
    assert reward == pytest.approx([0.034721, 0.225, 0.075, -0.068997], abs=1e-6)


def test_outcome_rewards_columns_by_hand():
    # the positive rollouts' rewards = rows of S.T against the query rollouts
    # col 0 = [0.9, 0.6, 0.3, 0.0], Pos {0,1}: top-2 both positive → acc 1 ; mean Pos 0.75
    #   Neg [0.3, 0.0]: w(0.3) = 1/(1+e^{-0.6}) = 0.645656 → 0.193697 ; margin 0.556303 ; r = 0.278152
    # col 1 = [0.7, 0.5, 0.3, 0.4]: acc 1 ; mean Pos 0.6 ; Neg [0.3, 0.4]: w(0.4) = 1/(1+e^{-0.2}) = 0.549834
    #   → 0.450166·0.3 + 0.549834·0.4 = 0.354984 ; margin 0.245016 ; r = 0.122508
    # col 2 = [0.8, 0.1, 0.3, -0.2], Pos {2,3}: top-2 = {q0 (0.8 neg), q2 (0.3 pos)} → acc 1/2 ; mean Pos 0.05
    #   Neg [0.8, 0.1]: w(0.8) = 1/(1+e^{-1.4}) = 0.802184 → 0.661529 ; margin −0.611529 ; r = −0.152882
    # col 3 = [0.2, 0.1, 0.9, 0.2], Pos {2,3}: q2 first, then the tie at 0.2 (q0 neg, q3 pos) → negative
    #   first → acc 1/2 ; mean Pos 0.55 ; Neg [0.2, 0.1]: w(0.2) = 0.549834 → 0.154983 ; margin 0.395017
    #   r = 0.25 · 0.395017 = 0.098754
    reward, acc, margin = outcome_rewards(S_HAND.T, POS)
    assert acc.tolist() == [1.0, 1.0, 0.5, 0.5]
    assert margin == pytest.approx([0.556303, 0.245016, -0.611529, 0.395017], abs=1e-6)
    assert reward == pytest.approx([0.278152, 0.122508, -0.152882, 0.098754], abs=1e-6)


def test_outcome_rewards_options_and_torch_input():
    torch = pytest.importorskip("torch")
    base = outcome_rewards(S_HAND, POS)
    t = outcome_rewards(torch.tensor(S_HAND, dtype=torch.float64), POS)
    assert np.allclose(base.reward, t.reward)
    # scale and temperature are options: a huge temperature makes the negative term the plain mean
    r = outcome_rewards(S_HAND, POS, neg_temperature=1e6, scale=1.0)
    assert r.margin[0] == pytest.approx(0.8 - 0.5, abs=1e-6)
    assert r.reward[0] == pytest.approx(0.5 * 0.3, abs=1e-6)
    # a tiny temperature makes it the max negative
    r = outcome_rewards(S_HAND, POS, neg_temperature=1e-4)
    assert r.margin[3] == pytest.approx(0.0 - 0.4, abs=1e-6)


def test_outcome_rewards_pairs_sharing_a_positive_are_not_negatives():
    # B = 3 pairs, n = 1; pairs 0 and 1 have the same positive item, pair 2 another
    S = np.array([[0.5, 0.6, 0.1],
                  [0.7, 0.4, 0.2],
                  [0.3, 0.2, 0.8]])
    lay = RolloutLayout(3, 1)
    excl = lay.duplicate_index_sets(["same", "same", "other"])
    assert excl == [[1], [0], []] and lay.duplicate_pairs(["same", "same", "other"]) == [[1], [0], []]
    # row 0: Pos c0 0.5; c1 (0.6, a copy of its positive) left out; Neg c2 0.1 → acc 1, margin 0.4, r 0.2
    #   (counted as a negative it would rank first: acc 0, r 0 — the QA's finding)
    # row 1: Pos c1 0.4; c0 left out; Neg c2 0.2 → acc 1, margin 0.2, r 0.1
    # row 2: Pos c2 0.8; Neg [0.3, 0.2]: w(0.3) = 1/(1+e^{-0.2}) = 0.549834 → 0.254983 ; margin 0.545017
    r = outcome_rewards(S, lay.pos_index_sets(), excluded_index_sets=excl)
    assert r.acc.tolist() == [1.0, 1.0, 1.0]
    assert r.margin == pytest.approx([0.4, 0.2, 0.545017], abs=1e-6)
    assert r.reward == pytest.approx([0.2, 0.1, 0.272508], abs=1e-6)
    assert outcome_rewards(S, lay.pos_index_sets()).acc.tolist() == [0.0, 0.0, 1.0]  # without: ties lost
    # columns (positive rollouts vs queries): col 0 [0.5, 0.7, 0.3] → Pos 0.5, q1 left out, Neg 0.3 → margin 0.2
    #   col 1 [0.6, 0.4, 0.2] → Pos 0.4, q0 left out, Neg 0.2 → margin 0.2
    #   col 2 [0.1, 0.2, 0.8] → Neg [0.1, 0.2]: w(0.2) = 0.549834 → 0.154983 ; margin 0.645017
    r = outcome_rewards(S.T, lay.pos_index_sets(), excluded_index_sets=excl)
    assert r.margin == pytest.approx([0.2, 0.2, 0.645017], abs=1e-6)
    assert r.reward == pytest.approx([0.1, 0.1, 0.322508], abs=1e-6)


def test_outcome_rewards_two_pairs_with_one_positive_have_no_negatives():
    # B = 2, n = 2, both pairs' positive the same item: no negatives from each other → the negative term is 0
    # (as the release does for an empty Neg), acc 1, margin = mean(Pos)
    # rows of S_HAND: [0.9, 0.7] → 0.8 ; [0.6, 0.5] → 0.55 ; [0.3, 0.9] → 0.6 ; [-0.2, 0.2] → 0.0
    excl = RolloutLayout(2, 2).duplicate_index_sets(["a", "a"])
    assert excl == [[2, 3], [2, 3], [0, 1], [0, 1]]
    r = outcome_rewards(S_HAND, POS, excluded_index_sets=excl)
    assert r.acc.tolist() == [1.0] * 4
    assert r.margin == pytest.approx([0.8, 0.55, 0.6, 0.0])
    assert r.reward == pytest.approx([0.4, 0.275, 0.3, 0.0])
    # through the layout: embeddings in flat completion order (interleaved: q0 q0 p0 p0 q1 q1 p1 p1)
    E = np.array([[1, 0], [1, 0], [1, 0], [0.6, 0.8], [0, 1], [0, 1], [1, 0], [0.6, 0.8]], dtype=float)
    lay = RolloutLayout(2, 2)
    with_keys = lay.outcome_rewards(E, positive_keys=["a", "a"])
    # q0 rollouts: Pos p0 = [1, 0.6] → margin 0.8 ; q1 rollouts: Pos p1 = [0, 0.8] → margin 0.4
    assert with_keys.margin[lay.side_flat_indices("query")] == pytest.approx([0.8, 0.8, 0.4, 0.4])
    assert lay.outcome_rewards(E, positive_keys=["a", "b"]).margin == pytest.approx(lay.outcome_rewards(E).margin)
    with pytest.raises(ValueError, match="not positives"):
        outcome_rewards(S_HAND, POS, excluded_index_sets=[[0], [], [], []])


def test_outcome_rewards_reject_bad_input():
    with pytest.raises(ValueError, match="no negative"):
        outcome_rewards(np.ones((2, 2)), [[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="3 positive index sets for 4 rows"):
        outcome_rewards(S_HAND, POS[:3])
    with pytest.raises(ValueError, match="outside"):
        outcome_rewards(S_HAND, [[0, 4]] + POS[1:])
    with pytest.raises(ValueError, match="repeated"):
        outcome_rewards(S_HAND, [[0, 0]] + POS[1:])
    with pytest.raises(ValueError, match="NaN"):
        outcome_rewards(np.where(S_HAND > 0.85, np.nan, S_HAND), POS)


# ------------------------------------------------------------------------------------------------
# rollout layout


def test_layout_interleaved_and_blocked_indices():
    # interleaved, B = 2, n = 2: prompts [q0, p0, q1, p1] → flat 0,1 = q0 ; 2,3 = p0 ; 4,5 = q1 ; 6,7 = p1
    lay = RolloutLayout(batch_pairs=2, group_size=2)
    assert lay.side_flat_indices("query").tolist() == [0, 1, 4, 5]
    assert lay.side_flat_indices("positive").tolist() == [2, 3, 6, 7]
    assert lay.flat_index(1, "positive", 1) == 7 and lay.slot(7) == (1, "positive", 1)
    # blocked: prompts [q0, q1, p0, p1] → 0,1 = q0 ; 2,3 = q1 ; 4,5 = p0 ; 6,7 = p1
    lay = RolloutLayout(batch_pairs=2, group_size=2, prompt_order="blocked")
    assert lay.side_flat_indices("query").tolist() == [0, 1, 2, 3]
    assert lay.side_flat_indices("positive").tolist() == [4, 5, 6, 7]
    assert lay.slot(5) == (0, "positive", 1)
    assert lay.pos_index_sets() == POS


def test_layout_similarity_matrix_independent():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(8, 5))
    lay = RolloutLayout(batch_pairs=2, group_size=2)
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    expected = np.array([[En[q] @ En[p] for p in (2, 3, 6, 7)] for q in (0, 1, 4, 5)])
    assert np.allclose(lay.similarity_matrix(E), expected)
    with pytest.raises(ValueError, match=r"expected \(8, d\)"):
        lay.similarity_matrix(E[:7])
    with pytest.raises(ValueError, match="zero"):
        lay.similarity_matrix(np.vstack([E[:7], np.zeros((1, 5))]))


def test_layout_outcome_rewards_in_flat_order():
    rng = np.random.default_rng(1)
    E = rng.normal(size=(8, 4))
    lay = RolloutLayout(batch_pairs=2, group_size=2)
    flat = lay.outcome_rewards(E)
    S = lay.similarity_matrix(E)
    rows, cols = outcome_rewards(S, POS), outcome_rewards(S.T, POS)
    assert np.allclose(flat.reward[[0, 1, 4, 5]], rows.reward)
    assert np.allclose(flat.reward[[2, 3, 6, 7]], cols.reward)
    assert np.allclose(flat.margin[[2, 3, 6, 7]], cols.margin)
    assert np.allclose(flat.acc[[0, 1, 4, 5]], rows.acc)


def _slot_embeddings(B, n, d, seed):
    """One embedding per (pair, side, rollout); pairs are made similar so rewards are non-trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(B, d))
    return {(b, s, r): centres[b] + 0.8 * rng.normal(size=d) for b in range(B) for s in ("query", "positive")
            for r in range(n)}


def test_permuted_layout_gives_permuted_rewards():
    B, n = 4, 3
    emb = _slot_embeddings(B, n, 8, seed=2)
    rng = np.random.default_rng(3)
    explicit = [(b, s) for b in range(B) for s in ("query", "positive")]
    explicit = [explicit[i] for i in rng.permutation(len(explicit))]
    layouts = [RolloutLayout(B, n), RolloutLayout(B, n, prompt_order="blocked"),
               RolloutLayout(B, n, prompts=explicit)]
    per_slot = []
    for lay in layouts:
        E = np.stack([emb[lay.slot(f)] for f in range(lay.num_completions)])
        res = lay.outcome_rewards(E)
        per_slot.append({lay.slot(f): (res.reward[f], res.acc[f], res.margin[f]) for f in range(lay.num_completions)})
    for other in per_slot[1:]:
        for key, val in per_slot[0].items():
            assert other[key] == pytest.approx(val)
    # rewards are not all equal, so the comparison means something
    assert len({round(v[0], 9) for v in per_slot[0].values()}) > B

    # reading blocked-ordered completions with the interleaved layout (the release's kind of mix-up)
    # changes the rewards of the same completions
    blocked = layouts[1]
    E_blocked = np.stack([emb[blocked.slot(f)] for f in range(blocked.num_completions)])
    wrong = RolloutLayout(B, n).outcome_rewards(E_blocked).reward
    right = blocked.outcome_rewards(E_blocked).reward
    assert not np.allclose(wrong, right)


def test_layout_from_completion_keys_any_order():
    B, n = 3, 2
    emb = _slot_embeddings(B, n, 6, seed=4)
    ref = RolloutLayout(B, n)
    ref_res = ref.outcome_rewards(np.stack([emb[ref.slot(f)] for f in range(ref.num_completions)]))
    ref_by_slot = {ref.slot(f): ref_res.reward[f] for f in range(ref.num_completions)}
    # completions in an arbitrary shuffled order, described only by their dataset columns
    slots = [ref.slot(f) for f in np.random.default_rng(5).permutation(ref.num_completions)]
    pair_ids = [f"pair-{b}" for b, _, _ in slots]
    sides = [s for _, s, _ in slots]
    lay = RolloutLayout.from_completion_keys(pair_ids, sides, group_size=n)
    res = lay.outcome_rewards(np.stack([emb[s] for s in slots]))
    # pairs are renumbered by first appearance and rollouts by occurrence; the reward of a completion
    # depends on its pair and side only through the set of its own pair's rollouts, so compare by
    # (pair id, side) groups: the multiset of rewards in each group must match
    for pid in {p for p in pair_ids}:
        b_ref = int(pid.split("-")[1])
        for side in ("query", "positive"):
            got = sorted(res.reward[f] for f in range(len(slots)) if pair_ids[f] == pid and sides[f] == side)
            exp = sorted(ref_by_slot[(b_ref, side, r)] for r in range(n))
            assert got == pytest.approx(exp)


def test_layout_rejects_bad_specs():
    with pytest.raises(ValueError):
        RolloutLayout(2, 2, prompt_order="zigzag")
    with pytest.raises(ValueError, match="exactly once"):
        RolloutLayout(2, 2, prompts=[(0, "query"), (0, "positive"), (1, "query"), (1, "query")])
    with pytest.raises(ValueError, match="has 1 positive completions, expected 2"):
        RolloutLayout.from_completion_keys(["a", "a", "a"], ["query", "query", "positive"], group_size=2)
    with pytest.raises(ValueError, match="side must be"):
        RolloutLayout.from_completion_keys(["a"], ["doc"], group_size=1)


# ------------------------------------------------------------------------------------------------
# process reward


def _process_setup():
    # B = 6 pairs, n = 2. Row q0r1 (flat index 1 in the interleaved layout) has, per positive pair (r0, r1),
    # p0 (0.9, 0.9) own ; p1 (0.1, 0.2) ; p2 (0.75, 0.05) ; p3 (0.5, 0.5) ; p4 (0.6, 0.7) ; p5 (0.45, 0.45)
    # most similar rollout per pair: p1 r1 0.2, p2 r0 0.75, p3 r0 0.5 (tie → r0), p4 r1 0.7, p5 r0 0.45
    # → the 4 hardest other pairs by it: 2 (0.75), 4 (0.7), 3 (0.5), 5 (0.45); pair 1 left out
    # (by mean they would be 4 (0.65), 3 (0.5), 5 (0.45), 2 (0.4))
    B, n = 6, 2
    lay = RolloutLayout(B, n)
    S = np.zeros((B * n, B * n))
    S[1] = [0.9, 0.9, 0.1, 0.2, 0.75, 0.05, 0.5, 0.5, 0.6, 0.7, 0.45, 0.45]
    return lay, S


def test_process_candidates_selection():
    lay, S = _process_setup()
    cands, mask = process_candidates(1, S, lay, n_hard=4, rng=np.random.default_rng(0))
    # candidates are flat indices of positive rollouts: pair b's rollout r is 4b + 2 + r (interleaved, n = 2)
    # own pair: 2, 3 ; one rollout per hard pair (the release): p2 r0 = 10, p4 r1 = 19, p3 r0 = 14, p5 r0 = 22
    expected_pos = {2, 3}
    expected_neg = {10, 19, 14, 22}
    assert len(cands) == 6 and set(cands) == expected_pos | expected_neg
    assert {c for c, m in zip(cands, mask) if m} == expected_pos
    assert all(lay.slot(c)[1] == "positive" for c in cands)
    # n_hard = 2 → pairs 2 and 4 (by mean it would be 4 and 3)
    cands, mask = process_candidates(1, S, lay, n_hard=2, rng=np.random.default_rng(0))
    assert set(cands) == {2, 3, 10, 19} and int((~mask).sum()) == 2
    # n_hard = 1 → only pair 2's rollout r0
    cands, mask = process_candidates(1, S, lay, n_hard=1, rng=np.random.default_rng(0))
    assert set(cands) == {2, 3, 10}


def test_process_candidates_leave_out_pairs_sharing_the_positive():
    # as _process_setup, pair 2 (the hardest, 0.75) has the same positive item as pair 0: it is no negative;
    # the 2 hardest are then 4 (0.7) and 3 (0.5, r0 = 14)
    lay, S = _process_setup()
    cands, mask = process_candidates(1, S, lay, n_hard=2, rng=np.random.default_rng(0), excluded_pairs=[2])
    assert set(cands) == {2, 3, 19, 14} and {c for c, m in zip(cands, mask) if m} == {2, 3}


def test_process_candidates_count_of_the_recipe_batch():
    # B = 5 pairs, n = 4, 4 hard pairs: 4 own rollouts + 4 (one per negative pair) = 8 candidates, not 20
    lay = RolloutLayout(5, 4)
    S = np.random.default_rng(3).uniform(-1, 1, size=(20, 20))
    for row in range(lay.num_completions):
        cands, mask = process_candidates(row, S, lay, n_hard=4, rng=np.random.default_rng(row))
        assert len(cands) == 8 and int(mask.sum()) == 4
        assert len({lay.slot(c)[0] for c, m in zip(cands, mask) if not m}) == 4  # 4 different pairs


def test_process_candidates_shuffled_and_reproducible():
    lay, S = _process_setup()
    a = process_candidates(1, S, lay, rng=np.random.default_rng(7))
    b = process_candidates(1, S, lay, rng=np.random.default_rng(7))
    assert a[0] == b[0] and a[1].tolist() == b[1].tolist()
    firsts = [process_candidates(1, S, lay, rng=np.random.default_rng(s))[1][:2].all() for s in range(20)]
    assert not all(firsts)  # positives are not always listed first
    orders = {tuple(process_candidates(1, S, lay, rng=np.random.default_rng(s))[0]) for s in range(20)}
    assert len(orders) > 1


def test_process_candidates_positive_side_uses_columns():
    lay, S = _process_setup()
    # positive rollout p3r0 is flat index 4·3 + 2 = 14, column 6 of S; in its column q0 (0.3, 0.8), q5 (0.7, 0.7),
    # others 0 → hardest (n_hard = 1) is pair 0 by its rollout r1 (0.8), flat index 1
    S = np.zeros_like(S)
    S[0:2, 6] = [0.3, 0.8]
    S[10:12, 6] = 0.7
    cands, mask = process_candidates(14, S, lay, n_hard=1, rng=np.random.default_rng(0))
    assert set(cands) == {lay.flat_index(3, "query", 0), lay.flat_index(3, "query", 1), 1}
    assert {c for c, m in zip(cands, mask) if m} == {12, 13}
    with pytest.raises(ValueError, match="shape"):
        process_candidates(14, S[:4], lay, rng=np.random.default_rng(0))


def test_process_judge_text_as_the_release_shows_it():
    cot = "<thinking>{}</thinking><rethink>r</rethink><answer>a</answer>"
    assert process_judge_text(cot, "find it", "query") == f"Instruction: find it\n\nReasoning: {cot}"
    assert process_judge_text(cot, "a red circle", "positive") == f"Text: a red circle\n\nReasoning: {cot}"
    # candidates: a query rollout with its instruction, a positive rollout by its reasoning alone (the release's)
    assert process_judge_text(cot, "q", "query", as_candidate=True) == f"Instruction: q\n\nReasoning: {cot}"
    assert process_judge_text(cot, "p", "positive", as_candidate=True) == cot
    assert process_judge_text(cot, "  ", "query") == cot  # an image alone: no empty label


@pytest.mark.parametrize("text,n,expected", [
    ("Ans: (3)", 5, 2),
    ("Ans:(1)", 5, 0),
    ("ans: 4", 5, 3),
    ("The best match is (2).", 5, 1),
    ("(2) fits better than (4)", 5, None),  # ambiguous
    ("(2) ... yes, (2)", 5, 1),
    ("3", 5, 2),
    (" 3. ", 5, 2),
    ("(6)", 5, None),  # out of range
    ("(0)", 5, None),
    ("none of them", 5, None),
    ("Ans: (2) but maybe (4)", 5, 1),  # the explicit answer wins
    (None, 5, None),
])
def test_parse_pick(text, n, expected):
    assert parse_pick(text, n) == expected


def test_a_pick_is_done_once_its_labelled_number_is_closed():
    assert [pick_answer_done(t) for t in ("", "Ans", "Ans: (", "Ans: (2", "Ans: (2)", "Ans: 12 ", "(2)", "3",
                                          "Ans:(4", "ans: 7.")] == \
        [False, False, False, False, True, True, False, False, False, True]


def test_a_done_pick_parses_the_same_whatever_follows():
    """The stop rule's guarantee: when a text is done, every continuation parses to the same pick."""
    alphabet = list("Ans: ()2 34x.") + ["Ans: (", "Ans:", ")", "(4)", "(2)", "ans"]
    assert check_done_texts_parse_the_same(pick_answer_done, lambda t: parse_pick(t, 40), alphabet, seed=1) > 100


def test_process_reward():
    mask = np.array([False, True, False, True])
    assert process_reward(1, mask, 0.3) == 0.3
    assert process_reward(3, mask, -0.1) == -0.1
    assert process_reward(0, mask, 0.3) == 0.0
    assert process_reward(None, mask, 0.3) == 0.0
    with pytest.raises(ValueError):
        process_reward(4, mask, 0.3)
    # wired end to end: the judge's "(k)" answer through parse_pick
    assert process_reward(parse_pick("Ans: (2)", 4), mask, 0.25) == 0.25


# ------------------------------------------------------------------------------------------------
# combination


def test_combine_rewards():
    # [1, 0.5, 0.3] → 0.05 + 0.4 + 0.06 = 0.51 ; [0, −0.2, 0] → −0.16
    assert combine_rewards([1, 0], [0.5, -0.2], [0.3, 0.0]) == pytest.approx([0.51, -0.16])
    assert combine_rewards([1], [1], [1], weights=(1.0, 2.0, 3.0)) == pytest.approx([6.0])
    with pytest.raises(ValueError):
        combine_rewards([1, 0], [0.5], [0.3, 0.0])
