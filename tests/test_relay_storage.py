"""Relay config storage at scale: files stored once by content hash, polls and pages
from metadata, streamed bodies, retention, and diffs from the stored line history."""

from __future__ import annotations

import hashlib
import zlib
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from requests_app import relay
from requests_app import relay_chunks
from requests_app import relay_store
from requests_app import relay_views
from requests_app.models import RelayConfigBlob
from requests_app.models import RelayConfigBlobChunk
from requests_app.models import RelayConfigChange
from requests_app.models import RelayConfigChunk
from requests_app.models import RelayConfigFile
from requests_app.models import RelayConfigVersion
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.relay import config_changes
from requests_app.relay import history_changes
from requests_app.relay import relay_config_rebuild
from tests.factories import RelayRequestFactory

pytestmark = pytest.mark.django_db

TOKEN = "s3cret-token"
BODY_COLUMN = 'relayconfigchunk"."body"'  # how any query reading a body names the column


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def bodies_read(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries if BODY_COLUMN in q["sql"]]


def small_chunks(monkeypatch) -> None:
    """Chunks of tens of bytes, so the few entries of a test span many chunks."""
    monkeypatch.setattr(relay_chunks, "MIN_BYTES", 16)
    monkeypatch.setattr(relay_chunks, "TARGET_BYTES", 32)
    monkeypatch.setattr(relay_chunks, "MAX_BYTES", 64)


@pytest.fixture
def build(team, requester):
    """Add one active server entry (or an account) and build a version; returns it."""
    made = []

    def add(account: bool = False, **fields) -> RelayConfigVersion:
        n = len(made)
        if account:
            fields = {"account": True, "account_name": f"svc-{n}",
                      "sender_addresses": ["shop@example.org"], "sender_domains": [],
                      **fields}
        else:
            fields = {"fqdn": f"h{n}.example.org", "ipv4": [f"81.2.69.{n + 10}"], "ipv6": [],
                      **fields}
        made.append(RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                                        **fields))
        version = relay_config_rebuild(reason=f"add {n}")
        assert version is not None
        return version

    add.made = made
    return add


# --- stored once ---------------------------------------------------------------------------

def test_unchanged_files_are_one_blob_shared_by_versions(build):
    v1, v2 = build(), build()
    one, two = relay_store.file_meta(v1), relay_store.file_meta(v2)
    assert set(one) == set(two)
    # the fragments do not depend on the entries: the same row, no second copy
    assert one["main.cf.fragment"].blob_id == two["main.cf.fragment"].blob_id
    assert one["master.cf.fragment"].blob_id == two["master.cf.fragment"].blob_id
    assert one["client_access.cidr"].blob_id != two["client_access.cidr"].blob_id
    assert RelayConfigBlob.objects.count() < RelayConfigFile.objects.count()
    # the metadata describes the bytes the version serves
    for name, text in v2.files.items():
        data = text.encode()
        assert two[name].sha256 == hashlib.sha256(data).hexdigest()
        assert (two[name].size, two[name].lines) == (len(data), data.count(b"\n"))


# --- the pull endpoint ---------------------------------------------------------------------

def test_304_and_head_read_no_body_and_get_reads_only_its_file(build, settings):
    settings.RELAY_CONFIG_TOKEN = TOKEN
    version = build()
    client = Client(HTTP_AUTHORIZATION=f"Token {TOKEN}")
    url = "/relay-config/client_access.cidr"
    text = version.files["client_access.cidr"]
    etag = f'"{hashlib.sha256(text.encode()).hexdigest()}"'
    with CaptureQueriesContext(connection) as ctx:
        cached = client.get(url, HTTP_IF_NONE_MATCH=etag)
        head = client.head(url)
    assert cached.status_code == 304 and cached["ETag"] == etag
    assert head.status_code == 200 and head["Content-Length"] == str(len(text.encode()))
    assert bodies_read(ctx) == []
    with CaptureQueriesContext(connection) as ctx:
        manifest = client.get("/relay-config/MANIFEST.json")
    assert manifest.content.decode() == version.files["MANIFEST.json"]
    # one body read, the manifest's blob only (by its id)
    manifest_blob = relay_store.file_meta(version, ["MANIFEST.json"])["MANIFEST.json"].blob_id
    [read] = bodies_read(ctx)
    assert str(manifest_blob) in read


