"""The Hugging Face trainer arguments of every trainer (embedder, reranker/judge, reasoner SFT, GRPO), built in
one place: the common core here, each trainer's own settings passed through.

`args_cls` is `transformers.TrainingArguments` or a TRL subclass (`SFTConfig`, `GRPOConfig`). The core is
what every trainer sets the same way: checkpoints every `save_steps` steps into `output_dir`, no
reporting integration (`report_to=[]`), the data collators see every column (`remove_unused_columns=False`,
unless a trainer asks otherwise), mixed precision from the compute dtype (`bf16` / `fp16`), and activation
checkpointing (non-reentrant) only when asked for. It lives beside `run_state` and `curves` because both
`unime.train` and `unime.embed_rl` build on it.
"""

from __future__ import annotations

from typing import Any


def hf_training_arguments(args_cls: type, *, output_dir: Any, batch_size: int, learning_rate: float, seed: int,
                          logging_steps: int, save_steps: int, save_total_limit: int | None, use_cpu: bool,
                          bf16: bool = False, fp16: bool = False, grad_accum: int = 1, max_steps: int = -1,
                          epochs: float = 1.0, warmup_steps: float = 0, weight_decay: float = 0.0,
                          lr_scheduler: str = "linear", data_seed: int | None = None, workers: int = 0,
                          activation_checkpointing: bool = False, show_progress: bool | None = None,
                          **specific: Any):
    """`args_cls(...)` with the common core and the trainer's `specific` keywords (`optim`, `beta`, ...).

    `max_steps=-1`: train `epochs` epochs. `data_seed=None`: the data order follows `seed`.
    `show_progress=None` leaves the progress bars to transformers' own rule (its logging level)."""
    return args_cls(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
        max_steps=max_steps, num_train_epochs=epochs, learning_rate=learning_rate, lr_scheduler_type=lr_scheduler,
        warmup_steps=warmup_steps, weight_decay=weight_decay, seed=seed, data_seed=data_seed,
        logging_steps=logging_steps, save_strategy="steps", save_steps=save_steps, save_total_limit=save_total_limit,
        report_to=[], use_cpu=use_cpu, bf16=bf16, fp16=fp16, dataloader_num_workers=workers,
        activation_checkpointing=activation_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if activation_checkpointing else None,
        disable_tqdm=None if show_progress is None else not show_progress,
        **{"remove_unused_columns": False, **specific})
