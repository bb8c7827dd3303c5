"""Look-up cost of the relay's access map per map type (cidr, hash, lmdb), measured with
Postfix's own table code, at 1k, 10k and 100k entries, in one run.

    python bench/maps.py [--sizes 1000,10000,100000] [--keys 2000] [--repeat 5]

Why: ``RELAY_MAP_TYPE`` trades an install step (``postmap`` on the relay) for look-up
cost. A cidr table is read and parsed whole by every new smtpd process and then
searched entry by entry (the naive way, and the default); hash and lmdb are indexed
files opened in place. What a connection pays is therefore two figures:

* **open**: ``postmap -q - TYPE:FILE`` with one key on stdin: starting the tool,
  opening (cidr: reading and parsing) the table, one look-up. A new smtpd process pays
  the table part once, then serves up to ``max_use`` clients.
* **per look-up**: the same command with ``--keys`` keys on stdin, minus the one-key
  run, divided by the extra keys: what each connection's ``check_client_access`` costs
  once the table is open. Half the keys are listed addresses, half are not.

The figures are the median of ``--repeat`` runs. The files are the renderer's own
(``build_artifacts`` with the map type), IPv4 keys only: IPv6 addresses stay in a cidr
file for every type (see docs/relay-enforcement.md), so only IPv4 look-ups differ.
``postmap`` (the build on the relay) is timed too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from requests_app.artifacts_io import write_artifacts_atomically  # noqa: E402
from requests_app.postfix import MAP_TYPES  # noqa: E402
from requests_app.postfix import RelaySettings  # noqa: E402
from requests_app.postfix import ServerEntry  # noqa: E402
from requests_app.postfix import access_map_names  # noqa: E402
from requests_app.postfix import build_artifacts  # noqa: E402

GENERATED_AT = datetime(2025, 1, 1, tzinfo=UTC)
SETTINGS = RelaySettings(relay_host="relay.example.org")


def _v4(i: int) -> str:
    # 11.0.0.0/8: global addresses, as real entries have (the renderer's address policy
    # refuses private and documentation ranges). Nothing is ever sent to them.
    return f"11.{(i >> 16) & 255}.{(i >> 8) & 255}.{(i & 255) or 1}"


def _postmap() -> str:
    found = shutil.which("postmap") or shutil.which("postmap", path="/usr/sbin:/sbin")
    if found is None:
        sys.exit("postmap not found (apt-get install postfix postfix-lmdb)")
    return found


def _median_seconds(command: list[str], stdin: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(command, input=stdin, capture_output=True, text=True,
                              check=False)
        times.append(time.perf_counter() - started)
        if done.returncode not in (0, 1) or done.stderr:
            sys.exit(f"{' '.join(command)} failed: {done.stderr}")
    return statistics.median(times)


def measure(sizes: list[int], n_keys: int, repeat: int) -> list[dict[str, object]]:
    postmap = _postmap()
    work = Path(tempfile.mkdtemp(prefix="relaydesk-maps-"))
    try:
        conf = work / "conf"
        conf.mkdir()
        (conf / "main.cf").write_text("compatibility_level = 3.6\n")
        past = time.time() - 60  # Postfix tools wait ~2 s for a main.cf changed just now
        os.utime(conf / "main.cf", (past, past))
        rows = []
        for size in sizes:
            entries = [ServerEntry(i, f"h{i}.example.org", "ops", (_v4(i),))
                       for i in range(1, size + 1)]
            # half listed (spread over the whole table by a prime stride), half unlisted:
            # a cidr search stops at a hit and reads the whole list for a miss
            hits = [_v4(1 + (j * 7919) % size) for j in range(n_keys // 2)]
            misses = [_v4(size + 1 + j) for j in range(n_keys // 2)]
            keys = "".join(f"{hit}\n{miss}\n" for hit, miss in zip(hits, misses, strict=True))
            count = keys.count("\n")
            for map_type in MAP_TYPES:
                directory = work / f"{map_type}-{size}"
                write_artifacts_atomically(directory, build_artifacts(
                    entries, [], SETTINGS, version=1, generated_at=GENERATED_AT,
                    map_type=map_type))
                table = directory / access_map_names(map_type)[0]
                build = 0.0
                if map_type != "cidr":
                    started = time.perf_counter()
                    subprocess.run([postmap, "-c", str(conf), f"{map_type}:{table}"],
                                   check=True)
                    build = time.perf_counter() - started
                command = [postmap, "-c", str(conf), "-q", "-", f"{map_type}:{table}"]
                one = _median_seconds(command, hits[0] + "\n", repeat)
                many = _median_seconds(command, keys, repeat)
                found = subprocess.run(command, input=keys, capture_output=True, text=True,
                                       check=False).stdout.count("\n")
                rows.append({"entries": size, "type": map_type, "open_ms": one * 1e3,
                             "lookup_us": (many - one) / (count - 1) * 1e6,
                             "postmap_ms": build * 1e3, "keys": count, "found": found})
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--keys", type=int, default=2000, help="keys per look-up run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per median")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = measure(sizes, args.keys, args.repeat)
    print(f"{'entries':>8} {'type':>5} {'open (ms)':>10} {'per look-up (us)':>17} "
          f"{'postmap (ms)':>13} {'found/keys':>11}")
    for row in rows:
        print(f"{row['entries']:>8} {row['type']:>5} {row['open_ms']:>10.2f} "
              f"{row['lookup_us']:>17.2f} {row['postmap_ms']:>13.1f} "
              f"{row['found']:>5}/{row['keys']:<5}")
    print("\nopen = postmap -q - TYPE:FILE with one key (tool start + opening the table: a "
          "new smtpd pays the table part);\nper look-up = (run with all keys - run with one) "
          "/ (keys - 1); cidr is the naive way (whole file parsed, linear search).")
    print(f"reproduce: python bench/maps.py --sizes {args.sizes} --keys {args.keys} "
          f"--repeat {args.repeat}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
