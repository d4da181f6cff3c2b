"""Prompts of the UniME-V2 judge and reranker (SPEC §1.3, §1.6), as content segments.

Every prompt is a list of `Segment`s (text / image / video parts of one user turn) that a
`FamilyAdapter` renders with the checkpoint's chat template. Inside these prompts an item appears as
`<video><images><text>`, its text with the source image placeholders removed (the images are
given as their own parts, SPEC 1.3). Every candidate contributes its images *and* its text: the
released reranker code silently dropped candidate texts (a key mismatch), which we must not repeat.

- pairwise (= the judge prompt): `judge_prompt(query, candidate)`; its answer is `Yes` / `No`.
  It splits into `judge_prompt_prefix(query)` + `judge_prompt_suffix(candidate)` so that a scorer
  can encode the query prefix once for many candidates.
- listwise: `listwise_prompt(query, candidates)`, candidates numbered `(1) .. (n)`; its answer is
  `Ans: (k)` (`listwise_answer(k)`, 1-based), read back by `parse_listwise_answer`.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from unime.models.adapters import Segment, strip_placeholders
from unime.models.prompts import (JUDGE_CANDIDATE_LABEL, JUDGE_END, JUDGE_INSTRUCTION, JUDGE_QUERY_LABEL,
                                  LISTWISE_INSTRUCTION, NO, YES)

# between the task instruction and the first item of a prompt
INSTRUCTION_SEPARATOR = "\n"
LISTWISE_QUERY_LABEL = "Query: "
LISTWISE_CANDIDATE_SEPARATOR = "\n"


def item_content(text: str, images: Sequence[Any] = (), video: Sequence[Any] | None = None) -> list[Segment]:
    """An item as it appears inside a judge / reranker prompt: video frames, then images, then its text
    with the source image placeholders removed (SPEC 1.3). `images` / `video` are loaded images."""
    segs: list[Segment] = []
    if video:
        segs.append(Segment("video", list(video)))
    segs.extend(Segment("image", img) for img in images)
    clean = strip_placeholders(text)
    if clean:
        segs.append(Segment("text", clean))
    return segs


def merge_text(segments: Sequence[Segment]) -> list[Segment]:
    """Join adjacent text parts (the chat template concatenates them anyway; fewer parts is tidier)."""
    out: list[Segment] = []
    for s in segments:
        if s.kind == "text":
            if not s.value:
                continue
            if out and out[-1].kind == "text":
                out[-1] = Segment("text", out[-1].value + s.value)
                continue
        out.append(s)
    return out


# -- pairwise (judge) ----------------------------------------------------------------------------
def judge_prompt_prefix(query: Sequence[Segment]) -> list[Segment]:
    """`<instruction> Query: <query image><query text>` — shared by every candidate of a query."""
    return merge_text([Segment("text", JUDGE_INSTRUCTION + INSTRUCTION_SEPARATOR + JUDGE_QUERY_LABEL), *query])


def judge_prompt_suffix(candidate: Sequence[Segment]) -> list[Segment]:
    """`, Candidate: <candidate image><candidate text>.`"""
    return merge_text([Segment("text", JUDGE_CANDIDATE_LABEL), *candidate, Segment("text", JUDGE_END)])


def judge_prompt(query: Sequence[Segment], candidate: Sequence[Segment]) -> list[Segment]:
    """The judge's single user turn (SPEC 1.3) for one (query, candidate) pair."""
    return merge_text(judge_prompt_prefix(query) + judge_prompt_suffix(candidate))


def judge_answer(is_match: bool) -> str:
    return YES if is_match else NO


# -- listwise ------------------------------------------------------------------------------------
def listwise_prompt(query: Sequence[Segment], candidates: Sequence[Sequence[Segment]]) -> list[Segment]:
    """The listwise instruction (SPEC 1.6), the query, then `(i) <image><text>` per candidate (1-based)."""
    if not candidates:
        raise ValueError("a listwise prompt needs at least one candidate")
    segs: list[Segment] = [Segment("text", LISTWISE_INSTRUCTION + INSTRUCTION_SEPARATOR + LISTWISE_QUERY_LABEL),
                           *query]
    for i, cand in enumerate(candidates, start=1):
        segs.append(Segment("text", f"{LISTWISE_CANDIDATE_SEPARATOR}({i}) "))
        segs.extend(cand)
    return merge_text(segs)


def listwise_answer(k: int) -> str:
    """The listwise target for the k-th candidate (1-based): `Ans: (k)`."""
    if k < 1:
        raise ValueError(f"candidate numbers are 1-based, got {k}")
    return f"Ans: ({k})"


# `Ans: (3)`, `Ans:(3)`, `Answer: 3`, `ans 3` ...
_ANS_LABELLED = re.compile(r"\bans(?:wer)?\s*[:：=\-]?\s*[\(\[]?\s*(\d+)", re.IGNORECASE)
# `(3)` / `[3]` anywhere
_ANS_BRACKETED = re.compile(r"[\(\[]\s*(\d+)\s*[\)\]]")
# a bare leading number: `3`, `3.`, `3) ...`
_ANS_BARE = re.compile(r"^\s*(\d+)(?!\d)")


def parse_listwise_answer(text: str) -> int | None:
    """The 1-based candidate number in a generated listwise answer, or None if there is none.

    Accepts `Ans: (k)` and its variants (`Ans:(k)`, `Answer: k`, `(k)`, `k`, with trailing text); a
    labelled answer wins over a bracketed number, which wins over a bare leading number. The range is
    not checked here (the caller knows how many candidates there were)."""
    for pattern in (_ANS_LABELLED, _ANS_BRACKETED, _ANS_BARE):
        m = pattern.search(text)
        if m:
            return int(m.group(1))
    return None