def test_a_large_body_is_streamed_a_few_chunks_per_query_byte_for_byte(
        build, settings, monkeypatch):
    settings.RELAY_CONFIG_TOKEN = TOKEN
    small_chunks(monkeypatch)
    for _ in range(3):
        version = build()
    monkeypatch.setattr(relay_views, "STREAM_ABOVE", 0)
    monkeypatch.setattr(relay_store, "CHUNKS_PER_QUERY", 2)
    monkeypatch.setattr(relay_store, "PIECE_BYTES", 32)
    blob_id = relay_store.file_meta(version, ["relay_policy"])["relay_policy"].blob_id
    assert RelayConfigBlobChunk.objects.filter(blob_id=blob_id).count() > 4
    client = Client(HTTP_AUTHORIZATION=f"Token {TOKEN}")
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/relay-config/relay_policy")
        body = b"".join(response.streaming_content)
    assert response.streaming
    assert body == version.files["relay_policy"].encode()
    assert response["Content-Length"] == str(len(body))
    # read in order, two chunks per query: several queries, none reading the whole body
    assert len(bodies_read(ctx)) > 2
    assert all("LIMIT 2" in sql.upper() for sql in bodies_read(ctx))
    download = logged_in_download(version, "relay_policy")
    assert b"".join(download.streaming_content) == body


def logged_in_download(version: RelayConfigVersion, name: str):
    user = get_user_model().objects.create_superuser("root", "root@example.org", "pw")
    return logged_in(user).get(reverse("relay:version_file", args=[version.number, name]),
                               {"download": "1"})


# --- pages and admin never load bodies they do not show -------------------------------------

def test_admin_and_version_pages_select_no_body(build, approver):
    build()
    version = build()
    admin = get_user_model().objects.create_superuser("root", "root@example.org", "pw")
    urls = [reverse("admin:requests_app_relayconfigversion_changelist"),
            reverse("admin:requests_app_relayconfigversion_change", args=[version.pk]),
            reverse("relay:versions"), reverse("relay:version", args=[version.number])]
    for url in urls:
        with CaptureQueriesContext(connection) as ctx:
            response = logged_in(admin).get(url)
        assert response.status_code == 200, url
        assert bodies_read(ctx) == [], url
    change_page = logged_in(admin).get(urls[1]).content.decode()
    for name, meta in relay_store.file_meta(version).items():
        assert name in change_page and meta.sha256 in change_page


def test_diff_page_reads_no_body_when_files_are_large(build, approver, monkeypatch):
    build()
    build()
    monkeypatch.setattr(relay, "DIFF_MAX_BYTES", 0)
    with CaptureQueriesContext(connection) as ctx:
        response = logged_in(approver).get(reverse("relay:diff", args=[1, 2]))
    assert response.status_code == 200
    assert bodies_read(ctx) == []
    assert response.context["diff"]["client_access.cidr"] is None
    assert response.context["diff"]["main.cf.fragment"] == []  # same blob: unchanged
    assert "too large to compare here" in response.content.decode()
    assert response.context["changes"] == [
        c for c in history_changes(RelayConfigVersion.objects.get(number=1),
                                   RelayConfigVersion.objects.get(number=2))]
    assert response.context["changes"]


# --- the diff from history -----------------------------------------------------------------

def test_history_diff_equals_the_file_comparison_for_any_two_versions(build):
    build()
    build(ipv4=["81.2.69.10"])  # b on a's address: a merged line in the cidr map
    build(account=True)
    build(account=True)  # a sender two accounts share
    first, second = build.made[0], build.made[2]
    RelayRequest.objects.filter(pk__in=[first.pk, second.pk]).update(state=S.REVOKED)
    relay_config_rebuild(reason="two leave")
    versions = list(RelayConfigVersion.objects.order_by("number"))
    texts = {v.number: v.files for v in versions}
    for a in versions:
        for b in versions:
            expected = config_changes(texts[a.number], texts[b.number])
            assert history_changes(a, b) == expected, (a.number, b.number)


def test_a_version_without_history_falls_back_to_the_files(build, approver):
    build()
    v2 = build()
    v3 = RelayConfigVersion.objects.create(number=3, files=v2.files, digest="x")
    assert history_changes(v2, v3) is None
    response = logged_in(approver).get(reverse("relay:diff", args=[2, 3]))
    assert response.status_code == 200 and response.context["changes"] == []


# --- retention -----------------------------------------------------------------------------

