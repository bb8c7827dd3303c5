"""Relay config bodies stored as content-defined chunks (``relay_chunks``).

A blob's body moves from its own ``body`` column into ``RelayConfigChunk`` rows (each
zlib-compressed, stored once by hash) named in order by ``RelayConfigBlobChunk``; then
the column is dropped (made nullable first, so that the way back can add it again). Converting the stored blobs also shares their common chunks (the
unchanged parts of consecutive versions of a map), so the table shrinks. One blob is in
memory at a time, its ids read in batches. Reversible: going back rebuilds each blob's
``body`` from its chunks, one blob at a time.
"""

import hashlib
import zlib

import django.db.models.deletion
from django.db import migrations
from django.db import models

from requests_app import relay_chunks

LEVEL = 6  # zlib level of the chunks (RelayConfigChunk.LEVEL)
IDS_PER_QUERY = 100


def _blob_ids(blob_model):
    """Every blob id, ascending, read ``IDS_PER_QUERY`` at a time."""
    last = 0
    while True:
        ids = list(blob_model.objects.filter(pk__gt=last).order_by("pk")
                   .values_list("pk", flat=True)[:IDS_PER_QUERY])
        yield from ids
        if len(ids) < IDS_PER_QUERY:
            return
        last = ids[-1]


def forwards(apps, schema_editor):
    blob_model = apps.get_model("requests_app", "RelayConfigBlob")
    chunk_model = apps.get_model("requests_app", "RelayConfigChunk")
    join_model = apps.get_model("requests_app", "RelayConfigBlobChunk")
    for pk in _blob_ids(blob_model):
        body = blob_model.objects.filter(pk=pk).values_list("body", flat=True).get()
        data = zlib.decompress(bytes(body))
        view, start, hashes, pieces = memoryview(data), 0, [], {}
        for end in relay_chunks.cut_points(data):
            digest = hashlib.sha256(view[start:end]).hexdigest()
            pieces.setdefault(digest, view[start:end])
            hashes.append(digest)
            start = end
        known = dict(chunk_model.objects.filter(sha256__in=list(pieces))
                     .values_list("sha256", "pk"))
        for digest, piece in pieces.items():
            if digest not in known:
                known[digest] = chunk_model.objects.create(
                    sha256=digest, size=len(piece), body=zlib.compress(piece, LEVEL)).pk
        join_model.objects.bulk_create(
            [join_model(blob_id=pk, position=position, chunk_id=known[digest])
             for position, digest in enumerate(hashes)])


def backwards(apps, schema_editor):
    blob_model = apps.get_model("requests_app", "RelayConfigBlob")
    join_model = apps.get_model("requests_app", "RelayConfigBlobChunk")
    for pk in _blob_ids(blob_model):
        data = b"".join(
            zlib.decompress(bytes(body)) for body in join_model.objects.filter(blob_id=pk)
            .order_by("position").values_list("chunk__body", flat=True))
        blob_model.objects.filter(pk=pk).update(body=zlib.compress(data, LEVEL))


class Migration(migrations.Migration):

    dependencies = [
        ("requests_app", "0012_wake_token"),
    ]

    operations = [
        migrations.CreateModel(
            name="RelayConfigChunk",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                           serialize=False, verbose_name="ID")),
                ("sha256", models.CharField(max_length=64, unique=True,
                                            verbose_name="sha256 of the bytes")),
                ("size", models.PositiveIntegerField(verbose_name="bytes")),
                ("body", models.BinaryField(verbose_name="zlib-compressed bytes")),
            ],
            options={
                "verbose_name": "relay config chunk",
                "verbose_name_plural": "relay config chunks",
            },
        ),
        migrations.CreateModel(
            name="RelayConfigBlobChunk",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                           serialize=False, verbose_name="ID")),
                ("position", models.PositiveIntegerField(verbose_name="position")),
                ("blob", models.ForeignKey(
                    db_index=False, on_delete=django.db.models.deletion.DO_NOTHING,
                    related_name="chunk_rows", to="requests_app.relayconfigblob",
                    verbose_name="body")),
                ("chunk", models.ForeignKey(
                    on_delete=django.db.models.deletion.DO_NOTHING, related_name="uses",
                    to="requests_app.relayconfigchunk", verbose_name="chunk")),
            ],
            options={
                "verbose_name": "relay config body chunk",
                "verbose_name_plural": "relay config body chunks",
                "ordering": ("blob", "position"),
                "constraints": [models.UniqueConstraint(
                    fields=("blob", "position"), name="relayconfigblobchunk_blob_position")],
            },
        ),
        # nullable first, so that going back can add the column to existing rows (then
        # ``backwards`` fills it and this step makes it required again)
        migrations.AlterField(
            model_name="relayconfigblob", name="body",
            field=models.BinaryField(null=True, verbose_name="zlib-compressed bytes")),
        migrations.RunPython(forwards, backwards),
        migrations.RemoveField(model_name="relayconfigblob", name="body"),
    ]
