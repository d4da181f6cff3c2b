"""The guarantee a generation stop rule must give its parser, checked on random texts: once `done(text)`, every
continuation of `text` parses as `text` does (so stopping there loses nothing)."""

from __future__ import annotations

import random
from typing import Callable, Sequence


def check_done_texts_parse_the_same(done: Callable[[str], bool], parse: Callable[[str], object],
                                    alphabet: Sequence[str], *, seed: int = 0, texts: int = 3000) -> int:
    """Asserts the guarantee on `texts` random texts over `alphabet`; returns how many of them were done."""
    rng = random.Random(seed)
    n_done = 0
    for _ in range(texts):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        if not done(text):
            continue
        n_done += 1
        for _ in range(5):
            tail = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
            assert parse(text + tail) == parse(text), (text, tail)
    return n_done
