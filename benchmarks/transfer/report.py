"""Helpers for benchmarks/transfer/run.sh.

  report.py anchor-only SRC.db RES DST.db   copy SRC keeping only the records of tasks used at RES
  report.py table DIR A.db B.db             the markdown comparison from DIR/{independent,transfer,zero-search}.json
"""

import json
import sqlite3
import sys
from pathlib import Path


def anchor_only(src: str, resolution: int, dst: str) -> None:
    Path(dst).unlink(missing_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    with sqlite3.connect(dst) as conn:
        conn.execute("DELETE FROM records WHERE workload_id NOT IN (SELECT workload_id FROM tasks WHERE resolution=?)",
                     (resolution,))
        kept = conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    print(f"{dst}: {kept} records of the tasks used at {resolution}")


def per_resolution(db: str, anchor: int = 224) -> dict[int, dict]:
    """Trials and tuning wall-clock per resolution.

    Each record is charged the time since the record before it (search, build and
    measurement that produced it); a workload shared by several resolutions (the
    classifier) counts at the one nearest ``anchor``.
    """
    with sqlite3.connect(db) as conn:
        uses: dict[int, list[int]] = {}
        for wid, res in conn.execute("SELECT workload_id, resolution FROM tasks"):
            uses.setdefault(wid, []).append(res)
        records = conn.execute("SELECT workload_id, created FROM records ORDER BY created").fetchall()
    out: dict[int, dict] = {}
    previous = None
    for wid, created in records:
        res = min(uses[wid], key=lambda r: (abs(r - anchor), r))
        entry = out.setdefault(res, {"trials": 0, "wall_s": 0.0})
        entry["trials"] += 1
        entry["wall_s"] += created - previous if previous is not None else 0.0
        previous = created
    return out


def table(directory: str, db_a: str, db_b: str) -> str:
    runs = {name: json.loads(Path(directory, f"{name}.json").read_text())
            for name in ("independent", "transfer", "zero-search")}
    rows = {name: {r["resolution"]: r for r in report["rows"]} for name, report in runs.items()}
    a, b = per_resolution(db_a), per_resolution(db_b)
    lines = [
        "| res | independent ms | trials | tuning s | transfer ms | trials | tuning s | transfer / independent |"
        " zero-search ms | untuned ms | zero-search recovers |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in sorted(rows["independent"]):
        ind, tr, zs = (rows[n][res] for n in ("independent", "transfer", "zero-search"))
        # each run's tuned time relative to the untuned build measured beside it, so the runs compare
        # without the machine's drift between them
        rel = {n: rows[n][res]["tuned"]["median_ms"] / rows[n][res]["untuned"]["median_ms"] for n in rows}
        gain_full = 1 - rel["independent"]
        recovery = (1 - rel["zero-search"]) / gain_full if gain_full > 0 else float("nan")
        lines.append(
            f"| {res} | {ind['tuned']['median_ms']:.1f} | {a[res]['trials']} | {a[res]['wall_s']:.0f} "
            f"| {tr['tuned']['median_ms']:.1f} | {b[res]['trials']} | {b[res]['wall_s']:.0f} "
            f"| {rel['transfer'] / rel['independent']:.3f} | {zs['tuned']['median_ms']:.1f} "
            f"| {zs['untuned']['median_ms']:.1f} | "
            + (f"{recovery:.0%}" if gain_full > 0 else "n/a (no gain to recover)") + " |")
    total = [sum(x["trials"] for x in a.values()), sum(x["trials"] for x in b.values()),
             sum(x["wall_s"] for x in a.values()), sum(x["wall_s"] for x in b.values())]
    lines += ["", f"Totals: independent {total[0]} trials in {total[2] / 60:.1f} min; transfer {total[1]} trials "
              f"in {total[3] / 60:.1f} min."]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "anchor-only":
        anchor_only(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "table":
        header = Path(sys.argv[2], "HEADER.md")
        print(header.read_text() if header.is_file() else "", end="")
        print(table(sys.argv[2], sys.argv[3], sys.argv[4]))
        footer = Path(sys.argv[2], "FOOTER.md")
        print(footer.read_text() if footer.is_file() else "", end="")
    else:
        sys.exit(__doc__)
