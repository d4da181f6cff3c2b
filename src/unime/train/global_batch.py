"""The batch a training step actually holds, for the trainers' start-of-run warning and their model cards.

With fewer dataset items than the configured global batch (per device x processes x accumulation), the data
loader yields one short batch per epoch and every optimizer step holds all the items (QA: 136 records with
`--global-batch 1024`; 4 records with a reranker's `--batch-size 8`), while the configuration still reads the
configured batch. The trainers warn at the start (`warn_short_batch`) and record the batch that ran
(`batch_that_runs`) beside the configured one.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def batch_that_runs(items: int, *, batch_size: int, grad_accum: int, processes: int,
                    fixed: bool = False) -> tuple[int, int, int]:
    """(items per device and micro-batch, items per optimizer step) a step holds, and the configured global batch:
    the configured batch, or with fewer `items` than its global batch, all the items (the data loader's one short
    batch, split over the processes; accelerate pads an uneven split with an item or so). `fixed`: a sampler that
    refuses too few items for a full batch (the embedder's `HomogeneousBatchSampler`), the batch is the configured
    one."""
    configured = batch_size * processes * grad_accum
    if items >= configured or fixed:
        return batch_size, configured, configured
    return min(batch_size, -(-items // processes)), items, configured


def warn_short_batch(source: str, items: int, *, batch_size: int, grad_accum: int, processes: int,
                     given: str | None = None, unit: str = "records", batch_unit: str | None = None,
                     fixed: bool = False, config=None) -> None:
    """A WARNING when the `items` (`unit`, e.g. records) of `source` cannot fill the global batch: every step then
    holds all of them. `given`: the options the configured batch comes from (default: per device x processes x
    accumulation); `batch_unit`: what the batch counts (default `unit`). The batch size is named as the user gives
    it (`unime.options.option_name`: the field of `config` from Python, its flag on the command line)."""
    from unime.options import option_name

    per_device, per_step, configured = batch_that_runs(items, batch_size=batch_size, grad_accum=grad_accum,
                                                       processes=processes, fixed=fixed)
    if per_step < configured:
        given = given or (f"{option_name(config, 'batch_size')} {batch_size} x {processes} process(es) x "
                          f"{grad_accum} accumulation")
        log.warning("%s: %d %s, fewer than the global batch of %d %s (%s): each optimizer step holds these %d (%d per "
                    "device)", source, items, unit, configured, batch_unit or unit, given, per_step, per_device)
