"""Relay config files stored once by content hash (issue 15, item 3).

Moves each version's ``files`` JSON into ``RelayConfigBlob`` (one per distinct body)
and ``RelayConfigFile`` (version, name -> blob) rows, then drops the JSON column.
Reversible: going back rebuilds the JSON column from the rows. Existing versions keep
``history`` False: their ``RelayConfigChange`` rows may predate the per-request
attribution of merged lines (``attribute_units``), so their diffs are still computed from
their files, as before, while retention keeps those.
"""

import hashlib
import zlib

import django.db.models.deletion
from django.db import migrations
from django.db import models


def forwards(apps, schema_editor):
    version_model = apps.get_model("requests_app", "RelayConfigVersion")
    blob_model = apps.get_model("requests_app", "RelayConfigBlob")
    file_model = apps.get_model("requests_app", "RelayConfigFile")
    known: dict[str, int] = {}
    # one version in memory at a time (a 100k-entry version is megabytes)
    for pk in version_model.objects.order_by("number").values_list("pk", flat=True):
        files = version_model.objects.filter(pk=pk).values_list("files", flat=True).get()
        rows = []
        for name, text in sorted((files or {}).items()):
            data = text.encode()
            sha = hashlib.sha256(data).hexdigest()
            if sha not in known:
                known[sha] = blob_model.objects.create(
                    sha256=sha, size=len(data), lines=data.count(b"\n"),
                    body=zlib.compress(data, 6)).pk
            rows.append(file_model(version_id=pk, name=name, blob_id=known[sha]))
        file_model.objects.bulk_create(rows)


def backwards(apps, schema_editor):
    version_model = apps.get_model("requests_app", "RelayConfigVersion")
    blob_model = apps.get_model("requests_app", "RelayConfigBlob")
    file_model = apps.get_model("requests_app", "RelayConfigFile")
    for pk in version_model.objects.values_list("pk", flat=True):
        files = {}
        for name, blob_id in file_model.objects.filter(version_id=pk).values_list(
                "name", "blob_id"):
            body = blob_model.objects.filter(pk=blob_id).values_list("body", flat=True).get()
            files[name] = zlib.decompress(bytes(body)).decode()
        version_model.objects.filter(pk=pk).update(files=files)


class Migration(migrations.Migration):

    dependencies = [
        ("requests_app", "0009_conversation_and_assignment"),
    ]

    operations = [
        migrations.CreateModel(
            name="RelayConfigBlob",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                           serialize=False, verbose_name="ID")),
                ("sha256", models.CharField(max_length=64, unique=True,
                                            verbose_name="sha256 of the bytes")),
                ("size", models.PositiveBigIntegerField(verbose_name="bytes")),
                ("lines", models.PositiveIntegerField(verbose_name="lines")),
                ("body", models.BinaryField(verbose_name="zlib-compressed bytes")),
            ],
            options={
                "verbose_name": "relay config file body",
                "verbose_name_plural": "relay config file bodies",
            },
        ),
        migrations.CreateModel(
            name="RelayConfigFile",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                           serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100, verbose_name="file")),
                ("blob", models.ForeignKey(
                    on_delete=django.db.models.deletion.DO_NOTHING, related_name="uses",
                    to="requests_app.relayconfigblob", verbose_name="body")),
                ("version", models.ForeignKey(
                    on_delete=django.db.models.deletion.CASCADE, related_name="file_rows",
                    to="requests_app.relayconfigversion", verbose_name="version")),
            ],
            options={
                "verbose_name": "relay config file",
                "verbose_name_plural": "relay config files",
                "ordering": ("version", "name"),
                "constraints": [models.UniqueConstraint(
                    fields=("version", "name"), name="relayconfigfile_version_name")],
            },
        ),
        migrations.AddField(
            model_name="relayconfigversion",
            name="history",
            field=models.BooleanField(
                default=False,
                help_text="The build stored what each request added and removed against "
                          "the version before (diffs are computed from it).",
                verbose_name="line history recorded"),
        ),
        migrations.AddField(
            model_name="relayconfigversion",
            name="files_pruned_at",
            field=models.DateTimeField(blank=True, null=True, verbose_name="files pruned at"),
        ),
        migrations.RunPython(forwards, backwards),
        migrations.RemoveField(model_name="relayconfigversion", name="files"),
    ]
