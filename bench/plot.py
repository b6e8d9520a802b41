#!/usr/bin/python3
"""bench/plot.py -- turns the CSV the benchmark scripts write (--csv FILE) into PNGs.

  bench/plot.py results.csv -o fig.png

Rows from bench/swap_compare.sh (bench/sweep.sh runs it over local-memory
fractions) give the figure far-memory papers lead with: throughput against
the local-memory fraction, normalized to all-local memory, one line per mode
(farmem's software path, its transparent path, Linux swap), the median of the
repetitions. Needs python3-matplotlib (Debian); without it, prints the
apt-get command and exits 2.
"""
import argparse
import csv
import statistics
import sys
from collections import defaultdict


def die(msg, status=2):
    print(f"plot.py: {msg}", file=sys.stderr)
    sys.exit(status)


def load(paths):
    rows = []
    for p in paths:
        try:
            with open(p, newline="") as f:
                r = list(csv.DictReader(f))
        except OSError as e:
            die(f"cannot read {p}: {e.strerror}")
        if not r or "mode" not in r[0] or "local_pct" not in r[0] or "ops_per_sec" not in r[0]:
            die(f"{p} is not a benchmark CSV (no mode, local_pct, ops_per_sec columns); write it with "
                "bench/swap_compare.sh --csv FILE or bench/sweep.sh")
        rows += r
    return rows


LABELS = {"farmem-sw": "farmem (far pointers)", "farmem-hw": "farmem (transparent, handler thread)",
          "farmem-hw-signal": "farmem (transparent, SIGBUS)", "swap": "Linux swap (zram)"}


def throughput_vs_local(rows, out, title, log=False):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = defaultdict(list)  # (workload, mode, pct) -> ops/s
    for r in rows:
        by[(r["workload"], r["mode"], float(r["local_pct"]))].append(float(r["ops_per_sec"]))
    workloads = sorted({w for w, _, _ in by})
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        local = {p: statistics.median(v) for (ww, m, p), v in by.items() if ww == w and m == "local"}
        modes = sorted({m for ww, m, _ in by if ww == w and m != "local"})
        for m in modes:
            pts = sorted((p, statistics.median(v) / local[p]) for (ww, mm, p), v in by.items()
                         if ww == w and mm == m and p in local)
            if pts:
                ax.plot([p for p, _ in pts], [y for _, y in pts], marker="o", label=LABELS.get(m, m))
        ax.set_xlabel("local memory (% of working set)")
        ax.set_ylabel("throughput, normalized to all-local")
        ax.set_xlim(0, 105)
        if log:  # a microbenchmark with no work between accesses: far is orders of magnitude below local
            ax.set_yscale("log")
            ax.set_ylim(top=1.5)
        else:
            ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.set_title(f"{title or 'farmem-bench'}: {w}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot.py: wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="+", help="CSV files written by the benchmark scripts (--csv)")
    ap.add_argument("-o", "--output", default="fig.png", help="PNG to write (default fig.png)")
    ap.add_argument("--title", default="", help="title prefix")
    ap.add_argument("--log", action="store_true", help="logarithmic throughput axis")
    a = ap.parse_args()
    rows = load(a.csv)
    if not any(r["mode"] == "local" for r in rows):
        die("no all-local rows (mode local) to normalize against; swap_compare.sh writes them")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        die("matplotlib is missing; install it with: sudo apt-get install python3-matplotlib "
            "(or scripts/setup.sh --plot)")
    throughput_vs_local(rows, a.output, a.title, a.log)


if __name__ == "__main__":
    main()
