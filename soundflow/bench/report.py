"""The report harness of every benchmark: number formatting, progress bars, latency statistics,
Markdown tables, PNG plots (Agg backend), metrics.json + rows JSONL, one-line JSON for CLIs.

The benchmark modules (`proactive`, `tasks`, `asr`, `stability`, ...) measure; this module only
formats and writes what they measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def summary(result: dict) -> dict:
    """The result without per-event / per-item rows (what `--json` prints and metrics.json holds)."""
    return {k: v for k, v in result.items() if k not in ("events", "items")}


def print_json_last(metrics: dict) -> None:
    """Print `metrics` as one JSON object on one line; callers print nothing after it."""
    sys.stdout.flush()
    print(json.dumps(metrics, default=str, ensure_ascii=False), flush=True)


def print_json(result: dict) -> None:
    """`print_json_last` of the result's `summary` (what every benchmark's `json=True` prints)."""
    print_json_last(summary(result))


def pct(x) -> str:
    """A fraction as a percentage with one decimal, "–" for None."""
    return "–" if x is None else f"{100 * x:.1f}"


def num(x, nd: int = 2) -> str:
    """A number with `nd` decimals, "–" for None."""
    return "–" if x is None else f"{x:.{nd}f}"


def progress_bar(it, desc: str, show: bool = True):
    """A tqdm progress bar on stderr (hidden when `show` is false or stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(it, desc=desc, file=sys.stderr, disable=not show or None, leave=False)


def latency_stats(values: Sequence[float]) -> dict | None:
    """n, mean, median, p90, p99 and max of latencies in ms (None values dropped; None if empty)."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None
    a = np.asarray(v)
    return {"n": len(v), "mean": round(float(a.mean()), 2), "median": round(float(np.median(a)), 2),
            "p90": round(float(np.percentile(a, 90)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "max": round(float(a.max()), 2)}


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(x, pct: bool = True) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{100 * x:.1f}" if pct else f"{x:.2f}"
    return str(x)


def markdown(result: dict) -> str:
    """Markdown tables: headline per tier, per macro and per meso category accuracy."""
    tiers = result.get("tiers", {})
    title = "Proactive-Sound-Bench" + (f" — {result['name']}" if result.get("name") else "")
    lines = [f"# {title}", ""]
    if result.get("manifest"):
        lines += [f"Manifest: `{result['manifest']}`", ""]
    lines += [
        "| tier | n | accuracy % | balanced acc % | respond recall % | FPR % | TTT mean s | TTT median s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, m in tiers.items():
        ttt = m.get("time_to_trigger_s", {})
        lines.append(
            f"| {t} | {m['n']} | {_fmt(m['accuracy'])} | {_fmt(m['balanced_accuracy'])} | {_fmt(m['respond_recall'])} "
            f"| {_fmt(m['false_positive_rate'])} | {_fmt(ttt.get('mean'), False)} | {_fmt(ttt.get('median'), False)} |"
        )
    sem = {t: m["semantic"] for t, m in tiers.items() if "semantic" in m}
    if sem:
        lines += ["", "| tier | reply match % | semantic accuracy % | replies scored |", "|---|---|---|---|"]
        for t, s in sem.items():
            lines.append(f"| {t} | {_fmt(s['reply_match_rate'])} | {_fmt(s['semantic_accuracy'])} | {s['n_scored']} |")
    for level in ("per_macro", "per_meso"):
        cats = sorted({c for m in tiers.values() for c in m.get(level, {})})
        if not cats:
            continue
        lines += ["", f"## {'Macro' if level == 'per_macro' else 'Meso'} categories (accuracy %)", ""]
        lines += ["| category | " + " | ".join(f"{t} (n)" for t in tiers) + " |", "|---|" + "---|" * len(tiers)]
        for c in cats:
            cells = []
            for m in tiers.values():
                v = m.get(level, {}).get(c)
                cells.append(f"{_fmt(v['accuracy'])} ({v['n']})" if v else "–")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    for t, m in tiers.items():
        if m.get("n_unparsable") or m.get("n_missing"):
            lines += ["", f"{t}: {m.get('n_unparsable', 0)} unparsable and {m.get('n_missing', 0)} missing predictions "
                      f"(public-scorer accuracy over parsable rows: {_fmt(m.get('accuracy_public'))} %)"]
    if result.get("skipped"):
        lines += ["", f"Skipped {len(result['skipped'])} unreadable clips:", ""]
        lines += [f"- `{s['id']}`: {s['error']}" for s in result["skipped"]]
    return "\n".join(lines) + "\n"


def plot_categories(result: dict, path: Path, level: str = "per_macro") -> None:
    plt = pyplot()
    tiers = result["tiers"]
    cats = sorted({c for m in tiers.values() for c in m.get(level, {})})
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(cats) * max(1, len(tiers))), 4.5))
    width = 0.8 / max(1, len(tiers))
    x = np.arange(len(cats))
    for i, (t, m) in enumerate(tiers.items()):
        vals = [100 * m[level][c]["accuracy"] if c in m.get(level, {}) else 0 for c in cats]
        ax.bar(x + i * width, vals, width, label=t)
    ax.set_xticks(x + width * (len(tiers) - 1) / 2, cats, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title(f"Proactive-Sound-Bench accuracy by {'macro' if level == 'per_macro' else 'meso'} category")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(m: dict, tier: str, path: Path) -> None:
    """The RESPOND/IGNORE confusion of one Proactive-Sound-Bench tier (`m["confusion"]`)."""
    c = m["confusion"]
    plot_confusion_matrix([[c["tp"], c["fn"]], [c["fp"], c["tn"]]], ["RESPOND", "IGNORE"], ["responded", "silent"],
                          path, tier, xlabel="model")


def plot_confusion_matrix(matrix, rows: Sequence[str], cols: Sequence[str], path: str | Path, title: str = "",
                          xlabel: str = "predicted", ylabel: str = "gold") -> None:
    """A count matrix (gold rows × predicted columns) as a labelled heat map."""
    plt = pyplot()
    mat = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * max(2, len(cols)), 1.0 + 0.6 * max(2, len(rows))))
    ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(1, mat.max()) if mat.size else 1)
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if mat.size and v > mat.max() / 2 else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency_hist(latencies: Sequence[float], path: str | Path, title: str = "decision latency") -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    v = np.asarray([x for x in latencies if x is not None], dtype=float)
    ax.hist(v, bins=min(50, max(5, len(v) // 5)) if len(v) else 5, color="tab:blue")
    if len(v):
        ax.axvline(np.median(v), color="k", ls="--", lw=1, label=f"median {np.median(v):.1f} ms")
        ax.legend()
    ax.set_xlabel("latency_ms (chunk available → decision)")
    ax.set_ylabel("chunks")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_metrics_and_rows(result: dict, out: str | Path, key: str) -> Path:
    """`out/metrics.json` (the summary) and `out/<key>.jsonl` (the per-event/item rows)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary(result), indent=2, default=str))
    with open(out / f"{key}.jsonl", "w", encoding="utf-8") as f:
        for e in result.get(key, []):
            f.write(json.dumps(e, ensure_ascii=False, default=str) + "\n")
    return out


