#!/usr/bin/python3
"""bench/plot.py -- turns the CSV the benchmark scripts write into PNGs.

  bench/plot.py results.csv -o fig.png

What it draws depends on the CSV's columns (all files given must be of one kind):
- bench/swap_compare.sh --csv (bench/sweep.sh runs it over local-memory
  fractions): the figure far-memory papers lead with, throughput against the
  local-memory fraction, normalized to all-local memory, one line per mode
  (farmem's software path, its transparent path, Linux swap), the median of
  the repetitions.
- farmem-bench --latency-csv (bench/latency_cdf.sh runs it per transport):
  fault-latency CDFs, one curve per transport (and per mode, workload or local
  fraction when those differ).
- bench/apps_compare.sh --out: unmodified programs as grouped bars, one group
  per program, one bar per configuration (swap, farmem-run), the median wall
  time normalized to the program's plain run; a panel per memory budget.
Needs python3-matplotlib (Debian); without it, prints the apt-get command and
exits 2.
"""
import argparse
import csv
import statistics
import sys
from collections import defaultdict


def die(msg, status=2):
    print(f"plot.py: {msg}", file=sys.stderr)
    sys.exit(status)


# The kinds of CSV: the columns that tell each one, and what writes it.
KINDS = {
    "throughput": ({"mode", "local_pct", "ops_per_sec"}, "bench/swap_compare.sh --csv FILE or bench/sweep.sh"),
    "latency": ({"transport", "mode", "workload", "local_pct", "latency_ns", "cumulative_fraction"},
                "farmem-bench --latency-csv FILE or bench/latency_cdf.sh"),
    "apps": ({"program", "config", "point_pct", "rep", "wall_s", "status"}, "bench/apps_compare.sh --out FILE"),
}


NUMBERS = {"throughput": ("local_pct", "ops_per_sec"), "latency": ("local_pct", "latency_ns", "cumulative_fraction"),
           "apps": ("point_pct", "rep", "wall_s")}  # wall_s: runs that finished


def kind_of(columns):
    for kind, (need, _) in KINDS.items():
        if need <= set(columns):
            return kind
    return None


def load(paths):
    rows, kind = [], None
    for p in paths:
        try:
            with open(p, newline="") as f:
                r = list(csv.DictReader(f))
        except OSError as e:
            die(f"cannot read {p}: {e.strerror}")
        k = kind_of(r[0].keys()) if r else None
        if k is None:
            die(f"{p} is not a benchmark CSV (no rows, or not the columns of "
                + "; ".join(w for _, w in KINDS.values()) + "); write it with one of those")
        if kind and k != kind:
            die(f"{p} holds {k} rows but the files before it {kind} rows; plot one kind at a time")
        kind = k
        for row in r:  # the numbers each kind draws, checked before matplotlib loads
            for key in NUMBERS[k]:
                if key != "wall_s" or row.get("status") == "ok":
                    number(row, key, f" of {p}")
        rows += r
    return kind, rows


def number(r, key, path_hint=""):
    try:
        return float(r[key])
    except (TypeError, ValueError):
        die(f"{key}={r.get(key)!r} is not a number in row {r}{path_hint}; fix or drop that row")


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


