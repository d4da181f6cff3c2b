"""The demo's tests do not depend on how busy the machine running them is: a `Demo` built without a `load_probe`
reads the load as unknown (tests/demo/test_cpu_load.py passes its own probes)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _machine_load_unknown(monkeypatch):
    monkeypatch.setattr("unime.demo.run.busy_cores", lambda: None)
