"""SHA-1 of a file in constant memory: the file digests (`unime.data.image_digests`) and the video frame cache's
key (`unime.data.video`), on either side of the image loader (the digests read items and the loader, the loader
reads videos), hash files here."""

from __future__ import annotations

import hashlib
from typing import BinaryIO


def stream_sha1(fh: BinaryIO):
    """The SHA-1 (a `hashlib` object, to update further or read) of the rest of the open binary file `fh`, read in
    1 MiB chunks: a file's digest in constant memory, whatever its size."""
    h = hashlib.sha1()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h