def latency_cdf(rows, out, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("transport", "mode", "workload", "local_pct")
    curves = defaultdict(list)  # configuration -> [(latency_ns, cumulative fraction)]
    for r in rows:
        curves[tuple(r[k] for k in keys)].append((number(r, "latency_ns"), number(r, "cumulative_fraction")))
    # Name a curve by the parts of its configuration that differ between curves (the transport always).
    varies = [i for i in range(len(keys)) if i == 0 or len({c[i] for c in curves}) > 1]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for cfg in sorted(curves):
        pts = sorted(curves[cfg])
        label = ", ".join((cfg[i] + "% local") if keys[i] == "local_pct" else cfg[i] for i in varies)
        # A bucket's row gives the fraction of faults at or below it: a step at its lower bound.
        ax.step([x / 1000 for x, _ in pts], [y for _, y in pts], where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("fault latency (µs, log scale)")
    ax.set_ylabel("fraction of faults")
    ax.set_ylim(0, 1.02)
    for q in (0.5, 0.99):
        ax.axhline(q, color="grey", lw=0.6, ls=":")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "fault latency per transport")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot.py: wrote {out}")


APP_LABELS = {"swap": "Linux swap (zram)", "farmem": "farmem-run"}
NOT_DONE = {"oom": "OOM-killed", "timeout": "timed out", "failed": "failed", "signal": "killed", "skipped": "skipped"}


def apps_bars(rows, out, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Repetition 0 is apps_compare's reference run (not in its medians either).
    runs = [r for r in rows if r["rep"] not in ("", "0")]
    done = [r for r in runs if r["status"] == "ok"]
    programs = list(dict.fromkeys(r["program"] for r in runs))
    plain = {p: statistics.median(v) for p in programs
             if (v := [number(r, "wall_s") for r in done if r["program"] == p and r["config"] == "plain"])}
    if not plain:
        die("no finished plain runs (config plain, status ok) to normalize against; apps_compare.sh writes them")
    configs = [c for c in ("swap", "farmem") if any(r["config"] == c for r in runs)]
    configs += sorted({r["config"] for r in runs} - set(configs) - {"plain"})
    points = sorted({int(number(r, "point_pct")) for r in runs if r["config"] != "plain"})
    if not points or not configs:
        die("no swap or farmem runs to draw next to the plain ones")
    fig, axes = plt.subplots(1, len(points), figsize=(max(5, 1.3 * len(programs) + 2) * len(points), 4), squeeze=False)
    width = 0.8 / len(configs)
    for ax, pt in zip(axes[0], points):
        # Per configuration: bars (x, height normalized to plain) and runs that never finished (x, why).
        drawn = []
        for j, c in enumerate(configs):
            xs, ys, missing = [], [], []
            for i, p in enumerate(programs):
                x = i + (j - (len(configs) - 1) / 2) * width
                sel = [r for r in runs if r["program"] == p and r["config"] == c and int(number(r, "point_pct")) == pt]
                ok = [number(r, "wall_s") for r in sel if r["status"] == "ok"]
                if ok and p in plain:
                    xs.append(x)
                    ys.append(statistics.median(ok) / plain[p])
                elif sel:  # ran, and never finished (timeout, OOM, failure)
                    missing.append((x, sel[0]["status"]))
            drawn.append((c, xs, ys, missing))
        top = max([1.0] + [y for _, _, ys, _ in drawn for y in ys])
        for j, (c, xs, ys, missing) in enumerate(drawn):
            color = f"C{j}"
            bars = ax.bar(xs, ys, width, label=APP_LABELS.get(c, c), color=color)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
            for x, why in missing:  # an empty, hatched bar saying why it is empty
                ax.bar([x], [top * 0.3], width, fill=False, hatch="//", edgecolor=color, linewidth=0.5)
                ax.text(x, top * 0.02, NOT_DONE.get(why, why), rotation=90, ha="center", va="bottom", fontsize=8)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlim(-0.6, len(programs) - 0.4)
        ax.set_xticks(range(len(programs)))
        ax.set_xticklabels(programs)
        ax.set_ylabel("wall time, normalized to plain")
        ax.set_ylim(0, top * 1.15)
        ax.set_title(f"{title or 'unmodified programs'}: budget {pt}% of plain peak RSS", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot.py: wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="+", help="CSV files written by the benchmark scripts (one kind)")
    ap.add_argument("-o", "--output", default="fig.png", help="PNG to write (default fig.png)")
    ap.add_argument("--title", default="", help="title prefix")
    ap.add_argument("--log", action="store_true", help="logarithmic throughput axis (throughput figure)")
    a = ap.parse_args()
    kind, rows = load(a.csv)
    if kind == "throughput" and not any(r["mode"] == "local" for r in rows):
        die("no all-local rows (mode local) to normalize against; swap_compare.sh writes them")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        die("matplotlib is missing; install it with: sudo apt-get install python3-matplotlib "
            "(or scripts/setup.sh --plot)")
    if kind == "latency":
        latency_cdf(rows, a.output, a.title)
    elif kind == "apps":
        apps_bars(rows, a.output, a.title)
    else:
        throughput_vs_local(rows, a.output, a.title, a.log)


if __name__ == "__main__":
    main()
