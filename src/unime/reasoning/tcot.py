"""T-CoT, the traceability chain of thought of Embed-RL (SPEC §2.2): parse, check, validate, render.

Format: `<thinking>{JSON}</thinking><rethink>…</rethink><answer>…</answer>`; prose may surround the JSON
inside `<thinking>` (as the release's prompts ask: the first balanced JSON object is the evidence, the prose
stays in the text). The JSON holds the evidence, by modality:

- `{"text_keywords": ["...", ...]}` for text;
- `{"bbox_2d": [x1, y1, x2, y2]}` or `{"bbox_2d": [[x1, y1, x2, y2], ...]}` for images, coordinates
  normalised to 0–1000;
- `{"key_frames": [1, 4, ...]}` for video, **1-based** frame indices (the released code read them
  0-based; we do not).

`format_ok` is the format reward's regex and nothing more (SPEC §2.3). `parse_tcot` is stricter: each
tag exactly once and in order, the JSON an object with well-typed fields; any violation raises
`TCoTError` saying which tag / key / position. `validate_tcot` lists quality problems of a parsed
T-CoT (boxes, key frames, conciseness) without raising, for filtering teacher data.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from unime.errors import DataError

# SPEC §2.3, verbatim; DOTALL so `.` crosses newlines
FORMAT_REGEX = r"<thinking>.*</thinking>.*<rethink>.*</rethink>.*<answer>.*</answer>"
FORMAT_PATTERN = re.compile(FORMAT_REGEX, re.DOTALL)

# The longest T-CoT a reasoner writes, in tokens: one default for `reason generate`, `reason eval` and GRPO's
# rollouts (`--max-completion-length`), so a reasoner is evaluated at the length it was trained to write (they were
# 256 / 160 / 128: GRPO cut rollouts that eval then let run on). The teacher's T-CoTs of the demo world are at most
# 145 tokens; the Embed-RL release trains its GRPO at 2048 (its recipes set that).
TCOT_MAX_NEW_TOKENS = 256
TCOT_LENGTH_HELP = ("longest T-CoT in tokens (default %(default)s, one default for `reason generate`, `reason eval` "
                    "and `train reasoner --stage grpo --max-completion-length`)")

TAG_ORDER = ("<thinking>", "</thinking>", "<rethink>", "</rethink>", "<answer>", "</answer>")
EVIDENCE_KEYS = ("text_keywords", "bbox_2d", "key_frames")
COORD_MAX = 1000  # boxes are normalised to 0..1000

Box = tuple[int, int, int, int]
Modality = Literal["text", "image", "video"]
MatchMode = Literal["match", "search", "fullmatch"]


class TCoTError(DataError):
    """A completion that is not a well-formed T-CoT. The message says what is wrong and where."""


def format_ok(text: str, *, mode: MatchMode = "match") -> bool:
    """True iff `text` matches SPEC §2.3's regex (tags in order, DOTALL).

    `mode` is how the regex is applied: "match" (default; anchored at the start like `re.match`, so
    a preamble before `<thinking>` fails, trailing text is allowed), "search" (anywhere),
    "fullmatch" (nothing may follow the last `</answer>` either).
    """
    if not isinstance(text, str):
        return False
    if mode == "match":
        return FORMAT_PATTERN.match(text) is not None
    if mode == "search":
        return FORMAT_PATTERN.search(text) is not None
    if mode == "fullmatch":
        return FORMAT_PATTERN.fullmatch(text) is not None
    raise ValueError(f"mode must be 'match', 'search' or 'fullmatch', got {mode!r}")


@dataclass
class Evidence:
    """What a T-CoT points at: keywords of a text, boxes (0–1000) on an image, 1-based key frames of a video."""

    text_keywords: list[str] = field(default_factory=list)
    bboxes: list[Box] = field(default_factory=list)
    key_frames: list[int] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.text_keywords or self.bboxes or self.key_frames)

    def to_json_dict(self) -> dict[str, Any]:
        """The `<thinking>` JSON object: only the non-empty fields; boxes always as a list of boxes."""
        d: dict[str, Any] = {}
        if self.text_keywords:
            d["text_keywords"] = list(self.text_keywords)
        if self.bboxes:
            d["bbox_2d"] = [list(b) for b in self.bboxes]
        if self.key_frames:
            d["key_frames"] = list(self.key_frames)
        return d


@dataclass(frozen=True)
class TCoT:
    """A parsed T-CoT.

    Spans are half-open character ranges of the whole elements (opening tag to closing tag
    included) in `text`. The embedder puts the evidence images right after `</thinking>`:
    `head, tail = tcot.split_for_evidence()` gives `text[:thinking_span[1]]` and the rest.
    """

    text: str
    evidence: Evidence
    thinking_json: str  # the evidence JSON of <thinking> (whitespace-stripped; the object only if prose surrounds it)
    rethink: str
    answer: str
    thinking_span: tuple[int, int]
    rethink_span: tuple[int, int]
    answer_span: tuple[int, int]

    @property
    def evidence_position(self) -> int:
        """Character offset in `text` right after `</thinking>`, where evidence images belong."""
        return self.thinking_span[1]

    def split_for_evidence(self) -> tuple[str, str]:
        return self.text[:self.evidence_position], self.text[self.evidence_position:]


# ------------------------------------------------------------------------------------------------
# parsing


def _tag_positions(text: str, *, source, record) -> list[int]:
    positions = []
    for tag in TAG_ORDER:
        hits = [m.start() for m in re.finditer(re.escape(tag), text)]
        if not hits:
            raise TCoTError(f"missing tag '{tag}'", source=source, record=record, field=tag.strip("</>"))
        if len(hits) > 1:
            raise TCoTError(f"tag '{tag}' appears {len(hits)} times (at chars {hits}); expected exactly once",
                            source=source, record=record, field=tag.strip("</>"))
        positions.append(hits[0])
    for (t1, p1), (t2, p2) in zip(zip(TAG_ORDER, positions), zip(TAG_ORDER[1:], positions[1:])):
        if p2 < p1:
            raise TCoTError(f"tags out of order: '{t2}' (char {p2}) comes before '{t1}' (char {p1}); expected "
                            "<thinking>…</thinking><rethink>…</rethink><answer>…</answer>",
                            source=source, record=record, field=t2.strip("</>"))
    return positions


_FENCE = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.DOTALL)


def _as_int(value: Any, *, what: str, round_floats: bool, source, record) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TCoTError(f"{what} must be a number, got {type(value).__name__} {value!r}", source=source,
                        record=record, field=what)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TCoTError(f"{what} is {value}", source=source, record=record, field=what)
        if not value.is_integer():
            if not round_floats:
                raise TCoTError(f"{what} must be an integer, got {value}", source=source, record=record, field=what)
            return int(math.floor(value + 0.5))
        return int(value)
    return value


def evidence_from_json(obj: Any, *, unknown_keys: Literal["raise", "ignore"] = "raise", source: str | None = None,
                       record: str | int | None = None) -> Evidence:
    """Type-check a decoded `<thinking>` JSON object and build `Evidence`.

    `bbox_2d` may be one box `[x1, y1, x2, y2]` or a list of boxes; box coordinates may be floats
    (rounded half-up). Key frames must be integers (integral floats such as 3.0 accepted).
    """
    if not isinstance(obj, Mapping):
        raise TCoTError(f"<thinking> must hold a JSON object, got {type(obj).__name__}", source=source,
                        record=record, field="thinking")
    unknown = [k for k in obj if k not in EVIDENCE_KEYS]
    if unknown and unknown_keys == "raise":
        raise TCoTError(f"unknown key(s) {unknown} in the <thinking> JSON; expected some of {list(EVIDENCE_KEYS)}",
                        source=source, record=record, field="thinking")
    ev = Evidence()

    kws = obj.get("text_keywords", [])
    if not isinstance(kws, list):
        raise TCoTError(f"text_keywords must be a list of strings, got {type(kws).__name__}", source=source,
                        record=record, field="thinking.text_keywords")
    for i, k in enumerate(kws):
        if not isinstance(k, str):
            raise TCoTError(f"text_keywords[{i}] must be a string, got {type(k).__name__} {k!r}", source=source,
                            record=record, field=f"thinking.text_keywords[{i}]")
    ev.text_keywords = list(kws)

    boxes = obj.get("bbox_2d", [])
    if not isinstance(boxes, list):
        raise TCoTError(f"bbox_2d must be a box [x1, y1, x2, y2] or a list of boxes, got {type(boxes).__name__}",
                        source=source, record=record, field="thinking.bbox_2d")
    if boxes and not isinstance(boxes[0], list):
        boxes = [boxes]  # a single box
    for i, b in enumerate(boxes):
        where = f"thinking.bbox_2d[{i}]"
        if not isinstance(b, list) or len(b) != 4:
            raise TCoTError(f"bbox_2d[{i}] must be [x1, y1, x2, y2], got {b!r}", source=source, record=record,
                            field=where)
        ev.bboxes.append(tuple(_as_int(v, what=f"{where}[{j}]", round_floats=True, source=source, record=record)
                               for j, v in enumerate(b)))

    frames = obj.get("key_frames", [])
    if not isinstance(frames, list):
        raise TCoTError(f"key_frames must be a list of 1-based frame numbers, got {type(frames).__name__}",
                        source=source, record=record, field="thinking.key_frames")
    ev.key_frames = [_as_int(v, what=f"thinking.key_frames[{i}]", round_floats=False, source=source,
                             record=record) for i, v in enumerate(frames)]
    return ev


def _first_json_object(payload: str) -> tuple[Any, str] | None:
    """The evidence of a `<thinking>` that mixes prose and JSON (the release's prompts ask for prose, then the
    JSON; its parser takes the first `{...}`): (object, its text) of the first balanced JSON object, or None.

    A payload that opens with `{` is meant to be the JSON itself: only an object starting there counts (prose may
    follow it), so a broken object keeps its own JSON error instead of yielding a nested object."""
    decoder = json.JSONDecoder()
    starts = [0] if payload.startswith("{") else [m.start() for m in re.finditer(r"\{", payload)]
    for start in starts:
        try:
            obj, end = decoder.raw_decode(payload, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj, payload[start:end]
    return None


def parse_tcot(text: str, *, allow_outside_text: bool = True, unknown_keys: Literal["raise", "ignore"] = "raise",
               source: str | None = None, record: str | int | None = None) -> TCoT:
    """Parse a T-CoT completion. Raises `TCoTError` naming the missing / repeated / misplaced tag, the
    JSON error and its position, or the badly typed evidence field.

    Whitespace around the elements is always fine; other text outside them is ignored unless
    `allow_outside_text=False`. A ```json fence around the JSON is tolerated. Prose around the JSON inside
    `<thinking>` is accepted: the evidence is the first balanced JSON object (`thinking_json` holds that object's
    text) and the prose stays in `text`, so the embedder and the judges still read it; a `<thinking>` with no
    JSON object raises the JSON error (one without any `{`: "no JSON evidence object").
    """
    if not isinstance(text, str):
        raise TCoTError(f"expected a string, got {type(text).__name__}", source=source, record=record)
    p = _tag_positions(text, source=source, record=record)
    ends = [pos + len(tag) for tag, pos in zip(TAG_ORDER, p)]
    thinking_span, rethink_span, answer_span = (p[0], ends[1]), (p[2], ends[3]), (p[4], ends[5])

    if not allow_outside_text:
        outside = [(0, p[0]), (ends[1], p[2]), (ends[3], p[4]), (ends[5], len(text))]
        for a, b in outside:
            if text[a:b].strip():
                raise TCoTError(f"unexpected text {text[a:b].strip()[:40]!r} at char {a} outside the T-CoT elements",
                                source=source, record=record)

    raw = text[ends[0]:p[1]]
    stripped = raw.strip()
    offset = ends[0] + (len(raw) - len(raw.lstrip()))  # char position of `stripped` in `text`
    fence = _FENCE.match(stripped)
    payload = stripped
    if fence:
        payload = fence.group(1)
        offset += fence.start(1)
    if not payload:
        raise TCoTError("empty <thinking>: expected a JSON object with the evidence", source=source, record=record,
                        field="thinking")
    try:
        obj, thinking_json = json.loads(payload), stripped
    except json.JSONDecodeError as e:
        found = _first_json_object(payload)
        if found is None and "{" not in payload:  # prose only: there is no JSON to be invalid
            raise TCoTError("no JSON evidence object in <thinking> (expected {...} with bbox_2d, text_keywords or "
                            "key_frames)", source=source, record=record, field="thinking") from None
        if found is None:
            raise TCoTError(f"invalid JSON in <thinking>: {e.msg} at line {e.lineno} column {e.colno} "
                            f"(char {offset + e.pos} of the text)", source=source, record=record,
                            field="thinking") from None
        obj, thinking_json = found
    evidence = evidence_from_json(obj, unknown_keys=unknown_keys, source=source, record=record)
    return TCoT(text=text, evidence=evidence, thinking_json=thinking_json, rethink=text[ends[2]:p[3]].strip(),
                answer=text[ends[4]:p[5]].strip(), thinking_span=thinking_span, rethink_span=rethink_span,
                answer_span=answer_span)


def check_boxes(evidence: Evidence, *, source: str | None = None, record: str | int | None = None) -> None:
    """Raise `TCoTError` (field `thinking.bbox_2d[i]`) for a box that marks no region of the image: inverted (x1 > x2
    or y1 > y2) or wholly outside it (coordinates are normalised to 0–1000: x1 >= 1000, y1 >= 1000, x2 <= 0 or
    y2 <= 0). Such a box is malformed evidence, refused by the commands reading a T-CoT file
    (`unime.reasoning.reasoner.parse_tcot_row`). A box partly outside is clamped to the image; one too small or too
    elongated to crop is left out by the crop rules and counted (`unime.reasoning.evidence`)."""
    for i, (x1, y1, x2, y2) in enumerate(evidence.bboxes):
        box, where = [x1, y1, x2, y2], f"thinking.bbox_2d[{i}]"
        if x1 > x2 or y1 > y2:
            raise TCoTError(f"box {box} is inverted ({'x1 > x2' if x1 > x2 else 'y1 > y2'}); expected "
                            "[x1, y1, x2, y2] with x1 <= x2 and y1 <= y2", source=source, record=record, field=where)
        if x1 >= COORD_MAX or y1 >= COORD_MAX or x2 <= 0 or y2 <= 0:
            raise TCoTError(f"box {box} lies wholly outside the image (coordinates are normalised to 0-{COORD_MAX})",
                            source=source, record=record, field=where)


# ------------------------------------------------------------------------------------------------
# validation and rendering

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def count_sentences(text: str) -> int:
    """Sentences = pieces separated by `.`, `!` or `?` followed by whitespace (so "3.5" is one word)."""
    text = text.strip()
    return len([s for s in _SENTENCE_END.split(text) if s.strip()]) if text else 0


def validate_tcot(tcot: TCoT, *, modality: Modality, num_frames: int | None = None, max_rethink_sentences: int = 2,
                  max_box_fraction: float = 0.95, require_evidence: bool = False,
                  require_rethink: bool = True) -> list[str]:
    """Quality problems of a parsed T-CoT (empty list = fine).

    - boxes: only for images; coordinates within 0–1000, x1 < x2, y1 < y2, area below
      `max_box_fraction` of the image (a box "essentially" covering everything points at nothing);
    - key frames: only for video; 1-based, <= `num_frames` when given, no repeats;
    - conciseness: at most `max_rethink_sentences` sentences in `<rethink>` (SPEC: "1–2 sentences");
    - a non-empty answer (and rethink, unless `require_rethink=False`); evidence if `require_evidence`.
    """
    if modality not in ("text", "image", "video"):
        raise ValueError(f"modality must be 'text', 'image' or 'video', got {modality!r}")
    problems: list[str] = []
    ev = tcot.evidence
    if ev.bboxes and modality != "image":
        problems.append(f"bbox_2d given for a {modality} item (boxes only apply to images)")
    for i, (x1, y1, x2, y2) in enumerate(ev.bboxes):
        if any(v < 0 or v > COORD_MAX for v in (x1, y1, x2, y2)):
            problems.append(f"bbox_2d[{i}] = {[x1, y1, x2, y2]} has coordinates outside 0..{COORD_MAX}")
        if x1 >= x2:
            problems.append(f"bbox_2d[{i}] = {[x1, y1, x2, y2]} has x1 >= x2")
        if y1 >= y2:
            problems.append(f"bbox_2d[{i}] = {[x1, y1, x2, y2]} has y1 >= y2")
        cx1, cy1 = max(0, min(x1, COORD_MAX)), max(0, min(y1, COORD_MAX))
        cx2, cy2 = max(0, min(x2, COORD_MAX)), max(0, min(y2, COORD_MAX))
        area = max(0, cx2 - cx1) * max(0, cy2 - cy1) / (COORD_MAX * COORD_MAX)
        if area >= max_box_fraction:
            problems.append(f"bbox_2d[{i}] = {[x1, y1, x2, y2]} covers {100 * area:.0f}% of the image "
                            f"(limit {100 * max_box_fraction:.0f}%)")
    if ev.key_frames and modality != "video":
        problems.append(f"key_frames given for a {modality} item (key frames only apply to video)")
    for i, f in enumerate(ev.key_frames):
        if f < 1:
            problems.append(f"key_frames[{i}] = {f} is not a 1-based frame number")
        elif num_frames is not None and f > num_frames:
            problems.append(f"key_frames[{i}] = {f} is beyond the last frame ({num_frames})")
    if len(set(ev.key_frames)) != len(ev.key_frames):
        problems.append(f"key_frames {ev.key_frames} repeat a frame")
    if require_evidence:
        wanted = {"text": ev.text_keywords, "image": ev.bboxes, "video": ev.key_frames}[modality]
        if not wanted:
            key = {"text": "text_keywords", "image": "bbox_2d", "video": "key_frames"}[modality]
            problems.append(f"no {key} evidence for a {modality} item")
    n = count_sentences(tcot.rethink)
    if n > max_rethink_sentences:
        problems.append(f"rethink has {n} sentences (limit {max_rethink_sentences})")
    if require_rethink and n == 0:
        problems.append("rethink is empty")
    if not tcot.answer.strip():
        problems.append("answer is empty")
    return problems


def render_tcot(evidence: Evidence | Mapping[str, Any], rethink: str, answer: str) -> str:
    """The T-CoT text for `evidence`, `rethink`, `answer`; `parse_tcot` inverts it.

    A mapping is type-checked as `<thinking>` JSON first. Texts that contain a T-CoT tag raise
    `TCoTError` (the result would not parse back).
    """
    if not isinstance(evidence, Evidence):
        evidence = evidence_from_json(evidence)
    for name, value in (("rethink", rethink), ("answer", answer)):
        if not isinstance(value, str):
            raise TCoTError(f"{name} must be a string, got {type(value).__name__}", field=name)
        for tag in TAG_ORDER:
            if tag in value:
                raise TCoTError(f"{name} contains the tag '{tag}'", field=name)
    for kw in evidence.text_keywords:
        if any(tag in kw for tag in TAG_ORDER):
            raise TCoTError(f"text keyword {kw!r} contains a T-CoT tag", field="text_keywords")
    payload = json.dumps(evidence.to_json_dict(), ensure_ascii=False)
    return f"<thinking>{payload}</thinking><rethink>{rethink}</rethink><answer>{answer}</answer>"
