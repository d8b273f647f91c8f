"""The tracking journal's own cost per record, at 1,000 and at 100,000 records (no server involved).

A training run that logs every step writes one record per step into its journal
(`ddpmlab.pipeline.journal`), and the outbox's thread reads the new ones back every pass while
`drain()` counts what is left ten times a second. Measured per journal length N:

  append     the writer's cost per record (json + one unbuffered write)
  pass       the reader's cost per record over a run: after every 200 appended records (one
             log-batch call), one pass reads what is unsent and counts what is left; the peer in
             the same run re-parses the whole file each pass (a fresh Journal, as before issue 40)
  sync       one fsync of the journal (done at each training checkpoint and the stage's end)

Printed: microseconds per record for each, and the peer / incremental ratio of the pass cost. A
flat per-record cost from 1,000 to 100,000 records means a pass costs what is new, not the length.

Run:  python benchmarks/journal_cost.py [--sizes 1000 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ddpmlab.pipeline.journal import Journal, new_pending_id

BATCH = 200  # records per log-batch call: one reader pass each


def record(run: str, step: int) -> dict:
    return {"op": "log", "run": run, "metrics": [["loss", 0.05 + step * 1e-6, 1_700_000_000_000 + step, step]]}


def measure(n: int, folder: Path) -> dict[str, float]:
    journal = Journal.create(folder, "http://127.0.0.1:5000")
    run = new_pending_id()
    append_s = read_s = peer_s = 0.0
    for start in range(0, n, BATCH):
        t0 = time.perf_counter()
        for step in range(start, min(start + BATCH, n)):
            journal.append(record(run, step))
        t1 = time.perf_counter()
        unsent = journal.unsent()  # the outbox's pass: what is new since the last one
        journal.mark_sent(unsent[-1][0] + 1)
        journal.unsent_count()  # drain()'s count
        t2 = time.perf_counter()
        append_s += t1 - t0
        read_s += t2 - t1
        t3 = time.perf_counter()  # the peer: unsent() and pending() each parsed the whole file, as before issue 40
        Journal(journal.path).records()
        Journal(journal.path).records()
        peer_s += time.perf_counter() - t3
    t4 = time.perf_counter()
    journal.sync()
    sync_s = time.perf_counter() - t4
    journal.close()
    return {"append_us": append_s / n * 1e6, "pass_us": read_s / n * 1e6, "peer_us": peer_s / n * 1e6, "sync_ms": sync_s * 1e3,
            "bytes_per_record": journal.path.stat().st_size / n}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    args = parser.parse_args()
    print(f"{'records':>8} {'append us/rec':>14} {'pass us/rec':>12} {'peer us/rec':>12} {'peer/ours':>10} {'fsync ms':>9} {'bytes/rec':>10}")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            got = measure(n, Path(tmp))
        print(f"{n:>8} {got['append_us']:>14.2f} {got['pass_us']:>12.2f} {got['peer_us']:>12.2f} "
              f"{got['peer_us'] / got['pass_us']:>10.1f} {got['sync_ms']:>9.2f} {got['bytes_per_record']:>10.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
