"""The image digest cache (`unime.data.image_digests`): its TSV survives file names with unusual characters."""

import hashlib
import os

from unime.data.image_digests import ImageDigests


def test_a_name_with_a_line_separator_reads_back_from_the_cache(tmp_path, image_sha1_reads):
    # U+2028 and U+0085 are line breaks to str.splitlines, not to the TSV: the entry reads back whole and the
    # entries after it are not lost
    names = ["a\u2028b.png", "c\u0085d.png", "e\rf.png", "plain.png"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(b"image %d" % i)
    cache = tmp_path / "digests.tsv"
    first = ImageDigests(cache)
    got = [first.digest(tmp_path / n) for n in names]
    assert got == [hashlib.sha1(b"image %d" % i).hexdigest() for i in range(len(names))]
    first.save()
    image_sha1_reads.clear()
    again = ImageDigests(cache)
    assert [again.digest(tmp_path / n) for n in names] == got
    assert image_sha1_reads == [] and again.hashed == 0  # every digest from the cache, none read again


def test_a_name_with_a_tab_or_newline_is_left_out_of_the_cache(tmp_path):
    names = ["t\tab.png", "new\nline.png", "ok.png"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    cache = tmp_path / "digests.tsv"
    first = ImageDigests(cache)
    for n in names:
        first.digest(tmp_path / n)
    first.save()
    lines = cache.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 2  # one entry: ok.png's
    assert lines[0].split(b"\t")[0] == os.fsencode(str((tmp_path / "ok.png").resolve()))
    again = ImageDigests(cache)
    assert [again.digest(tmp_path / n) for n in names] == [hashlib.sha1(n.encode()).hexdigest() for n in names]
    assert again.hashed == 2  # the two left out are read again, the right digest still


def test_a_name_not_in_utf8_is_cached(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"  # latin-1 bytes: not UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"x")
    path = os.fsdecode(raw)
    cache = tmp_path / "digests.tsv"
    first = ImageDigests(cache)
    first.digest(path)
    first.save()
    again = ImageDigests(cache)
    assert again.digest(path) == hashlib.sha1(b"x").hexdigest() and again.hashed == 0


def test_a_cache_line_with_non_ascii_digits_is_left_out_as_corrupt(tmp_path):
    """QA: the reader took any `str.isdigit()` size and mtime, True for '²' (which int() refuses: a corrupt cache
    line crashed the run) and for '١' (Arabic-Indic one, which int() reads as 1). Such a line is now a corrupt one,
    left out like any other: its image is read again; the good lines are still used."""
    import hashlib

    (tmp_path / "a.png").write_bytes(b"a")
    (tmp_path / "b.png").write_bytes(b"b")
    (tmp_path / "c.png").write_bytes(b"c")
    cache = tmp_path / "digests.tsv"
    first = ImageDigests(cache)
    for n in ("a.png", "b.png", "c.png"):
        first.digest(tmp_path / n)
    first.save()
    good, b_line, c_line = cache.read_text(encoding="utf-8").split("\n")[:3]
    b_path, b_size, b_mtime, _ = b_line.split("\t")
    c_path, c_size, c_mtime, _ = c_line.split("\t")
    assert b_size == "1" and c_size == "1"
    cache.write_text("\n".join([good, f"{b_path}\t²\t{b_mtime}\t{'0' * 40}",
                                f"{c_path}\t\u0661\t{c_mtime}\t{'0' * 40}", ""]), encoding="utf-8")
    again = ImageDigests(cache)
    assert [again.digest(tmp_path / n) for n in ("a.png", "b.png", "c.png")] == [
        hashlib.sha1(x).hexdigest() for x in (b"a", b"b", b"c")]
    assert again.hashed == 2  # b and c read again (their lines corrupt), a from the cache