def test_retention_keeps_n_newest_and_recent_drops_older_files_keeps_history(
        build, settings, approver):
    settings.RELAY_CONFIG_KEEP_VERSIONS = 2
    settings.RELAY_CONFIG_KEEP_DAYS = 1
    for _ in range(4):
        build()
    old = timezone.now() - timedelta(days=10)
    RelayConfigVersion.objects.filter(number__in=[1, 2]).update(created_at=old)
    v1_files = RelayConfigVersion.objects.get(number=1).files
    history_before = RelayConfigChange.objects.count()
    newest = build()  # v5: keeps v4 and v5 (newest 2), v3 (recent); v1, v2 go
    pruned = set(RelayConfigVersion.objects.filter(files_pruned_at__isnull=False)
                 .values_list("number", flat=True))
    assert pruned == {1, 2}
    assert not RelayConfigFile.objects.filter(version__number__in=[1, 2]).exists()
    assert RelayConfigChange.objects.filter(version__number__in=[1, 2]).exists()
    assert RelayConfigChange.objects.count() > history_before  # nothing of it deleted
    # no blob left that no version names, and every kept version still complete
    used = set(RelayConfigFile.objects.values_list("blob_id", flat=True))
    assert set(RelayConfigBlob.objects.values_list("pk", flat=True)) == used
    assert set(RelayConfigVersion.objects.get(number=3).files) == set(newest.files)
    # the diff from a pruned version still answers, from history
    v1 = RelayConfigVersion.objects.get(number=1)
    assert history_changes(v1, newest) == config_changes(v1_files, newest.files)
    client = logged_in(approver)
    assert client.get(reverse("relay:diff", args=[1, 5])).status_code == 200
    page = client.get(reverse("relay:version", args=[1])).content.decode()
    assert "were pruned" in page
    assert client.get(reverse("relay:version_file", args=[1, "relay_policy"])
                      ).status_code == 404


def test_retention_never_prunes_the_newest(build, settings):
    settings.RELAY_CONFIG_KEEP_VERSIONS = 0
    settings.RELAY_CONFIG_KEEP_DAYS = 0
    build()
    RelayConfigVersion.objects.update(created_at=timezone.now() - timedelta(days=400))
    newest = build()
    assert relay.relay_config_prune() == (0, 0)
    assert RelayConfigVersion.objects.get(number=1).files_pruned_at is not None
    assert newest.files and RelayConfigVersion.objects.get(number=2).files_pruned_at is None


def test_staleness_reads_the_stored_files(build, settings):
    """The sweep's check reads the newest version's files from the blobs: a revoked
    entry still served is stale until the next build."""
    build()
    build()
    assert relay.relay_config_stale() is False
    RelayRequest.objects.filter(pk=build.made[0].pk).update(state=S.REVOKED,
                                                            updated_at=timezone.now())
    assert relay.relay_config_stale() is True
    relay_config_rebuild(reason="removal")
    assert relay.relay_config_stale() is False


# --- the migration -------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_migration_moves_snapshots_into_blobs_and_back():
    executor = MigrationExecutor(connection)
    before, after = [("requests_app", "0009_conversation_and_assignment")], \
        [("requests_app", "0010_relay_config_blobs")]
    executor.migrate(before)
    old_apps = executor.loader.project_state(before).apps
    version_model = old_apps.get_model("requests_app", "RelayConfigVersion")
    shared = "# the same in both\n"
    version_model.objects.create(number=1, digest="a", files={"a.txt": shared, "b": "one\n"})
    version_model.objects.create(number=2, digest="b", files={"a.txt": shared, "b": "two\n"})
    executor = MigrationExecutor(connection)
    executor.migrate(after)
    new_apps = executor.loader.project_state(after).apps
    blob_model = new_apps.get_model("requests_app", "RelayConfigBlob")
    file_model = new_apps.get_model("requests_app", "RelayConfigFile")
    assert blob_model.objects.count() == 3  # the shared file once
    assert file_model.objects.count() == 4
    # their stored history may predate the merged-line attribution: diffs use the files
    assert set(new_apps.get_model("requests_app", "RelayConfigVersion").objects
               .values_list("history", flat=True)) == {False}
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    version_model = executor.loader.project_state(before).apps.get_model(
        "requests_app", "RelayConfigVersion")
    assert dict(version_model.objects.values_list("number", "files")) == {
        1: {"a.txt": shared, "b": "one\n"}, 2: {"a.txt": shared, "b": "two\n"}}
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_without_history_and_with_pruned_files_the_page_says_so(build, approver, settings):
    build()
    v2 = build()
    RelayConfigVersion.objects.filter(number=2).update(history=False)
    RelayConfigVersion.objects.filter(number=1).update(
        created_at=timezone.now() - timedelta(days=400))
    settings.RELAY_CONFIG_KEEP_VERSIONS = 1
    settings.RELAY_CONFIG_KEEP_DAYS = 1
    relay.relay_config_prune()
    assert RelayConfigVersion.objects.get(number=1).files_pruned_at is not None
    response = logged_in(approver).get(reverse("relay:diff", args=[1, v2.number]))
    assert response.status_code == 200 and response.context["changes"] == []
    html = response.content.decode()
    assert "stored without its line history" in html
    assert "lines changed." not in html


