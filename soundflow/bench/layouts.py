"""Public benchmark layouts read in place: LibriSpeech, CoVoST 2, MMAU (no conversion step).

`soundflow bench asr|s2tt|mcq` take a JSONL task manifest or one of these as it lies on disk.
The layout is detected from the path, or named with a prefix (`librispeech:PATH`,
`covost2:PATH?split=dev`, `mmau:PATH`, `jsonl:PATH`) or the CLI's `--layout`:

- **LibriSpeech** — a folder anywhere in `LibriSpeech/<split>/<speaker>/<chapter>/`, read
  recursively: each `<speaker>-<chapter>.trans.txt` holds lines `<utterance-id> <TRANSCRIPT>`,
  the audio is `<utterance-id>.flac` beside it. Rows: `{"id", "audio", "text"}` (ASR).
- **CoVoST 2** — a TSV with a header, tab-separated, unquoted (transcripts hold quotes), with
  columns `path` (the Common Voice clip's file name), `sentence` (source transcript),
  `translation` and optionally `split` / `client_id`; clips are looked up in `clips/` beside
  the TSV, beside its parent, or next to it (Common Voice's own layout). The target language
  comes from the file name `covost_v2.<src>_<tgt>[.<split>].tsv`. When there is a `split`
  column, rows of `split=test` are kept unless the spec names another (`?split=dev`, or
  `?split=all`). Rows: `{"id", "audio", "reference", "text"}` (S2TT; `text` = the transcript,
  so ASR runs on it too).
- **MMAU** — the benchmark's JSON list (`mmau-test-mini.json`, `mmau-test.json`): `{"id"?,
  "audio_id", "question", "choices", "answer", "task", "category", "sub-category", ...}`, with
  `audio_id` relative to the JSON's folder. Rows keep every field; `category` becomes the
  `task` (sound / music / speech: the paper's MMAU columns), the original is `mmau_category`.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from urllib.parse import parse_qsl

LAYOUTS = ("jsonl", "librispeech", "covost2", "mmau")
COVOST_DEFAULT_SPLIT = "test"
_COVOST_NAME = re.compile(r"covost_v2\.([a-z]{2,3}(?:-[A-Za-z]+)?)_([a-z]{2,3}(?:-[A-Za-z]+)?)", re.IGNORECASE)


def parse_spec(spec: str | Path) -> tuple[str, Path, dict]:
    """`[layout:]PATH[?k=v&...]` → (layout, path, options); the layout is detected when not named."""
    text = str(spec)
    layout = None
    head, sep, rest = text.partition(":")
    if sep and head in LAYOUTS:
        layout, text = head, rest
    opts = {}
    if "?" in text and layout in ("covost2", None):
        text, _, query = text.partition("?")
        opts = dict(parse_qsl(query))
    path = Path(text)
    return layout or detect(path), path, opts


def detect(path: Path) -> str:
    if path.is_dir():
        if next(path.rglob("*.trans.txt"), None) is not None:
            return "librispeech"
        raise ValueError(f"{path}: a folder, but no LibriSpeech *.trans.txt in it")
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "covost2"
    if suffix == ".json":
        return "mmau"
    return "jsonl"


def with_layout(spec: str, layout: str | None) -> str:
    """The CLI's `--layout`: prefix the spec (auto / None leaves it to detection)."""
    if layout in (None, "auto") or str(spec).split(":", 1)[0] in LAYOUTS:
        return str(spec)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of auto, {', '.join(LAYOUTS)}; not {layout!r}")
    return f"{layout}:{spec}"


def target_language(spec: str | Path) -> str | None:
    """CoVoST 2's target language from its file name (`covost_v2.en_de.test.tsv` → "de")."""
    m = _COVOST_NAME.search(Path(str(spec).split("?")[0]).name)
    return m.group(2).lower() if m else None


def read_layout(layout: str, path: Path, opts: dict | None = None) -> list[tuple[str, Path, dict]]:
    """(id, audio path, row) for every item of a public layout."""
    fn = {"librispeech": librispeech_rows, "covost2": covost2_rows, "mmau": mmau_rows}[layout]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {layout} file or folder")
    return fn(path, **(opts or {}))


def librispeech_rows(root: Path) -> list[tuple[str, Path, dict]]:
    out = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            uid, _, text = line.strip().partition(" ")
            if not uid:
                continue
            audio = trans.parent / f"{uid}.flac"
            out.append((uid, audio, {"id": uid, "audio": str(audio), "text": text.strip()}))
    return out


def _clips_dir(tsv: Path) -> Path:
    for d in (tsv.parent / "clips", tsv.parent.parent / "clips", tsv.parent):
        if d.is_dir() and (d != tsv.parent or any(d.glob("*.mp3"))):
            return d
    return tsv.parent / "clips"  # missing clips are reported per item by the bench


def covost2_rows(tsv: Path, split: str | None = None) -> list[tuple[str, Path, dict]]:
    clips = _clips_dir(tsv)
    with open(tsv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"path", "translation"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{tsv}: not a CoVoST 2 TSV (no column {sorted(missing)})")
        rows = list(reader)
    if "split" in (rows[0] if rows else {}) and split != "all":
        want = split or COVOST_DEFAULT_SPLIT
        rows = [r for r in rows if r.get("split") == want]
    elif split not in (None, "all") and rows and "split" not in rows[0]:
        print(f"[bench] {tsv}: no split column; split={split!r} ignored (the file is one split)", file=sys.stderr)
    out = []
    for r in rows:
        audio = clips / r["path"]
        uid = Path(r["path"]).stem
        out.append((uid, audio, {"id": uid, "audio": str(audio), "reference": r["translation"],
                                 "text": r.get("sentence", ""), "split": r.get("split")}))
    return out


def mmau_rows(path: Path) -> list[tuple[str, Path, dict]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):  # some copies wrap the list
        data = next((v for v in data.values() if isinstance(v, list)), [])
    out = []
    for i, r in enumerate(data):
        rel = r.get("audio_id") or r.get("audio") or r.get("path")
        if not rel or "choices" not in r:
            print(f"[bench] skipping MMAU row {i}: needs audio_id and choices", file=sys.stderr)
            continue
        audio = (path.parent / str(rel)).resolve()
        uid = str(r.get("id") or Path(str(rel)).stem)
        row = {**r, "id": uid, "audio": str(audio), "mmau_category": r.get("category"),
               "category": r.get("task") or r.get("category")}
        out.append((uid, audio, row))
    return out
