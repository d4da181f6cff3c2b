"""`python -m unime ARGS` runs the `unime` command (also as a module under a launcher, e.g.
`torchrun --standalone --nproc-per-node 2 -m unime mine ...`)."""

import sys

from unime.cli import main

sys.exit(main())