# --- content-defined chunks ----------------------------------------------------------------

def big_map(lines: int = 40_000) -> list[bytes]:
    """A cidr-like access map: one distinct line per entry, about 60 bytes each."""
    return [f"{hashlib.sha256(str(i).encode()).hexdigest()[:24]}.example.org "
            f"10.{i // 65536}.{i // 256 % 256}.{i % 256}/32 OK\n".encode()
            for i in range(lines)]


def stored(number: int, files: dict[str, bytes]) -> RelayConfigVersion:
    version = RelayConfigVersion.objects.create(number=number, digest=str(number))
    version.attach_files(files)
    return version


def chunk_ids_of(version: RelayConfigVersion) -> set[int]:
    return set(RelayConfigBlobChunk.objects.filter(blob__uses__version=version)
               .values_list("chunk_id", flat=True))


def compressed_bytes(chunk_ids: set[int]) -> int:
    return sum(len(bytes(body)) for body in RelayConfigChunk.objects.filter(
        pk__in=chunk_ids).values_list("body", flat=True))


@pytest.mark.parametrize("edit", ["change", "insert", "remove"])
def test_a_one_line_change_to_a_large_file_stores_about_one_new_chunk(edit):
    lines = big_map(100_000)  # 5.7 MiB, about 2 MiB compressed
    before = b"".join(lines)
    middle = len(lines) // 2
    if edit == "change":
        lines[middle] = b"changed.example.org 192.0.2.1/32 REJECT\n"
    elif edit == "insert":
        lines.insert(middle, b"inserted.example.org 192.0.2.1/32 OK\n")
    else:
        del lines[middle]
    after = b"".join(lines)
    v1 = stored(1, {"client_access.cidr": before})
    v2 = stored(2, {"client_access.cidr": after})
    old, new = chunk_ids_of(v1), chunk_ids_of(v2)
    assert len(old) > 20  # the file is many chunks
    added = new - old
    assert 1 <= len(added) <= 2
    whole = len(zlib.compress(after, RelayConfigChunk.LEVEL))
    assert compressed_bytes(added) < 0.05 * whole
    # the stored chunks are about the same size as the file compressed whole
    assert compressed_bytes(old) < 1.05 * len(zlib.compress(before, RelayConfigChunk.LEVEL))
    assert relay_store.version_bytes(v2) == {"client_access.cidr": after}
    assert relay_store.version_bytes(v1) == {"client_access.cidr": before}


BODIES = {
    "trailing newline": b"".join(big_map(5_000)),
    "no trailing newline": b"".join(big_map(5_000))[:-1],
    "empty": b"",
    "one giant line": b"x" * (3 * relay_chunks.MAX_BYTES + 12_345),
    "one short line": b"/etc/postfix/relay_policy OK",
    "crlf and blank lines": b"a OK\r\n\r\n\n\nb REJECT\r\n" * 20_000,
    "identical lines": b"same line OK\n" * 50_000,
}


