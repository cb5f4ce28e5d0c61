"""Data specs: the one place that turns a `--data` / recipe `data:` string into stream samples.

It sits above the formats it dispatches to (`data.py`'s shards and manifests, `interop.py`'s
authors' JSONL), so neither of those imports the other's reader (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

from .data import StreamSample, read_jsonl, read_shards, synthetic_beeps
from .interop import is_authors_line, load_conversations, load_spec


def load_streams(spec: str | list[str] | tuple[str, ...]) -> list[StreamSample]:
    """A data spec: `synthetic:beep?n=20&chunks=8&seed=0`, a stream-sample JSONL manifest, a
    folder of tar shards (output of `soundflow data build`), or the authors' online-training /
    StreamAudio-2M JSONL (detected by its first line, or `authors:PATH?noise=DIR&seed=0`;
    see `interop.py`). A list of specs is their samples in order, ids prefixed by the spec's index (a recipe
    stage may mix sets)."""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("an empty list of data specs")
        out = []
        for k, one in enumerate(spec):
            for s in load_streams(one):
                s.id = f"{k}/{s.id}"  # two builds both hold "00000-0001-asr": ids key the feature cache
                out.append(s)
        return out
    if spec.startswith("authors:"):
        return load_spec(spec)
    if spec.startswith("synthetic:"):
        kind, _, query = spec[len("synthetic:"):].partition("?")
        if kind != "beep":
            raise ValueError(f"unknown synthetic set {kind!r} (known: beep)")
        kw = dict(p.split("=", 1) for p in query.split("&") if p)
        casts = {"n": int, "chunks": int, "seed": int, "freq": float, "reply": str, "chunk_ms": int}
        return synthetic_beeps(**{k: casts[k](v) for k, v in kw.items()})
    p = Path(spec)
    if p.is_dir():
        if any(p.glob("shard-*.stats.json")) and not (p / "summary.json").exists():
            # `data build` writes summary.json last: training on half a build would silently
            # fix a different data order (and mix) than the recipe's
            raise ValueError(f"{spec}: its data build has not finished (no summary.json); "
                             "run or resume `soundflow data build` first")
        samples = list(read_shards(p))
        if not samples:
            raise ValueError(f"{spec}: no finished *.tar shards")
        return samples
    if p.is_file():
        rows = read_jsonl(p)
        if rows and is_authors_line(rows[0]):
            return load_conversations(p)
        return [StreamSample.from_json(r, root=p.parent) for r in rows]
    raise FileNotFoundError(f"{spec}: no such manifest or shard folder")
