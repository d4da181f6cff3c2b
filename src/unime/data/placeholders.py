"""Source-format image placeholders in item text: MMEB's `<|image_1|>` (Phi-3-V), LLaVA's `<image>` and
`<|image|>`. One numbering everywhere: `<|image_n|>` is the item's image n (1-based), a bare placeholder
the image after the previous placeholder's. Validation checks it (`unime.data.validate`); the family
adapters map each placeholder to the family's image token (`unime.models.adapters.item_segments`).
"""

from __future__ import annotations

import re
from typing import Iterator

SOURCE_IMAGE_PLACEHOLDER = re.compile(r"<\|image_(\d+)\|>|<image>|<\|image\|>")


def strip_placeholders(text: str) -> str:
    """Remove source image placeholders (used where the prompt names images separately, SPEC 1.3)."""
    return SOURCE_IMAGE_PLACEHOLDER.sub("", text).strip()


def placeholder_refs(text: str) -> Iterator[tuple[re.Match, int]]:
    """Each placeholder in `text` with the 0-based index of the image it names (not range-checked)."""
    auto = 0
    for m in SOURCE_IMAGE_PLACEHOLDER.finditer(text):
        idx = int(m.group(1)) - 1 if m.group(1) else auto
        auto = idx + 1
        yield m, idx


# the chat and vision tokens of the Qwen-VL families (`<|im_start|>`, `<|image_pad|>`, `<|vision_start|>` ...): in a
# request's text they would end the user turn or claim image slots no image fills
MODEL_SPECIAL_TOKEN = re.compile(r"<\|(?:im_start|im_end|endoftext|vision_start|vision_end|vision_pad|image_pad|"
                                 r"video_pad|object_ref_start|object_ref_end|box_start|box_end|quad_start|quad_end)\|>")
