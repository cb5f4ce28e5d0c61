"""Reports for bench results: Markdown tables, PNG plots (Agg backend), one-line JSON for CLIs."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summary(result: dict) -> dict:
    """The result without per-event / per-item rows (what `--json` prints and metrics.json holds)."""
    return {k: v for k, v in result.items() if k not in ("events", "items")}


def print_json_last(metrics: dict) -> None:
    """Print `metrics` as one JSON object on one line; callers print nothing after it."""
    sys.stdout.flush()
    print(json.dumps(metrics, default=str, ensure_ascii=False), flush=True)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    c = m["confusion"]
    mat = np.array([[c["tp"], c["fn"]], [c["fp"], c["tn"]]])
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(mat, cmap="Blues")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > mat.max() / 2 else "black")
    ax.set_xticks([0, 1], ["responded", "silent"])
    ax.set_yticks([0, 1], ["RESPOND", "IGNORE"])
    ax.set_xlabel("model")
    ax.set_ylabel("gold")
    ax.set_title(f"{tier}")
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
