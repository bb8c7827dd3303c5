"""A second relay back-end, for the tests: the relay back-end seam is one module.

It renders one text file, ``allow.txt`` (``ADDRESS request ID`` for each server address,
``SENDER login LOGIN`` for each account sender), plus the manifest every back-end
writes. It is no MTA's format: it exists to show that the relay build, the version
history, the staleness sweep, the export and the pull endpoint work with any
implementation of ``requests_app.relay_backend.RelayBackend``, without a Postfix name.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from datetime import datetime

from requests_app.artifacts_io import MANIFEST_NAME
from requests_app.artifacts_io import check_manifest_inputs
from requests_app.artifacts_io import manifest_bytes
from requests_app.relay_backend import AccountEntry
from requests_app.relay_backend import Artifacts
from requests_app.relay_backend import RelaySettings
from requests_app.relay_backend import ServerEntry

ALLOW_NAME = "allow.txt"


class PlainBackend:
    name = "plain"
    artifact_names = (ALLOW_NAME, MANIFEST_NAME)
    attributed_names = (ALLOW_NAME,)

    def __init__(self, map_type: str) -> None:
        if map_type != "text":
            raise ValueError(f"RELAY_MAP_TYPE {map_type!r} is not supported by the plain "
                             "back-end (supported: text)")
        self.map_type = map_type

    def build(
        self,
        servers: Iterable[ServerEntry],
        accounts: Iterable[AccountEntry],
        settings: RelaySettings,
        *,
        version: int,
        generated_at: datetime,
    ) -> Artifacts:
        check_manifest_inputs(version, generated_at)
        lines: list[str] = []
        skipped: list[dict[str, object]] = []
        counts = {"servers": 0, "accounts": 0}
        for server in servers:
            if not server.addresses:
                skipped.append({"request": server.request_id, "reason": "no address"})
                continue
            counts["servers"] += 1
            lines += [f"{a} request {server.request_id}\n" for a in server.addresses]
        for account in accounts:
            counts["accounts"] += 1
            lines += [f"{s.lower()} login {account.account}\n" for s in account.senders]
        files = {ALLOW_NAME: "".join(sorted(lines)).encode("ascii")}
        counts["skipped"] = len(skipped)
        files[MANIFEST_NAME] = manifest_bytes(files, counts, version=version,
                                              generated_at=generated_at)
        return Artifacts(files, skipped)

    def attribute(
        self, name: str, text: str, login_owner: Mapping[str, int]
    ) -> dict[str, int | None]:
        owners: dict[str, int | None] = {}
        for line in text.splitlines():
            _value, what, owner = line.split(" ")
            owners[line] = int(owner) if what == "request" else login_owner.get(owner)
        return owners

    def stale(
        self,
        files: Mapping[str, str],
        left: Iterable[ServerEntry | AccountEntry],
        live: Iterable[AccountEntry],
    ) -> bool:
        present = set((files.get(ALLOW_NAME) or "").splitlines())
        legit = {f"{s.lower()} login {a.account}" for a in live for s in a.senders}
        for entry in left:
            if isinstance(entry, ServerEntry):
                if any(line.endswith(f" request {entry.request_id}") for line in present):
                    return True
            elif {f"{s.lower()} login {entry.account}" for s in entry.senders} & present - legit:
                return True
        return False


def backend(map_type: str) -> PlainBackend:
    return PlainBackend(map_type)
