"""The busy-machine check of the demo's stages (`unime.demo.cpu_load`, `Demo.stage`)."""

from __future__ import annotations

import json

import pytest

from unime.demo.cpu_load import busy_cores

# /proc/stat: cpu user nice system idle iowait irq softirq steal guest guest_nice
BEFORE = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1\n"
AFTER = "cpu  200 0 100 850 50 0 0 5 5 0\ncpu0 100 0 50 425 25 0 0 0 0 0\ncpu1 100 0 50 425 25 0 0 0 5 0\nintr 2\n"


def test_busy_cores_are_the_busy_share_of_the_jiffies_between_two_reads_times_the_cores():
    reads = iter([BEFORE, AFTER])
    # busy (user + system + steal; not idle or iowait; guest is inside user): 150 -> 305, total 1000 -> 1205;
    # 2 cores x 155 / 205
    assert busy_cores(0.0, read=lambda: next(reads)) == pytest.approx(2 * 155 / 205)


def test_busy_cores_is_none_where_proc_stat_cannot_be_read():
    def unreadable():
        raise OSError("no /proc")
    assert busy_cores(0.0, read=unreadable) is None
    assert busy_cores(0.0, read=lambda: "intr 1\n") is None  # no aggregate cpu line
    assert busy_cores(0.0, read=lambda: BEFORE) is None  # no time passed


@pytest.mark.parametrize("busy,flagged", [(1.5, True), (0.2, False), (None, False)])
def test_a_stage_started_on_a_busy_machine_is_flagged(tmp_path, monkeypatch, busy, flagged):
    from unime.demo.pipeline import Demo
    from unime.demo.run import DemoSettings

    monkeypatch.setenv("UNIME_CACHE_DIR", str(tmp_path / "cache"))
    messages: list[str] = []
    demo = Demo(tmp_path / "a", DemoSettings.preset("quick"), progress=messages.append,
                timings=tmp_path / "t.json", load_probe=lambda: busy)
    done = tmp_path / "a" / "world"
    demo.stage("world", [done], lambda commands: done.mkdir(parents=True))
    marker = json.loads((tmp_path / "a" / "stages" / "world.json").read_text())
    warned = [m for m in messages if "WARNING: other processes keep" in m]
    assert bool(warned) == flagged and demo.results[-1].busy_cores == (busy if flagged else None)
    assert marker.get("busy_cores") == (busy if flagged else None)
    # the remaining-time estimate of later runs does not learn a time taken on a busy machine
    recorded = json.loads((tmp_path / "t.json").read_text()) if (tmp_path / "t.json").is_file() else {}
    assert any("world" in stages for stages in recorded.values()) == (not flagged)
    # a later run that skips the stage still knows its time was taken on a busy machine
    again = Demo(tmp_path / "a", DemoSettings.preset("quick"), progress=messages.append,
                 timings=tmp_path / "t.json", load_probe=lambda: 0.0)
    again.stage("world", [done], lambda commands: pytest.fail("a stage done before ran again"))
    assert again.results[-1].skipped and again.results[-1].busy_cores == (busy if flagged else None)