@pytest.mark.parametrize("label", list(BODIES))
def test_every_reader_returns_the_stored_bytes_exactly(label, monkeypatch):
    data = BODIES[label]
    version = stored(1, {"f": data, "MANIFEST.json": b"{}\n"})
    meta = relay_store.file_meta(version)["f"]
    assert (meta.sha256, meta.size, meta.lines) == (
        hashlib.sha256(data).hexdigest(), len(data), data.count(b"\n"))
    assert relay_store.read_body(meta.blob_id) == data
    assert relay_store.version_bytes(version, ["f"]) == {"f": data}
    assert relay_store.version_texts(version, ["f"]) == {"f": data.decode()}
    monkeypatch.setattr(relay_store, "CHUNKS_PER_QUERY", 1)
    monkeypatch.setattr(relay_store, "PIECE_BYTES", 1000)
    pieces = list(relay_store.stream_body(meta.blob_id))
    assert b"".join(pieces) == data
    assert all(0 < len(p) <= 1000 for p in pieces)
    sizes = list(RelayConfigChunk.objects.filter(uses__blob_id=meta.blob_id)
                 .order_by("uses__position").values_list("size", flat=True))
    assert sum(sizes) == len(data) and all(s <= 2 * relay_chunks.MAX_BYTES for s in sizes)
    if data:
        assert len(sizes) > 1 or len(data) < relay_chunks.MIN_BYTES + relay_chunks.MAX_BYTES


def test_chunks_end_at_line_ends_and_an_insert_shifts_the_later_cuts_only():
    data = b"".join(big_map(20_000))
    cuts = relay_chunks.cut_points(data)
    assert cuts[-1] == len(data) and cuts == sorted(set(cuts))
    assert all(data[end - 1:end] == b"\n" for end in cuts)
    sizes = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]
    assert 32 * 1024 <= sum(sizes) / len(sizes) <= 64 * 1024  # the target average
    line = b"inserted.example.org 192.0.2.1/32 OK\n"
    at = data.index(b"\n", len(data) // 2) + 1
    moved = relay_chunks.cut_points(data[:at] + line + data[at:])
    assert [c for c in cuts if c < at - relay_chunks.MAX_BYTES] == \
        [c for c in moved if c < at - relay_chunks.MAX_BYTES]
    later = [c + len(line) for c in cuts if c > at + 2 * relay_chunks.MAX_BYTES]
    assert later == [c for c in moved if c > at + len(line) + 2 * relay_chunks.MAX_BYTES]


def test_a_chunk_stored_by_a_racing_build_is_named_not_duplicated(monkeypatch):
    """Two builds storing the same chunk: the second insert is ignored, its row used."""
    data = b"".join(big_map(3_000))
    real = RelayConfigChunk.objects.bulk_create

    def racing(objs, **kwargs):
        first = objs[0]  # another build commits this very chunk first
        RelayConfigChunk.objects.create(sha256=first.sha256, size=first.size,
                                        body=first.body)
        return real(objs, **kwargs)

    monkeypatch.setattr(RelayConfigChunk.objects, "bulk_create", racing)
    version = stored(1, {"f": data})
    monkeypatch.undo()
    assert relay_store.version_bytes(version) == {"f": data}
    sha = RelayConfigChunk.objects.values_list("sha256", flat=True)
    assert len(sha) == len(set(sha))
    # the same file again (another version): the blob and its chunks are only named
    chunks = RelayConfigChunk.objects.count()
    stored(2, {"g": data})
    assert RelayConfigChunk.objects.count() == chunks
    assert RelayConfigBlob.objects.count() == 1


def test_prune_deletes_the_chunks_no_blob_names_and_keeps_shared_ones():
    lines = big_map()
    v1 = stored(1, {"map": b"".join(lines), "only_v1": b"gone soon\n"})
    lines[10] = b"changed.example.org 192.0.2.1/32 REJECT\n"
    v2 = stored(2, {"map": b"".join(lines)})
    only_v1, shared = chunk_ids_of(v1) - chunk_ids_of(v2), chunk_ids_of(v1) & chunk_ids_of(v2)
    assert only_v1 and shared
    RelayConfigVersion.objects.filter(number=1).update(
        created_at=timezone.now() - timedelta(days=10))
    with CaptureQueriesContext(connection) as ctx:
        assert relay_store.prune(keep_versions=1, keep_days=1, now=timezone.now()) == (1, 2)
    deletes = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("DELETE")]
    assert len([d for d in deletes if "relayconfigchunk" in d.split("WHERE")[0]]) == 1
    assert bodies_read(ctx) == []
    assert not RelayConfigChunk.objects.filter(pk__in=only_v1).exists()
    remaining = set(RelayConfigChunk.objects.values_list("pk", flat=True))
    assert remaining == chunk_ids_of(v2) and shared <= remaining
    assert relay_store.version_bytes(v2) == {"map": b"".join(lines)}


