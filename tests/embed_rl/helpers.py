"""Shared by the Embed-RL tests (and the resume-convention test): a rendered T-CoT answer and the colours of
the GRPO world."""

from __future__ import annotations

from unime.reasoning.tcot import render_tcot

TCOT = render_tcot({"bbox_2d": [[100, 100, 600, 600]]}, "The image shows a red circle.", "red circle")
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (235, 210, 40)}
