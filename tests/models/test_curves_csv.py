"""`curves.csv` writes its columns in one order, whatever order the log rows hold their keys in: a resumed run's
history comes back from the checkpoint's `trainer_state.json` with its keys sorted, where the uninterrupted run's
rows keep the Trainer's order (`loss, grad_norm, learning_rate, ..., epoch, step`)."""

from __future__ import annotations

from unime.models.curves import curves_csv_text

# the Trainer's order (as logged), the same rows as restored from a checkpoint (keys sorted), and a summary row
LOGGED = [{"loss": 2.5, "grad_norm": 0.75, "learning_rate": 0.01, "loss_pair": 2.0, "loss_list": 3.0, "epoch": 0.25,
           "step": 1},
          {"loss": 1.5, "grad_norm": 0.5, "learning_rate": 0.005, "loss_pair": 1.0, "loss_list": 2.0, "acc": 0.5,
           "epoch": 0.5, "step": 2},
          {"train_runtime": 3.0, "train_loss": 2.0, "epoch": 0.5, "step": 2}]
RESTORED = [dict(sorted(r.items())) for r in LOGGED[:1]] + LOGGED[1:]
EXPECTED = ("step,epoch,loss,grad_norm,learning_rate,acc,loss_list,loss_pair\r\n"
            "1,0.25,2.5,0.75,0.01,,3.0,2.0\r\n"
            "2,0.5,1.5,0.5,0.005,0.5,2.0,1.0\r\n")


def test_the_columns_are_step_epoch_loss_grad_norm_learning_rate_then_the_rest_sorted():
    assert curves_csv_text(LOGGED) == EXPECTED


def test_a_history_restored_from_a_checkpoint_writes_the_same_bytes():
    assert list(RESTORED[0]) == ["epoch", "grad_norm", "learning_rate", "loss", "loss_list", "loss_pair", "step"]
    assert curves_csv_text(RESTORED) == EXPECTED


def test_a_grpo_history_without_loss_keeps_step_and_epoch_first():
    rows = [{"reward": 0.5, "kl": 0.1, "loss": 0.0, "step": 1, "epoch": 1.0}, {"step": 2, "epoch": 2.0, "reward": 0.25}]
    assert curves_csv_text(rows).splitlines()[0] == "step,epoch,loss,kl,reward"
    assert curves_csv_text([{"reward": 0.5, "step": 1, "epoch": 1.0}]).splitlines() == ["step,epoch,reward",
                                                                                        "1,1.0,0.5"]
