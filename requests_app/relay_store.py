"""Relay config file storage: each body stored once by content hash, versions name them.

Why: at 100k entries a version is megabytes of text and was kept whole in one JSON
column, so every poll, 304 and manifest decoded all of it, and every version stored all
of it again. Here a version is a handful of ``RelayConfigFile`` rows (name -> blob); a
blob (``RelayConfigBlob``) holds one body zlib-compressed, with its SHA-256, size and
line count beside it. So:

* an unchanged file is shared between versions (one build usually changes one line of
  one or two files: the others cost one row each);
* ETags, 304s, the manifest's sizes and the version pages read metadata only;
* a body is read in slices (:func:`stream_body`), so the pull endpoint's memory does not
  grow with the file;
* retention (:func:`prune`) drops the files of old versions and any blob no version
  names any more; the version rows and their line history stay.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

from django.db.models import BinaryField
from django.db.models import Exists
from django.db.models import OuterRef
from django.db.models import Q
from django.db.models.functions import Substr

from .models import RelayConfigBlob
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

#: Compressed bytes read per query when a body is streamed.
SLICE_BYTES = 256 * 1024
#: Uncompressed bytes handed to the response per chunk.
CHUNK_BYTES = 64 * 1024


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
    return {pk: zlib.decompress(bytes(body)) for pk, body in
            RelayConfigBlob.objects.filter(pk__in=list(blob_ids)).values_list("pk", "body")}


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
    """A body's bytes in chunks, reading ``SLICE_BYTES`` of the compressed form per query.

    Memory stays at one slice plus one chunk whatever the file's size (the whole
    compressed body is never in memory). Blobs never change (content-addressed), so the
    slices are consistent; a blob deleted mid-stream ends the stream short, which the
    client sees against the Content-Length.
    """
    inflate = zlib.decompressobj()
    position = 1  # SUBSTRING counts from 1
    while True:
        piece = (RelayConfigBlob.objects.filter(pk=blob_id)
                 .annotate(piece=Substr("body", position, SLICE_BYTES,
                                        output_field=BinaryField()))
                 .values_list("piece", flat=True).first())
        if not piece:
            break
        piece = bytes(piece)
        position += len(piece)
        data = inflate.decompress(piece, CHUNK_BYTES)
        while data:
            yield data
            data = inflate.decompress(inflate.unconsumed_tail, CHUNK_BYTES)
        if len(piece) < SLICE_BYTES:
            break
    rest = inflate.flush()
    if rest:
        yield rest


def prune(*, keep_versions: int, keep_days: float, now: datetime) -> tuple[int, int]:
    """Drop the files of versions outside the retention; delete blobs nobody names.

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
    orphans = RelayConfigBlob.objects.filter(
        ~Q(Exists(RelayConfigFile.objects.filter(blob_id=OuterRef("pk")))))
    # One DELETE (the file -> blob key is DO_NOTHING in Python): no body is loaded.
    return len(ids), orphans.delete()[0]
