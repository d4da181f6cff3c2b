"""Prompts of the UniME-V2 reranker (SPEC §1.6), as content segments.

Every prompt is a list of `Segment`s (text / image / video parts of one user turn) that a
`FamilyAdapter` renders with the checkpoint's chat template. Inside these prompts an item appears as
`<video><images><text>`, its text with the source image placeholders removed (the images are
given as their own parts, SPEC 1.3). Every candidate contributes its images *and* its text: the
released reranker code silently dropped candidate texts (a key mismatch), which we must not repeat.

- pairwise: exactly the judge prompt of `unime.models.judge_prompt` (re-exported here as `judge_prompt` and
  `item_content`), so that what the reranker trains on is what the judge's fast prefix-cached path
  scores; answer `Yes` / `No`.
- listwise: `listwise_prompt(query, candidates)`, candidates numbered `(1) .. (n)`; its answer is
  `Ans: (k)` (`listwise_answer(k)`, 1-based), read back by `parse_listwise_answer`.
- `answer_format(adapter)`: how the checkpoint's chat template frames an assistant answer (what comes
  before it and the end-of-turn text after it), read off the template itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from unime.errors import ModelError
from unime.models.adapters import FamilyAdapter, Segment
from unime.models.judge_prompt import JUDGE_INSTRUCTION_SEPARATOR
from unime.models.judge_prompt import judge_item_segments as item_content
from unime.models.judge_prompt import judge_prompt_segments as judge_prompt
from unime.models.judge_prompt import merge_text
from unime.models.prompts import LISTWISE_INSTRUCTION, NO, YES

__all__ = ["item_content", "judge_prompt", "judge_answer", "listwise_prompt", "listwise_answer",
           "parse_listwise_answer", "listwise_answer_done", "merge_text", "AnswerFormat", "answer_format"]

# the judge prompt's separator between the instruction and the query, for the listwise prompt too
INSTRUCTION_SEPARATOR = JUDGE_INSTRUCTION_SEPARATOR
LISTWISE_QUERY_LABEL = "Query: "
LISTWISE_CANDIDATE_SEPARATOR = "\n"


def judge_answer(is_match: bool) -> str:
    """The pairwise target: `Yes` for a match, `No` otherwise."""
    return YES if is_match else NO


# -- the assistant's answer ----------------------------------------------------------------------
@dataclass(frozen=True)
class AnswerFormat:
    """How the chat template frames an assistant answer: text it puts before the answer (empty for
    Qwen-VL; e.g. an empty think block for some templates) and the end-of-turn text after it."""

    prefix: str
    turn_end: str


def answer_format(adapter: FamilyAdapter) -> AnswerFormat:
    """Read the assistant answer framing off the checkpoint's own chat template."""
    sentinel = "UNIME_ANSWER_SENTINEL"
    user = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
    prompt = adapter.render(user, add_generation_prompt=True)
    full = adapter.render(user + [{"role": "assistant", "content": [{"type": "text", "text": sentinel}]}],
                          add_generation_prompt=False)
    rest = full[len(prompt):] if full.startswith(prompt) else None
    if rest is None or sentinel not in rest:
        eos = adapter.tokenizer.eos_token
        if not eos:
            raise ModelError("cannot tell how the chat template ends an assistant turn, and the tokenizer has no "
                             "eos token")
        return AnswerFormat("", eos)
    before, after = rest.split(sentinel, 1)
    return AnswerFormat(before, after.rstrip())


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


def listwise_answer_done(text: str) -> bool:
    """True once generation may stop: the text holds a labelled answer (`Ans: (3)`, `Answer: 3` ...) whose
    number is followed by another character. Nothing appended can then change `parse_listwise_answer`: the
    labelled pattern wins, `search` keeps its leftmost match, and the match's number is complete."""
    m = _ANS_LABELLED.search(text)
    return m is not None and m.end(1) < len(text)


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
