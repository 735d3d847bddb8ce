"""The full profile's rows, kept across runs, so that ``make chaos`` can run in parts (``CHAOS='-k zombie'``).

The full profile takes longer than one sitting. Every full-profile session stores its rows in
``bench/results/chaos.json``, each under its scenario with the digest of the ``worker/`` sources it ran
against, the digest of the verifier that judged it, and when; a later run of the same scenario replaces it.
``python tests/chaos/ledger.py`` prints the table of every stored row and says which ran against other sources
than the ones here now, or were judged by another verifier (a row counts for the code it ran against and the
verifier that judged it, and only for those).
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LEDGER = ROOT / "bench" / "results" / "chaos.json"
VERIFIER = ROOT / "tests" / "integration" / "runtime" / "verifier.py"


def worker_digest() -> str:
    """The first 12 hex digits of a sha256 over every file of ``worker/`` (paths and contents)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "worker").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def verifier_digest() -> str:
    """The first 12 hex digits of the sha256 of the verifier (``tests/integration/runtime/verifier.py``)."""
    return hashlib.sha256(VERIFIER.read_bytes()).hexdigest()[:12]


JUDGED_BY = verifier_digest()  # at import, when the session starts and imports the verifier too


def store(rows: list[Any], started_on: str) -> str | None:
    """Keep the rows (``chaos_run.Row``) whose checks passed, replacing earlier rows of their scenarios,
    stamped with ``started_on``, the digest of the sources when the session began; None, or why nothing was
    kept.

    A failed scenario (a failed check, a run that timed out) keeps no row: its partial sums would read as a
    clean result. The session's own table still shows it, marked failed. Nor does a session during which
    ``worker/`` changed: replicas started later ran other sources than the earlier ones.
    """
    if (now := worker_digest()) != started_on:
        return f"no row stored: worker/ changed during the session ({started_on} at its start, {now} now)"
    LEDGER.parent.mkdir(parents=True, exist_ok=True)
    # Sessions on two stacks may end together: the lock keeps one from writing over the other's rows.
    with open(LEDGER.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = _load()
        at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        stamp = {"worker": started_on, "verifier": JUDGED_BY, "at": at}
        for row in (r for r in rows if r.passed):
            kept[row.scenario] = dataclasses.asdict(row) | stamp
        LEDGER.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    return None


def _load() -> dict[str, dict[str, Any]]:
    return json.loads(LEDGER.read_text()) if LEDGER.exists() else {}


def main() -> int:
    sys.path[:0] = [str(Path(__file__).parent), str(ROOT / "tests" / "integration" / "runtime"), str(ROOT)]
    from chaos_run import Row, render

    kept = _load()
    now, judge = worker_digest(), verifier_digest()
    fields = {f.name for f in dataclasses.fields(Row)}
    rows = [Row(**{k: v for k, v in kept[name].items() if k in fields}) for name in sorted(kept)]
    print(f"chaos, full profile: {len(rows)} scenarios; worker/ sources here: {now}; verifier: {judge}")
    for line in render(rows) if rows else ["no row stored yet: run make chaos"]:
        print(line)
    print("stored:")
    for name in sorted(kept):
        row = kept[name]
        older = "" if row["worker"] == now else "  (other worker/ sources than these)"
        if row.get("verifier") != judge:
            older += "  (judged by another verifier)"
        print(f"  {name}: worker {row['worker']}, verifier {row.get('verifier', '-')}, {row['at']}{older}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
