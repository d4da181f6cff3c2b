"""ImageLoader: path safety, missing / corrupt / oversize files, EXIF rotation, mode conversion."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.bad_inputs import png_header_only
from unime.data.images import ImageLoader, real_path_under
from unime.errors import DataError


@pytest.fixture()
def root(tmp_path):
    r = tmp_path / "root"
    (r / "img").mkdir(parents=True)
    Image.new("RGB", (6, 4), (10, 20, 30)).save(r / "img" / "ok.png")
    Image.new("RGB", (3, 3), (1, 1, 1)).save(tmp_path / "outside.png")
    return r


def test_relative_path_loads(root):
    img = ImageLoader(root).load("img/ok.png")
    assert img.mode == "RGB" and img.size == (6, 4) and img.getpixel((0, 0)) == (10, 20, 30)


def test_absolute_path_inside_the_root_loads(root):
    # VLM2Vec's MMEB-V2 parsers write absolute frame paths; inside the data root they are no escape
    assert ImageLoader(root).load(str(root / "img" / "ok.png")).size == (6, 4)
    assert ImageLoader(root).resolve(str(root / "img" / "ok.png")) == (root / "img" / "ok.png").resolve()


def test_absolute_path_outside_the_root_rejected_unless_allowed(root):
    abs_path = str(root.parent / "outside.png")
    with pytest.raises(DataError, match="absolute image path .* not allowed outside the data root") as e:
        ImageLoader(root).load(abs_path, source="f.jsonl", record=3, field="query.images[0]")
    assert str(e.value).startswith("f.jsonl, record 3, field 'query.images[0]'")
    assert "permit it with --allow-outside-root (in Python: ImageLoader(..., allow_outside_root=True))" in str(e.value)
    assert ImageLoader(root, allow_outside_root=True).load(abs_path).size == (3, 3)


def test_dotdot_escape_rejected_unless_allowed(root):
    with pytest.raises(DataError, match="escapes the data root"):
        ImageLoader(root).load("../outside.png")
    with pytest.raises(DataError, match="escapes the data root"):
        ImageLoader(root).load("img/../../outside.png")
    assert ImageLoader(root, allow_outside_root=True).load("../outside.png").size == (3, 3)


def test_symlink_leaving_the_root_is_an_escape(root, tmp_path):
    (root / "img" / "link.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(DataError, match="escapes"):
        ImageLoader(root).load("img/link.png")


def test_real_path_under_is_path_resolve_and_looks_below_the_root_only(root, tmp_path, monkeypatch):
    # the string form of `Path.resolve()` + `is_relative_to` that reading a collection calls per row
    (tmp_path / "away").mkdir()
    (root / "img" / "inner").symlink_to(root / "img")  # a folder link that stays inside
    (root / "out").symlink_to(tmp_path / "away")  # a folder link that leads out
    (root / "img" / "up.png").symlink_to("../img/ok.png")  # a relative file link
    refs = ["img/ok.png", "./img//ok.png", "img/inner/ok.png", "img/inner/../ok.png", "out/x.png", "out/../img/ok.png",
            "img/up.png", "img/ok.png/x", "missing/../img/ok.png", "../outside.png", "img/../../outside.png", ".", "",
            str(root / "img" / "ok.png"), str(tmp_path / "outside.png"), str(root / "out" / "x.png")]
    real_root = root.resolve()
    for ref in refs:
        want = (root / ref).resolve()
        full, below = real_path_under(real_root, ref)
        assert full == str(want), ref
        assert below == (str(want.relative_to(real_root)) if want.is_relative_to(real_root) else None), ref
    assert real_path_under(real_root, "img/inner/ok.png")[1] == os.path.join("img", "ok.png")
    with pytest.raises(DataError, match="escapes the data root"):
        ImageLoader(root).resolve("out/x.png")
    # the root's own folders are real already: only the components of the path below it are looked at
    loader = ImageLoader(root)
    seen = []
    real_lstat = os.lstat
    monkeypatch.setattr(os, "lstat", lambda p, *a, **kw: seen.append(str(p)) or real_lstat(p, *a, **kw))
    assert loader.resolve("img/ok.png") == Path(real_root, "img", "ok.png")
    monkeypatch.undo()
    assert seen == [str(real_root / "img"), str(real_root / "img" / "ok.png")]


def test_missing_file(root):
    with pytest.raises(DataError, match="not found") as e:
        ImageLoader(root).load("img/nope.png", source="s", record="r", field="f")
    assert e.value.field == "f" and e.value.record == "r"


@pytest.mark.parametrize("payload", [b"not an image at all", None])
def test_corrupt_bytes(root, payload):
    if payload is None:  # a valid header, truncated body
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 0, 0)).save(buf, format="PNG")
        payload = buf.getvalue()[:60]
    (root / "img" / "bad.png").write_bytes(payload)
    with pytest.raises(DataError, match="corrupt"):
        ImageLoader(root).load("img/bad.png")
    with pytest.raises(DataError, match="corrupt"):
        ImageLoader(root).load(payload)


def test_pixel_limit_checked(root):
    Image.new("RGB", (40, 30)).save(root / "img" / "big.png")
    with pytest.raises(DataError, match="40x30=1200 pixels, over the limit 1000"):
        ImageLoader(root, max_pixels=1000).load("img/big.png")
    assert ImageLoader(root, max_pixels=1200).load("img/big.png").size == (40, 30)


def test_an_image_past_pils_own_limit_is_refused_by_the_loaders_limit(root):
    """QA: a header of 60000x60000 pixels was refused quoting PIL's limit (178956970 pixels), one the user cannot
    set, not the loader's own (`unime serve --max-image-pixels`)."""
    (root / "img" / "bomb.png").write_bytes(png_header_only(60000, 60000))
    with pytest.raises(DataError) as e:
        ImageLoader(root, max_pixels=16_000_000).load("img/bomb.png")
    assert str(e.value) == "image img/bomb.png has 3600000000 pixels, over the limit 16000000"
    with pytest.raises(DataError) as e:  # a limit above PIL's: PIL's is the one met, and said so
        ImageLoader(root, max_pixels=4_000_000_000).check_header("img/bomb.png")
    assert str(e.value) == ("image img/bomb.png has 3600000000 pixels, over PIL's limit 178956970 (its "
                            "decompression-bomb guard), which is below the limit 4000000000 asked for")


