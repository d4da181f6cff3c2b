"""The judge prompt of SPEC §1.3 as content segments, shared with the reranker (which trains on it).

One user turn, rendered with the checkpoint's own chat template:

    I will provide you with a query and a candidate. ... respond with 'No'. Query: <query image><query text>,
    Candidate: <candidate image><candidate text>.

It splits into a prefix (everything before the candidate, `judge_prefix_segments`) and the candidate's
part (`judge_candidate_segments`), cut just before the whitespace that precedes the candidate: byte-level
BPE pre-tokenisers attach a leading space to the following word, so the candidate's tokens then start
where the prefix's end.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from unime.data.placeholders import strip_placeholders
from unime.data.video import Video
from unime.models.adapters import Segment
from unime.models.prompts import JUDGE_CANDIDATE_LABEL, JUDGE_END, JUDGE_INSTRUCTION, JUDGE_QUERY_LABEL

# Between the instruction and "Query:" the SPEC's prompt has a line wrap inside a code span, i.e. a space.
JUDGE_INSTRUCTION_SEPARATOR = " "


def judge_item_segments(text: str, images: Sequence[Any] = (), video: Sequence[Any] | None = None) -> list[Segment]:
    """One side of the judge prompt: its video (if any), its images, then its text with the source
    format's image placeholders removed (SPEC 1.3: the images are shown, the placeholders dropped)."""
    segs: list[Segment] = []
    if video:
        segs.append(Segment("video", video if isinstance(video, Video) else list(video)))
    segs.extend(Segment("image", img) for img in images)
    clean = strip_placeholders(text)
    if clean:
        segs.append(Segment("text", clean))
    return segs


def merge_text(segments: Iterable[Segment]) -> list[Segment]:
    """Join adjacent text parts and drop empty ones (the chat template concatenates them anyway; fewer parts
    is tidier). Used by every prompt the judge and the reranker build."""
    out: list[Segment] = []
    for s in segments:
        if s.kind == "text" and out and out[-1].kind == "text":
            out[-1] = Segment("text", out[-1].value + s.value)
        elif s.kind != "text" or s.value:
            out.append(s)
    return out


def judge_prefix_segments(query_segments: Sequence[Segment]) -> list[Segment]:
    """Everything of the judge prompt before the candidate: instruction, query, candidate label up to
    (not including) its trailing whitespace."""
    label = JUDGE_CANDIDATE_LABEL.rstrip()
    return merge_text([Segment("text", JUDGE_INSTRUCTION + JUDGE_INSTRUCTION_SEPARATOR + JUDGE_QUERY_LABEL),
                       *query_segments, Segment("text", label)])


def judge_candidate_segments(candidate_segments: Sequence[Segment]) -> list[Segment]:
    """The candidate part of the judge prompt: the label's trailing whitespace, candidate, final period."""
    label = JUDGE_CANDIDATE_LABEL
    trailing = label[len(label.rstrip()):]
    return merge_text([Segment("text", trailing), *candidate_segments, Segment("text", JUDGE_END)])


def judge_prompt_segments(query_segments: Sequence[Segment], candidate_segments: Sequence[Segment]) -> list[Segment]:
    """The complete user turn of SPEC 1.3 for one (query, candidate) pair."""
    return merge_text([*judge_prefix_segments(query_segments), *judge_candidate_segments(candidate_segments)])
