"""Embed-RL training (SPEC §2), a stage beside `unime.train` on the same floor: the reasoner's SFT on
T-CoT (`reasoner_sft`), its embedder-guided GRPO (`grpo`), and the data preparation and evaluation with
reasoning of the T-CoT embedder (`tcot_embedder`; it trains with `unime train embedder`). Builds on
`unime.reasoning` (prompts, T-CoT, rewards), `unime.eval` and `unime.models`; imports nothing from
`unime.train` (a sibling) and nothing above it.
"""
