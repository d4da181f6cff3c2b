"""Commands refused for their options or inputs write nothing: the checks come before the command claims its
output (`unime.outdir`), so that a refused run leaves no new folder (or file) behind and leaves a folder (or file)
another command wrote byte-identical, even under --overwrite. (The trainers, `index build`, `mine` and `eval` are
checked in their own tests: tests/train/test_refused_on_bad_input.py, tests/test_outdir.py.)"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from unime.cli import main


def _tree(folder: Path) -> dict[str, str]:
    """Every entry below `folder` (hidden ones too) with its content's SHA-1 (None for a folder)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            found[str(path.relative_to(folder))] = hashlib.sha1(path.read_bytes()).hexdigest() \
                if path.is_file() else None
    return found


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("unime: error:")]


def _other_commands_folder(path: Path) -> Path:
    """A folder `unime data synth` claimed and wrote a file into."""
    from unime.outdir import claim

    with claim(path, "data synth"):
        (path / "notes.txt").write_text("the synth run's file\n")
    return path


# -- unime demo ------------------------------------------------------------------------------------------

def test_demo_refused_for_its_device_writes_no_world(tmp_path, capsys):
    """Before, `unime demo --device nodev` generated the whole world into --out (also into a folder taken with
    --overwrite) and refused the device only when the first model loaded."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--device", "nodev", "--out", str(out)]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "--device 'nodev'" in lines[0], lines
    assert not out.exists(), sorted(_tree(out))
    other = _other_commands_folder(tmp_path / "other")
    before = _tree(other)
    assert main(["demo", "--quick", "--device", "nodev", "--out", str(other), "--overwrite"]) == 2
    assert len(_error_lines(capsys)) == 1
    assert _tree(other) == before


def test_demo_fresh_refused_for_its_device_deletes_nothing(tmp_path, capsys):
    """Before, `--fresh` deleted the earlier demo run's outputs, and then the device was refused."""
    from unime.outdir import claim

    out = tmp_path / "demo"
    with claim(out, "demo"):
        (out / "stages").mkdir()
        (out / "stages" / "world.done").write_text("done\n")
        (out / "report.md").write_text("# an earlier demo run\n")
    before = _tree(out)
    assert main(["demo", "--quick", "--fresh", "--device", "nodev", "--out", str(out)]) == 2
    assert len(_error_lines(capsys)) == 1
    assert _tree(out) == before
