"""The generated demo world (`unime data synth`): scenes of simple objects rendered with Pillow,
MMEB-style tasks in the four meta-tasks, compositional pairs, training records, and ground-truth
graded relevance for any (query, candidate) pair. See `generate` for the layout on disk and
`relevance` for the definition of relevance."""

from unime.data.synth.build import PRESETS, WorldSizes
from unime.data.synth.clips import VideoSizes
from unime.data.synth.generate import (FORMAT_VERSION, SynthConfig, WorldSummary, generate_world, resolve_sizes,
                                       synth_world)
from unime.data.synth.scenes import HELD_OUT_COMBOS
from unime.data.synth.tasks import TASKS
from unime.data.synth.world import World

__all__ = ["World", "WorldSizes", "VideoSizes", "WorldSummary", "PRESETS", "generate_world", "resolve_sizes",
           "SynthConfig", "synth_world", "FORMAT_VERSION",
           "HELD_OUT_COMBOS", "TASKS"]