def test_exif_rotation_applied(root):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # left quarter red
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the stored image must be turned 90° clockwise for display
    img.save(root / "img" / "rot.jpg", exif=exif, quality=95)
    out = ImageLoader(root).load("img/rot.jpg")
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 3)), out.getpixel((10, 36))  # clockwise: the left edge becomes the top
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("mode,expected", [("RGBA", (255, 255, 255)), ("L", (77, 77, 77)), ("P", None)])
def test_modes_converted_to_rgb(root, mode, expected):
    if mode == "RGBA":
        img = Image.new("RGBA", (2, 2), (255, 0, 0, 0))  # fully transparent red → white background
    elif mode == "L":
        img = Image.new("L", (2, 2), 77)
    else:
        img = Image.new("RGB", (2, 2), (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    img.save(root / "img" / f"m_{mode}.png")
    out = ImageLoader(root).load(f"img/m_{mode}.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (expected if expected is not None else (0, 200, 0))


def test_half_transparent_rgba_composited_on_white():
    img = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    out = ImageLoader().load(img)
    assert out.mode == "RGB" and abs(out.getpixel((0, 0))[0] - 127) <= 1


def test_inline_bytes_and_bad_reference(root):
    buf = io.BytesIO()
    Image.new("L", (3, 2), 9).save(buf, format="PNG")
    assert ImageLoader(root).load(buf.getvalue()).getpixel((0, 0)) == (9, 9, 9)
    with pytest.raises(DataError, match="bad image reference"):
        ImageLoader(root).load("")
    with pytest.raises(DataError, match="bad image reference"):
        ImageLoader(root).load(12)


def test_a_file_that_is_no_image_and_a_huge_image_give_one_clean_message(root):
    """QA: PIL's message showed a Python file object, and PIL's DecompressionBombWarning was printed before
    unime's own refusal of a huge image."""
    import warnings

    (root / "img" / "garbage.png").write_bytes(b"\x00not an image at all" * 10)
    with pytest.raises(DataError) as e:
        ImageLoader(root).load("img/garbage.png")
    assert str(e.value) == "corrupt or unreadable image img/garbage.png: not in an image format PIL can read"
    Image.new("1", (12000, 12000)).save(root / "img" / "huge.png")  # 144 M pixels: past PIL's warning threshold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match=r"has 12000x12000=144000000 pixels, over the limit"):
            ImageLoader(root).load("img/huge.png")
    assert [str(w.message) for w in caught] == []
    with pytest.raises(DataError, match="^corrupt or unreadable image photos/x.png: not in an image format"):
        ImageLoader(root).load("img/garbage.png", shown_as="photos/x.png")  # the name the user knows it by


def test_a_fifo_a_folder_or_a_device_under_an_image_path_is_not_a_regular_file(root):
    """QA: a FIFO, a directory or a link to /dev/zero named x.png said "image file not found"."""
    from tests.data.helpers import not_regular_files

    for ref, kind in not_regular_files(root, ".png").items():
        loader = ImageLoader(root, allow_outside_root=True)  # /dev/zero lies outside the root
        for read in (loader.load, loader.check_header, loader.file_path):
            with pytest.raises(DataError) as e:
                read(ref, source="s.jsonl", record="r", field="image")
            assert str(e.value) == f"s.jsonl, record r, field 'image': image {ref!r} exists but is not a regular " \
                f"file: it is {kind}", ref
    with pytest.raises(DataError, match="image file not found: 'img/gone.png'"):
        ImageLoader(root).load("img/gone.png")
    os.symlink(root / "img" / "gone.png", root / "dangling.png")
    with pytest.raises(DataError, match="image file not found: 'dangling.png'"):
        ImageLoader(root).load("dangling.png")


def test_a_video_escaping_the_data_root_is_named_a_video_path_and_the_commands_that_permit_it(root, tmp_path):
    """QA: a symlink out of the data root for a video said "image path 'clips/link_out.mp4' escapes the data root",
    and named `data convert` (no such option) but not `data check` among the commands with --allow-outside-root."""
    (tmp_path / "outside.mp4").write_bytes(b"not decoded: refused before it is opened")
    (root / "clips").mkdir()
    (root / "clips" / "link_out.mp4").symlink_to(tmp_path / "outside.mp4")
    with pytest.raises(DataError) as e:
        ImageLoader(root).load_video(["clips/link_out.mp4"], source="items.jsonl", record="line 2", field="video")
    assert str(e.value) == (
        f"items.jsonl, record line 2, field 'video': video path 'clips/link_out.mp4' escapes the data root "
        f"({root.resolve()}); `unime data import`, `data check`, `eval`, `mine` and `judge` permit it with "
        "--allow-outside-root (in Python: ImageLoader(..., allow_outside_root=True))")
    with pytest.raises(DataError, match=r": absolute video path '/[^']*outside\.mp4' not allowed outside the data "):
        ImageLoader(root).load_video([str(tmp_path / "outside.mp4")])
    with pytest.raises(DataError, match=": image path 'img/../../outside.png' escapes the data root"):  # a frame
        ImageLoader(root).load_video(["img/../../outside.png", "img/ok.png"])


def test_a_missing_relative_image_names_the_folder_it_was_looked_in_in_every_command(tmp_path, monkeypatch, capsys):
    """Review: only `unime eval` said where a missing image was looked for ("image file not found: 'imgs/gone.png'
    (looked in ROOT)", a proxy of its own); `embed`, `mine`, `train embedder` and `data check` said only the path
    (and `train embedder` told a records file's record that the paths of in-memory records are relative to
    data_root). The loader every command uses names the folder, once; an absolute path names none."""
    from unime.cli import main

    d = tmp_path / "d"
    d.mkdir()
    (d / "items.jsonl").write_text('{"id": "a", "image": "imgs/gone.png"}\n')
    (d / "recs.jsonl").write_text('{"query": {"text": "a"}, "positive": {"images": ["imgs/gone.png"]}}\n')
    monkeypatch.chdir(tmp_path)
    looked = f"image file not found: 'imgs/gone.png' (looked in '{d.resolve()}')"
    recs = f"d/recs.jsonl, record line 1, field 'positive.images[0]': {looked}"
    for argv, line in ((["embed", "--model", "m", "--items", "d/items.jsonl", "--out", "e.npy"],
                        f"d/items.jsonl, record line 1 (id a), field 'item.images[0]': {looked}"),
                       (["mine", "--records", "d/recs.jsonl", "--embedder", "e", "--judge", "j", "--out", "mo"], recs),
                       (["train", "embedder", "--model", "m", "--records", "d/recs.jsonl", "--out", "te"], recs)):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"unime: error: {line}", argv
    assert main(["data", "check", "d/recs.jsonl"]) == 1
    assert f"  - {recs}" in capsys.readouterr().out.splitlines()
    with pytest.raises(DataError) as e:  # from Python too; an absolute path is looked for where it says
        ImageLoader(d).load(str(d / "imgs" / "gone.png"), source="s", record="r", field="image")
    assert str(e.value) == f"s, record r, field 'image': image file not found: '{d / 'imgs' / 'gone.png'}'"
