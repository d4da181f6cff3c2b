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
