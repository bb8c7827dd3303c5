#!/usr/bin/env python3
"""Relaydesk's two commands, for a fresh machine with only Python 3.11+.

    python3 dev.py run     # venv + pinned deps, migrate, demo users, Celery worker, web
    python3 dev.py test    # venv + pinned deps, then the whole test suite (pytest)

Both compile the translations first (``locale/*/LC_MESSAGES/*.po`` to ``.mo``, only
those whose ``.po`` is newer) with the standard library alone, so a machine without
GNU gettext still serves Bokmål and German; ``python3 dev.py messages`` does only that
(the Dockerfile runs it). The ``.mo`` files are build output and not committed.

Both create ``.venv`` and install ``requirements.txt`` the first time (and again
whenever that file changes). ``run`` uses the embedded default unless DATABASE_URL /
CELERY_BROKER_URL are set: SQLite in var/, kombu's filesystem broker in var/broker,
mail written to var/outbox.
"""

from __future__ import annotations

import ast
import hashlib
import os
import signal
import struct
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
REQUIREMENTS = ROOT / "requirements.txt"
STAMP = VENV / ".requirements.sha256"


def ensure_venv() -> None:
    """Create the venv and install pinned requirements when they changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may run under an older python3
        sys.exit("Relaydesk needs Python 3.11 or newer.")
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("installing pinned requirements ...", flush=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "-r", REQUIREMENTS], check=True)
    STAMP.write_text(digest)


LOCALE = ROOT / "locale"


def _po_entries(path: Path) -> dict[str, str]:
    """The translated, non-fuzzy entries of one ``.po`` file as ``.mo`` keys and values.

    What GNU msgfmt keeps: fuzzy and untranslated entries are left out (gettext then
    shows the English source), the header (``msgid ""``) is kept, a context is joined
    to its msgid with EOT and plural forms are NUL-joined, as ``gettext.GNUTranslations``
    reads them. Strings are C-escaped like Python literals (``ast.literal_eval``, as
    CPython's ``Tools/i18n/msgfmt.py`` does).
    """
    entries: dict[str, str] = {}
    entry: dict[str, object] = {}
    fuzzy = False
    field = ""

    def flush() -> None:
        nonlocal entry, fuzzy
        if "msgid" in entry:
            msgid = str(entry["msgid"])
            strs = entry.get("msgstr", {})
            assert isinstance(strs, dict)
            values = [strs[i] for i in sorted(strs)]
            if "msgid_plural" in entry:
                msgid += "\0" + str(entry["msgid_plural"])
            if "msgctxt" in entry:
                msgid = f"{entry['msgctxt']}\x04{msgid}"
            if values and all(values) and (not fuzzy or msgid == ""):
                entries[msgid] = "\0".join(values)
        entry, fuzzy = {}, False

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#,"):
            if "msgid" in entry:
                flush()
            fuzzy = "fuzzy" in line
            continue
        if not line or line.startswith("#"):
            continue  # comments, references, obsolete (#~) entries
        keyword, _, rest = line.partition(" ")
        if line.startswith('"'):
            keyword, rest = "", line
        elif keyword == "msgctxt" or (keyword == "msgid" and ("msgid" in entry
                                                              or "msgstr" in entry)):
            flush()  # a new entry begins (a context comes before its msgid)
        text = ast.literal_eval(rest) if rest else ""
        if keyword:
            field = keyword
        if field.startswith("msgstr"):
            index = int(field[7:-1]) if field.startswith("msgstr[") else 0
            strs = entry.setdefault("msgstr", {})
            assert isinstance(strs, dict)
            strs[index] = strs.get(index, "") + text
        else:
            entry[field] = str(entry.get(field, "")) + text
    flush()
    return entries


def _mo_bytes(entries: dict[str, str]) -> bytes:
    """The GNU ``.mo`` layout (magic, counts, two offset tables, then the strings)."""
    keys = sorted(entries)
    ids = b"".join(k.encode() + b"\0" for k in keys)
    strs = b"".join(entries[k].encode() + b"\0" for k in keys)
    start = 7 * 4 + 16 * len(keys)
    offsets, id_at, str_at = [], 0, 0
    for k in keys:
        kb, vb = k.encode(), entries[k].encode()
        offsets.append((len(kb), start + id_at, len(vb), start + len(ids) + str_at))
        id_at += len(kb) + 1
        str_at += len(vb) + 1
    header = struct.pack("Iiiiiii", 0x950412DE, 0, len(keys), 7 * 4, 7 * 4 + 8 * len(keys),
                         0, 0)
    table_ids = b"".join(struct.pack("ii", n, o) for n, o, _n, _o in offsets)
    table_strs = b"".join(struct.pack("ii", n, o) for _n, _o, n, o in offsets)
    return header + table_ids + table_strs + ids + strs


def compile_messages(root: Path = LOCALE, *, force: bool = False) -> list[Path]:
    """Compile every ``.po`` under ``root`` whose ``.mo`` is missing or older.

    Pure Python on purpose: the README's two commands must work on a machine with only
    Python (GNU gettext's msgfmt is for ``makemessages``, i.e. for people who change
    strings). Writes through a temporary file, so a reader never sees half a catalog.
    Returns the ``.mo`` files written.
    """
    written = []
    for po in sorted(root.glob("*/LC_MESSAGES/*.po")):
        mo = po.with_suffix(".mo")
        if not force and mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
            continue
        tmp = mo.with_suffix(".mo.tmp")
        tmp.write_bytes(_mo_bytes(_po_entries(po)))
        tmp.replace(mo)
        written.append(mo)
    return written


def messages(argv: list[str]) -> int:
    for mo in compile_messages(force="--force" in argv):
        print(f"compiled {mo.relative_to(ROOT)}", flush=True)
    return 0


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env, check=True)


def run(argv: list[str]) -> int:
    ensure_venv()
    compile_messages()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "onboarding.settings.local"}
    address = argv[0] if argv else "127.0.0.1:8000"
    manage("migrate", "--noinput", "-v", "0", env=env)
    manage("seed_demo", env=env)
    # A real worker process with embedded beat (the outbox sweep), on the same broker.
    worker = subprocess.Popen(
        [PY, "-m", "celery", "-A", "onboarding", "worker", "-B", "--pool=solo",
         "--loglevel=INFO", "-s", str(ROOT / "var" / "celerybeat-schedule")],
        cwd=ROOT, env=env,
    )
    web = subprocess.Popen([PY, "manage.py", "runserver", address, "--noreload"],
                           cwd=ROOT, env=env)
    print(f"\nRelaydesk on http://{address}/  (log in as 'requester' or 'approver')\n",
          flush=True)
    try:
        while worker.poll() is None and web.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (web, worker):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (web, worker):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


def test(argv: list[str]) -> int:
    ensure_venv()
    compile_messages()
    env = {**os.environ}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # pyproject.toml selects the test settings
    result = subprocess.run([PY, "-m", "pytest", *argv], cwd=ROOT, env=env)
    if result.returncode == 5:
        print("pytest collected no tests: that is a failure here.", file=sys.stderr)
        return 1
    return result.returncode


def main() -> int:
    commands = {"run": run, "test": test, "messages": messages}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
