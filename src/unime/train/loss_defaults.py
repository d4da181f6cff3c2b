"""Defaults of the embedder losses (`unime.train.losses`), in a module without torch: the command line
builds its parsers without importing torch, and reads the same numbers as the loss classes."""

# τ of every embedder loss (SPEC §1.5; the UniME-V2 release's temperature)
DEFAULT_TEMPERATURE = 0.02
# ε of the symmetric-KL loss: the release's log(p + ε); 0 gives the exact divergence
DEFAULT_KL_EPS = 1e-8
