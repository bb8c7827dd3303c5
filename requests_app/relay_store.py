"""Relay config file storage: each body stored once by content hash, versions name them.

Why: at 100k entries a version is megabytes of text and was kept whole in one JSON
column, so every poll, 304 and manifest decoded all of it, and every version stored all
of it again. Here a version is a handful of ``RelayConfigFile`` rows (name -> blob); a
blob (``RelayConfigBlob``) describes one body (SHA-256, size, line count) and names its
content-defined chunks in order (``RelayConfigBlobChunk`` -> ``RelayConfigChunk``, each
zlib-compressed, cut at line ends by ``relay_chunks``). So:

* an unchanged file is shared between versions (one build usually changes one line of
  one or two files: the others cost one row each), and a changed file shares every
  chunk but the one or two around the change (a new blob costs its chunk rows and
  about one new chunk, not a copy of the file);
* ETags, 304s, the manifest's sizes and the version pages read metadata only;
* a body is read a few chunks per query (:func:`stream_body`), so the pull endpoint's
  memory does not grow with the file;
* retention (:func:`prune`) drops the files of old versions, any blob no version names
  any more and any chunk no blob names any more; the version rows and their line
  history stay.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

from django.db.models import Exists
from django.db.models import OuterRef
from django.db.models import Q

from .models import RelayConfigBlob
from .models import RelayConfigBlobChunk
from .models import RelayConfigChunk
from .models import RelayConfigFile
from .models import RelayConfigVersion

__all__ = [
    "FileMeta",
    "file_meta",
    "prune",
    "read_body",
    "store_files",
    "stream_body",
    "version_bytes",
    "version_texts",
]

#: Chunks read per query when a body is streamed (each at most 512 KiB uncompressed,
#: typically about 48 KiB and a few KiB compressed).
CHUNKS_PER_QUERY = 4
#: Uncompressed bytes handed to the response per piece.
PIECE_BYTES = 64 * 1024


@dataclass(frozen=True)
class FileMeta:
    """What is known about a stored file without reading its body."""

    name: str
    blob_id: int
    sha256: str
    size: int
    lines: int


def store_files(version: RelayConfigVersion, files: Mapping[str, bytes]) -> None:
    """Attach ``files`` to ``version``, creating only the blobs nobody stored yet
    (``RelayConfigVersion.attach_files``)."""
    version.attach_files(files)


def file_meta(version: RelayConfigVersion | int,
              names: Iterable[str] | None = None) -> dict[str, FileMeta]:
    """Name -> metadata of a version's files (one query, no body column)."""
    version_id = version if isinstance(version, int) else version.pk
    rows = RelayConfigFile.objects.filter(version_id=version_id)
    if names is not None:
        rows = rows.filter(name__in=list(names))
    return {
        name: FileMeta(name, blob_id, sha, size, lines)
        for name, blob_id, sha, size, lines in rows.order_by("name").values_list(
            "name", "blob_id", "blob__sha256", "blob__size", "blob__lines")
    }


def _bodies(blob_ids: Iterable[int]) -> dict[int, bytes]:
    return RelayConfigBlob.bodies(blob_ids)


def read_body(blob_id: int) -> bytes:
    """One body, whole (small files: the manifest, a fragment)."""
    return _bodies([blob_id])[blob_id]


def version_bytes(version: RelayConfigVersion,
                  names: Iterable[str] | None = None) -> dict[str, bytes]:
    """These files of a version (all by default) as bytes; absent names are left out."""
    meta = file_meta(version, names)
    bodies = _bodies({m.blob_id for m in meta.values()})
    return {name: bodies[m.blob_id] for name, m in meta.items()}


def version_texts(version: RelayConfigVersion,
                  names: Iterable[str] | None = None) -> dict[str, str]:
    """These files of a version (all by default) as text."""
    return {name: data.decode() for name, data in version_bytes(version, names).items()}


def stream_body(blob_id: int) -> Iterator[bytes]:
    """A body's bytes in pieces, reading ``CHUNKS_PER_QUERY`` chunks per query in order.

    Memory stays at a few compressed chunks plus one uncompressed chunk whatever the
    file's size (a chunk is at most 512 KiB: ``relay_chunks``). Blobs never change
    (content-addressed), so the reads are consistent; a blob deleted mid-stream ends
    the stream short, which the client sees against the Content-Length.
    """
    position = 0
    while True:
        rows = list(RelayConfigBlobChunk.objects
                    .filter(blob_id=blob_id, position__gte=position)
                    .order_by("position")
                    .values_list("position", "chunk__body")[:CHUNKS_PER_QUERY])
        for _position, body in rows:
            inflate = zlib.decompressobj()
            data = inflate.decompress(body, PIECE_BYTES)
            while data:
                yield data
                data = inflate.decompress(inflate.unconsumed_tail, PIECE_BYTES)
        if len(rows) < CHUNKS_PER_QUERY:
            return
        position = rows[-1][0] + 1


def prune(*, keep_versions: int, keep_days: float, now: datetime) -> tuple[int, int]:
    """Drop the files of versions outside the retention; delete blobs and chunks nobody
    names.

    Kept: the ``keep_versions`` newest versions, every version of the last
    ``keep_days`` days, and always the newest (the one the relay pulls). A pruned
    version keeps its row (number, time, reason, counts) and its line history, so the
    list and the diffs from history still cover it. Returns (versions pruned, blobs
    deleted).
    """
    newest = RelayConfigVersion.objects.order_by("-number").values_list(
        "number", flat=True).first()
    if newest is None:
        return 0, 0
    floor = newest - max(1, keep_versions) + 1
    old = RelayConfigVersion.objects.filter(
        number__lt=floor, created_at__lt=now - timedelta(days=keep_days),
        files_pruned_at__isnull=True).exclude(number=newest)
    ids = list(old.values_list("pk", flat=True))
    if ids:
        RelayConfigFile.objects.filter(version_id__in=ids).delete()
        RelayConfigVersion.objects.filter(pk__in=ids).update(files_pruned_at=now)
    # One DELETE each (every key is DO_NOTHING in Python): no row is loaded. The chunk
    # rows of unnamed blobs go first (their key refuses the blob's deletion otherwise).
    # Runs in the build's transaction, under its lock: no build names a blob or chunk
    # between these statements.
    unnamed = ~Q(Exists(RelayConfigFile.objects.filter(blob_id=OuterRef("blob_id"))))
    RelayConfigBlobChunk.objects.filter(unnamed).delete()
    orphans = RelayConfigBlob.objects.filter(
        ~Q(Exists(RelayConfigFile.objects.filter(blob_id=OuterRef("pk")))))
    deleted = orphans.delete()[0]
    RelayConfigChunk.objects.filter(
        ~Q(Exists(RelayConfigBlobChunk.objects.filter(chunk_id=OuterRef("pk"))))).delete()
    return len(ids), deleted