def write_report(result: dict, out: str | Path) -> Path:
    """Write report.md, metrics.json, events.jsonl and PNG plots into `out`; returns report.md."""
    out = write_metrics_and_rows(result, out, "events")
    md = markdown(result)
    if result.get("tiers"):
        plot_categories(result, out / "per_macro.png", "per_macro")
        plot_categories(result, out / "per_meso.png", "per_meso")
        md += "\n![per macro category](per_macro.png)\n\n![per meso category](per_meso.png)\n"
        for t, m in result["tiers"].items():
            plot_confusion(m, t, out / f"confusion_{t}.png")
            md += f"\n![confusion {t}](confusion_{t}.png)\n"
    (out / "report.md").write_text(md)
    return out / "report.md"


def write_task_report(result: dict, out: str | Path, md: str, plots: dict[str, Callable[[Path], None]] | None = None,
                      latencies: Sequence[float] | None = None) -> Path:
    """report.md (with `md` + plots), metrics.json (`summary`), items.jsonl; returns report.md.

    `plots` maps a PNG file name to a function drawing it; a latency histogram is added when
    `latencies` (or the result's `latency_ms` stats with a `_latencies` list) are given."""
    out = write_metrics_and_rows(result, out, "items")
    plots = dict(plots or {})
    if latencies:
        plots["latency_hist.png"] = lambda p: plot_latency_hist(latencies, p)
    lat = result.get("latency_ms")
    if lat:
        md += (f"\nDecision latency (ms, {lat['n']} chunks): mean {lat['mean']}, median {lat['median']}, "
               f"p90 {lat['p90']}, p99 {lat['p99']}, max {lat['max']}\n")
    for name, draw in plots.items():
        draw(out / name)
        md += f"\n![{Path(name).stem}]({name})\n"
    if result.get("skipped"):
        md += f"\nSkipped {len(result['skipped'])} unreadable clips:\n\n" + "".join(
            f"- `{s['id']}`: {s['error']}\n" for s in result["skipped"])
    (out / "report.md").write_text(md)
    return out / "report.md"
