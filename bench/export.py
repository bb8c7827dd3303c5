"""Benchmark the relay config export: render + atomic write of N server entries, then
time real ``postmap -q`` look-ups on the result.

    python bench/export.py [--n 100000] [--accounts 1000] [--out DIR]

Why a separate, pure benchmark: the export runs after every approval and revocation, so it
must stay fast at the size of a large organisation (target: under 2 s for 100k entries on
the 2-core CI machine). This script measures only ``requests_app.postfix`` (no database),
so a regression there is visible on its own; a Django-backed variant that reads the active
entries through the selector can import :func:`make_entries`-shaped data and
:func:`run_export` from here.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from requests_app.artifacts_io import write_artifacts_atomically  # noqa: E402
from requests_app.postfix import ACCESS_MAP_NAME  # noqa: E402
from requests_app.postfix import AccountEntry  # noqa: E402
from requests_app.postfix import RelaySettings  # noqa: E402
from requests_app.postfix import ServerEntry  # noqa: E402
from requests_app.postfix import build_artifacts  # noqa: E402

__all__ = ("make_accounts", "make_entries", "run_export")

GENERATED_AT = datetime(2025, 1, 1, tzinfo=UTC)


# Global addresses, as real entries have: the renderer applies the address policy, which
# refuses private and documentation ranges (nothing is ever sent to these).
def _v4(i: int) -> str:
    # 11.0.0.0/8 holds 16M distinct host addresses: plenty.
    return f"11.{(i >> 16) & 255}.{(i >> 8) & 255}.{(i & 255) or 1}"


def _v6(i: int) -> str:
    return f"2a02:898:{(i >> 16) & 0xFFFF:x}:{i & 0xFFFF:x}::25"


def make_entries(n: int) -> Iterator[ServerEntry]:
    """Yield n server entries: a third IPv4 only, a third IPv6 only, a third both."""
    for i in range(1, n + 1):
        kind = i % 3
        if kind == 0:
            addresses: tuple[str, ...] = (_v4(i),)
        elif kind == 1:
            addresses = (_v6(i),)
        else:
            addresses = (_v4(i), _v6(i))
        yield ServerEntry(i, f"host{i}.team{i % 97}.example.org", f"team-{i % 97}", addresses)


def make_accounts(n: int) -> Iterator[AccountEntry]:
    """Yield n functional accounts, some sharing a sender domain."""
    for i in range(1, n + 1):
        senders = (f"noreply{i}@app{i}.example.org", f"@shared{i % 10}.example.org")
        yield AccountEntry(10_000_000 + i, f"svc-{i}", f"team-{i % 97}", senders)


def run_export(
    servers: Iterator[ServerEntry] | list[ServerEntry],
    accounts: Iterator[AccountEntry] | list[AccountEntry],
    out_dir: Path,
) -> tuple[dict[str, bytes], float, float, bool]:
    """Build and write; return (artefacts, build seconds, write seconds, changed)."""
    settings = RelaySettings(relay_host="relay.example.org")
    started = time.perf_counter()
    artifacts = build_artifacts(servers, accounts, settings, version=1, generated_at=GENERATED_AT)
    built = time.perf_counter()
    changed = write_artifacts_atomically(out_dir, artifacts)
    written = time.perf_counter()
    return artifacts, built - started, written - built, changed


def _postmap_timings(out_dir: Path, keys: list[str]) -> list[tuple[str, str, float]]:
    postmap = shutil.which("postmap") or shutil.which("postmap", path="/usr/sbin:/sbin")
    if postmap is None:
        return []
    # Debian's package installed with "No configuration" has no main.cf; give postmap one.
    config_dir = out_dir.parent / "postfix-conf"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "main.cf").write_text("compatibility_level = 3.6\n")
    # A main.cf modified in the last seconds makes Postfix tools wait ~2 s for it to settle.
    past = time.time() - 60
    os.utime(config_dir / "main.cf", (past, past))
    table = f"cidr:{out_dir / ACCESS_MAP_NAME}"
    results = []
    for key in keys:
        started = time.perf_counter()
        done = subprocess.run(
            [postmap, "-c", str(config_dir), "-q", key, table],
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - started
        answer = done.stdout.strip() or f"(exit {done.returncode}) {done.stderr.strip()}"
        results.append((key, answer, elapsed))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="server entries")
    parser.add_argument("--accounts", type=int, default=1000, help="functional accounts")
    parser.add_argument("--out", type=Path, help="output dir (default: a temporary one)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="relaydesk-bench-"))
    out_dir = args.out or work / "relay"
    try:
        # The entries are materialised first, as a selector's result would be, so the
        # timer and the memory figures cover only rendering and writing.
        started = time.perf_counter()
        servers = list(make_entries(args.n))
        accounts = list(make_accounts(args.accounts))
        make_s = time.perf_counter() - started
        # Timed run without tracemalloc (it slows allocation-heavy code 2-3x).
        gc.collect()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        artifacts, build_s, write_s, changed = run_export(servers, accounts, out_dir)
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sizes = {name: len(data) for name, data in artifacts.items()}
        total = sum(sizes.values())
        # Second export of the same state: must detect "unchanged" and write nothing.
        _, rebuild_s, recheck_s, changed_again = run_export(servers, accounts, out_dir)
        del artifacts
        gc.collect()

        # Separate run for the Python-heap peak of the export alone (entries already built).
        tracemalloc.start()
        run_export(servers, accounts, work / "traced")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        probes = [_v4(3), _v6(1), _v4(args.n - args.n % 3 or 3), "11.255.255.254", "2a02:898::1"]
        lookups = _postmap_timings(out_dir, probes)

        mib = 1024 * 1024
        print(f"entries: {args.n} servers, {args.accounts} accounts (made in {make_s:.3f} s)")
        print(f"build_artifacts: {build_s:.3f} s   write (fsync + swap): {write_s:.3f} s")
        print(f"total: {build_s + write_s:.3f} s  (target < 2 s)   changed={changed}")
        print(
            f"re-export same state: build {rebuild_s:.3f} s + compare {recheck_s:.3f} s, "
            f"changed={changed_again}"
        )
        for name, size in sorted(sizes.items()):
            print(f"  {name}: {size} bytes")
        print(f"output: {total} bytes ({total / mib:.1f} MiB)")
        print(f"tracemalloc peak: {peak / mib:.1f} MiB ({peak / total:.1f}x output)")
        print(
            f"ru_maxrss delta: {(rss_after - rss_before) / 1024:.1f} MiB "
            f"(process max {rss_after / 1024:.1f} MiB)"
        )
        if lookups:
            for key, answer, elapsed in lookups:
                print(f"postmap -q {key} cidr:...: {answer!r} in {elapsed * 1000:.0f} ms")
        else:
            print("postmap not installed: look-up timing skipped")
        print(
            f"reproduce: {sys.executable} bench/export.py --n {args.n} --accounts {args.accounts}"
        )
        return 0 if changed and not changed_again else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
