"""Content-defined chunks of a relay config file, cut at line ends.

Why: a one-line change to a 6 MiB access map should store about one chunk, not the
whole file again. Fixed-size pieces would all shift after an inserted or removed line;
here a cut is decided by the content of the line that ends the chunk (its CRC-32 and
length), so an edit changes only the chunk around it (or two, when the edited line is
or becomes a cut) and every later chunk is the same bytes, stored once, as before.

The rule, after each line (with its newline): cut when the chunk has at least
``MIN_BYTES`` and ``crc32(line) % TARGET_BYTES < len(line)`` (a line cuts with a
probability proportional to its length, so the expected chunk is about
``MIN_BYTES + TARGET_BYTES`` whatever the lines' lengths), or when it has reached
``MAX_BYTES``. A line longer than ``MAX_BYTES`` is cut every ``MAX_BYTES`` from its own
start, so no chunk exceeds ``2 * MAX_BYTES`` and a file of one giant line is still
read in bounded pieces. The empty file has no chunks.

Stdlib only: the models, the migration that converted the old bodies and the tests use
it. Any cut points give correct reads (the pieces are concatenated); only the sharing
between versions depends on them, so changing the constants later costs one copy of
each file, never a wrong byte.
"""

from __future__ import annotations

import zlib

__all__ = ["MAX_BYTES", "MIN_BYTES", "TARGET_BYTES", "cut_points"]

#: No content cut before a chunk has this many bytes (keeps the rows per file few).
MIN_BYTES = 16 * 1024
#: Expected bytes between content cuts after ``MIN_BYTES`` (about 48 KiB per chunk).
TARGET_BYTES = 32 * 1024
#: A chunk is cut at the first line end at or past this size (and a longer line inside).
MAX_BYTES = 256 * 1024


def cut_points(data: bytes) -> list[int]:
    """End offsets of ``data``'s chunks, ascending, the last being ``len(data)``.

    ``data[previous:end]`` for consecutive offsets (starting at 0) are the chunks.
    """
    minimum, target, maximum = MIN_BYTES, TARGET_BYTES, MAX_BYTES
    view = memoryview(data)
    size = len(data)
    cuts: list[int] = []
    start = 0  # of the current chunk
    pos = 0  # of the current line (or the rest of a long line)
    while pos < size:
        newline = data.find(b"\n", pos)
        end = size if newline < 0 else newline + 1
        if end - pos > maximum:  # a giant line: a piece of MAX_BYTES from where it is
            end = pos + maximum
            cut = True
        else:
            length = end - pos
            filled = end - start
            cut = filled >= maximum or (
                filled >= minimum and zlib.crc32(view[pos:end]) % target < length)
        if cut or end == size:
            cuts.append(end)
            start = end
        pos = end
    return cuts
