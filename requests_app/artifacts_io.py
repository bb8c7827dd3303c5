"""Install a set of generated files as one directory, atomically, and only on a change.

Nothing here knows which relay back-end produced the files: the relay config export,
the benchmarks and the Postfix tests all install their artefacts through
:func:`write_artifacts_atomically`. The one thing it knows about their content is the
manifest every back-end writes (``MANIFEST.json``: version, time, each file's digest
and the counts), because "changed" must ignore the manifest's version and time, or
every build would touch the files and fire config management for nothing.

No Django imports on purpose: the write is tested and benchmarked without a database.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC
from datetime import datetime
from pathlib import Path

__all__ = (
    "MANIFEST_NAME",
    "check_manifest_inputs",
    "manifest_bytes",
    "read_manifest",
    "write_artifacts_atomically",
)

MANIFEST_NAME = "MANIFEST.json"


def check_manifest_inputs(version: object, generated_at: datetime) -> None:
    """Refuse a version or time the manifest cannot carry (``ValueError``).

    A back-end calls this before it renders anything: a bad version or a naive time
    concerns every entry, so it must fail before any work is done.
    """
    if type(version) is not int or version < 0:
        raise ValueError(f"invalid version {version!r}")
    if generated_at.tzinfo is None or generated_at.utcoffset() is None:
        raise ValueError("generated_at must be timezone-aware")


def manifest_bytes(
    files: Mapping[str, bytes],
    counts: Mapping[str, int],
    *,
    version: int,
    generated_at: datetime,
    extra: Mapping[str, object] | None = None,
) -> bytes:
    """The manifest of ``files``: version, UTC time, each file's SHA-256 and size, counts.

    Sorted keys and a fixed layout, so the same files and counts give the same bytes
    (apart from version and time, which :func:`write_artifacts_atomically` ignores).
    ``extra`` adds a back-end's own instructions for the relay (Postfix: which files
    need ``postmap``); they follow from the files' names, so change detection need not
    look at them.
    """
    manifest: dict[str, object] = {
        **(extra or {}),
        "version": version,
        "generated_at": generated_at.astimezone(UTC).isoformat(),
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in files.items()
        },
        "counts": dict(counts),
    }
    return (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode("ascii")


def read_manifest(out_dir: Path) -> dict[str, object] | None:
    """Return the installed manifest, or None if there is none (or it is unreadable).

    The service uses it to pick the next version number.
    """
    try:
        loaded = json.loads((out_dir / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _payload(artifacts: Mapping[str, bytes]) -> dict[str, bytes | object]:
    """What decides "changed": every file's bytes, and the manifest minus version/time."""
    payload: dict[str, bytes | object] = {}
    for name, data in artifacts.items():
        if name == MANIFEST_NAME:
            try:
                manifest = json.loads(data)
                payload[name] = (manifest["files"], manifest["counts"])
            except (ValueError, KeyError, TypeError):
                payload[name] = data
        else:
            payload[name] = data
    return payload


def _unchanged(out_dir: Path, artifacts: Mapping[str, bytes]) -> bool:
    if not out_dir.is_dir() or out_dir.is_symlink():
        return False
    try:
        present = {p.name for p in out_dir.iterdir()}
        if present != set(artifacts):
            return False
        current = {name: (out_dir / name).read_bytes() for name in artifacts}
    except OSError:
        return False
    return _payload(current) == _payload(artifacts)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``.

    A directory cannot be ``rename``d over a non-empty one; the exchange is the only way
    to replace it without a moment in which ``out_dir`` is missing. False if unsupported.
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def write_artifacts_atomically(out_dir: Path, artifacts: Mapping[str, bytes]) -> bool:
    """Install ``artifacts`` as the exact contents of ``out_dir``; False if nothing changed.

    The files are written into a temporary directory next to ``out_dir`` (same file
    system, so rename is atomic), fsynced, and swapped in: by ``rename`` when ``out_dir``
    does not exist yet, by an atomic exchange when it does (falling back to two renames
    where the kernel lacks ``renameat2``). A reader therefore sees either the old set or
    the new set, never a mix. If the content is unchanged (ignoring the manifest's version
    and time) nothing is touched, so mtimes and ETags stay put.
    """
    out_dir = Path(out_dir)
    for name in artifacts:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise ValueError(f"invalid artefact name {name!r}")
    if _unchanged(out_dir, artifacts):
        return False
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        os.chmod(tmp, 0o755)
        for name, data in sorted(artifacts.items()):
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        if not out_dir.exists() and not out_dir.is_symlink():
            os.rename(tmp, out_dir)
        elif not _exchange(tmp, out_dir):
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.rename(out_dir, old / "d")
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        _fsync_dir(parent)
    finally:
        # After an exchange ``tmp`` holds the previous contents; after a failure, ours.
        shutil.rmtree(tmp, ignore_errors=True)
    return True