@pytest.mark.django_db(transaction=True)
def test_migration_cuts_old_blobs_into_shared_chunks_and_back():
    executor = MigrationExecutor(connection)
    before = [("requests_app", "0012_wake_token")]
    executor.migrate(before)
    blob_model = executor.loader.project_state(before).apps.get_model(
        "requests_app", "RelayConfigBlob")
    lines = big_map(10_000)
    old = {"v1": b"".join(lines), "empty": b"", "tail": b"no newline at the end"}
    lines[5000] = b"changed.example.org 192.0.2.1/32 REJECT\n"
    old["v2"] = b"".join(lines)
    ids = {label: blob_model.objects.create(
        sha256=hashlib.sha256(data).hexdigest(), size=len(data), lines=data.count(b"\n"),
        body=zlib.compress(data, 6)).pk for label, data in old.items()}
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    # the old bodies read as before, through every reader, and the maps share chunks
    for label, data in old.items():
        assert relay_store.read_body(ids[label]) == data, label
        assert b"".join(relay_store.stream_body(ids[label])) == data, label
    v1, v2 = ({c for c in RelayConfigBlobChunk.objects.filter(blob_id=ids[k])
               .values_list("chunk_id", flat=True)} for k in ("v1", "v2"))
    assert len(v2 - v1) <= 2 < len(v1 & v2)
    assert not RelayConfigBlobChunk.objects.filter(blob_id=ids["empty"]).exists()
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    blob_model = executor.loader.project_state(before).apps.get_model(
        "requests_app", "RelayConfigBlob")
    for label, data in old.items():
        body = blob_model.objects.filter(pk=ids[label]).values_list("body", flat=True).get()
        assert zlib.decompress(bytes(body)) == data, label
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_a_body_pruned_while_read_is_an_error_not_an_empty_file(settings, monkeypatch):
    # given the newest version's small file, whose blob a build with a tight retention
    # deletes between the pull's metadata read and its body read
    settings.RELAY_CONFIG_TOKEN = TOKEN
    version = stored(1, {"MANIFEST.json": b'{"files": []}\n'})
    blob_id = relay_store.file_meta(version)["MANIFEST.json"].blob_id
    real_read = relay_store.read_body

    def pruned_meanwhile(pk):
        RelayConfigBlobChunk.objects.filter(blob_id=pk).delete()
        return real_read(pk)

    monkeypatch.setattr(relay_store, "read_body", pruned_meanwhile)
    # then the puller is asked to pull again (never an empty body under the old ETag)
    response = Client(HTTP_AUTHORIZATION=f"Token {TOKEN}").get("/relay-config/MANIFEST.json")
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert b"pull again" in response.content
    # and any other reader is told, rather than handed b""
    with pytest.raises(RelayConfigBlob.DoesNotExist):
        real_read(blob_id)


def test_a_blob_stored_by_another_writer_keeps_its_own_chunk_list(monkeypatch):
    """Cut points from other constants (a rolling deploy after tuning) must not mix two
    chunk lists into one body: the list of whoever stored the blob first stays."""
    data = b"".join(big_map(20_000))
    first = stored(1, {"f": data})
    blob_id = relay_store.file_meta(first)["f"].blob_id
    lists = RelayConfigBlobChunk.objects.filter(blob_id=blob_id).count()
    # when a writer with other cut points stores the same body (as if it raced: the blob
    # row is there, so only a missing chunk list would be written)
    monkeypatch.setattr(RelayConfigBlob.objects, "filter",
                        _hide_once(RelayConfigBlob.objects.filter))
    monkeypatch.setattr(relay_chunks, "MIN_BYTES", 4 * 1024)
    monkeypatch.setattr(relay_chunks, "TARGET_BYTES", 8 * 1024)
    second = stored(2, {"f": data})
    monkeypatch.undo()
    # then the body reads the same bytes, from the first list only
    assert RelayConfigBlobChunk.objects.filter(blob_id=blob_id).count() == lists
    assert relay_store.version_bytes(second) == {"f": data}
    assert relay_store.read_body(blob_id) == data


def _hide_once(real_filter):
    """``RelayConfigBlob.objects.filter`` whose first look-up by sha256 finds nothing (a
    concurrent writer's blob, committed after this writer looked)."""
    calls = {"n": 0}

    def filter_(*args, **kwargs):
        query = real_filter(*args, **kwargs)
        if "sha256__in" in kwargs and calls["n"] == 0:
            calls["n"] += 1
            return query.none()
        return query

    return filter_
