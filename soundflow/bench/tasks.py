"""Task benchmarks through the streaming model: speech translation (BLEU), multiple-choice audio QA
(MMAU style, accuracy) and spoken QA (VoiceBench style, LLM judge or reference overlap).

Every item is one stream: the clip is cut into chunks and heard by the runner under a task
instruction; the *answer* is all reply texts of the stream in chunk order, joined with spaces
(`common.reply_text`). An untrained model that never says `<response>` answers "" — scored as
it is (BLEU 0, a wrong MCQ answer, F1 0), never special-cased.

Manifests are JSONL, `audio` (or `path`) relative to the manifest's folder:

- S2TT: `{"id", "audio", "reference": str}` or `{"id", "audio", "references": [str, ...]}`.
- MCQ: `{"id", "audio", "question", "choices": [...], "answer": "B" | "(B)" | 1 | "choice text",
  "category"?}` (`task` / `sub-category` also read as the category).
- Spoken QA: `{"id", "audio", "reference"?, "question"? | "prompt"?}`.

Reports (Markdown + PNG + metrics.json + items.jsonl) are written by `report.py`.
"""

from __future__ import annotations

import json as _json
import os
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..audio import SAMPLE_RATE, AudioError, load_audio
from .common import ChunkResult, call_runner, make_runner, read_jsonl, reply_text, resolve_audio, runner_name
from .report import latency_stats, num, pct, plot_confusion_matrix, print_json, progress_bar, write_task_report

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LANGUAGES = {"fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "zh": "Chinese",
             "ja": "Japanese", "ko": "Korean", "ru": "Russian", "ar": "Arabic", "nl": "Dutch", "en": "English"}


# ---------------------------------------------------------------- manifests and running


@dataclass
class TaskItem:
    id: str
    path: Path
    row: dict


def load_task_manifest(manifest: str | Path, limit: int | None = None) -> list[TaskItem]:
    """Rows of a task manifest with `audio` (or `path`) resolved against the manifest's folder,
    or of a public layout read in place (LibriSpeech folder, CoVoST 2 TSV, MMAU JSON; `layouts.py`).

    `limit` keeps that many rows evenly spaced over the file (a manifest sorted by class still
    covers every class)."""
    from .layouts import parse_spec, read_layout

    layout, manifest, opts = parse_spec(manifest)
    if layout != "jsonl":
        return spaced([TaskItem(i, resolve_audio(p), r) for i, p, r in read_layout(layout, manifest, opts)], limit)
    root = manifest.parent
    items = []
    for r in read_jsonl(manifest):
        rel = r.get("audio") or r.get("path")
        if r.get("id") is None or not rel:
            print(f"[bench] skipping manifest row {r!r}: needs id and audio", file=sys.stderr)
            continue
        items.append(TaskItem(str(r["id"]), resolve_audio((root / str(rel)).resolve()), r))
    return spaced(items, limit)


def spaced(rows: list, limit: int | None) -> list:
    """`limit` rows evenly spaced over `rows` (all of them when limit is None or ≥ len)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    if limit <= 0:
        return []
    return [rows[int(i * len(rows) / limit)] for i in range(limit)]


class TaskRun:
    """Runs items through a runner with per-item instructions; collects latencies and skips."""

    def __init__(self, model, threshold: float = 0.5, chunk_ms: int = 400, **runner_kw):
        self.runner = make_runner(model, threshold=threshold, chunk_ms=chunk_ms, **runner_kw) if model is not None else None
        self.chunk_ms = chunk_ms
        self.latencies: list[float] = []
        self.skipped: list[dict] = []
        self.audio_s = 0.0
        self.wall_s = 0.0

    def load(self, item: TaskItem) -> np.ndarray | None:
        try:
            return load_audio(item.path)
        except AudioError as e:
            print(f"[bench] skipping {item.id}: {e}", file=sys.stderr)
            self.skipped.append({"id": item.id, "path": str(item.path), "error": str(e)})
            return None

    def __call__(self, wave: np.ndarray, instruction: str | None) -> tuple[str, list[ChunkResult]]:
        t0 = time.perf_counter()
        results = call_runner(self.runner, wave, self.chunk_ms, instruction)
        self.wall_s += time.perf_counter() - t0
        self.audio_s += len(wave) / SAMPLE_RATE
        self.latencies += [r.latency_ms for r in results if r.latency_ms is not None]
        return reply_text(results), results

    def info(self) -> dict:
        return {
            "runner": runner_name(self.runner) if self.runner is not None else None,
            "audio_s": round(self.audio_s, 2),
            "wall_s": round(self.wall_s, 2),
            "rtf": round(self.wall_s / self.audio_s, 4) if self.audio_s else None,
            "latency_ms": latency_stats(self.latencies),
        }


# ---------------------------------------------------------------- S2TT (BLEU)


def bleu_tokenizer(target: str) -> str:
    """sacrebleu tokenizer for a target language: "zh" for Chinese, "char" for Japanese/Korean
    (no MeCab here), "13a" (sacrebleu's default, WMT's) otherwise."""
    t = target.lower().split("-")[0]
    return {"zh": "zh", "ja": "char", "ko": "char", "th": "char"}.get(t, "13a")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], target: str = "fr") -> dict:
    """sacrebleu corpus BLEU (and chrF) of hypotheses against 1+ references per segment."""
    import sacrebleu

    n_refs = max((len(r) for r in references), default=1)
    streams = [[(r[i] if i < len(r) else None) for r in references] for i in range(n_refs)]
    tok = bleu_tokenizer(target)
    bleu = sacrebleu.corpus_bleu(list(hypotheses), streams, tokenize=tok)
    chrf = sacrebleu.corpus_chrf(list(hypotheses), streams)
    return {"bleu": bleu.score, "chrf": chrf.score, "tokenize": tok, "signature": str(bleu),
            "precisions": [round(p, 4) for p in bleu.precisions], "bp": bleu.bp,
            "sys_len": bleu.sys_len, "ref_len": bleu.ref_len}


def bench_s2tt(
    manifest: str | Path,
    model="mini",
    target: str = "fr",
    instruction: str | None = None,
    json: bool = False,
    out: str | Path | None = None,
    *,
    threshold: float = 0.5,
    chunk_ms: int = 400,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Streaming speech translation: corpus BLEU (sacrebleu) of each stream's joined replies.

    `instruction` defaults to "Translate what you hear into <language>." for `target`'s language.
    Returns {"bleu", "chrf", "n", "items": [...], ...}."""
    lang = LANGUAGES.get(target.lower(), target)
    instruction = instruction or f"Translate what you hear into {lang}."
    items = load_task_manifest(manifest, limit)
    run = TaskRun(model, threshold, chunk_ms)
    hyps, refs, rows = [], [], []
    for it in progress_bar(items, "s2tt", progress):
        ref = it.row.get("references") or it.row.get("reference")
        ref = [str(x) for x in ref] if isinstance(ref, list) else ([str(ref)] if ref else [])
        if not ref:
            print(f"[bench] skipping {it.id}: no reference", file=sys.stderr)
            continue
        w = run.load(it)
        if w is None:
            continue
        hyp, _ = run(w, instruction)
        hyps.append(hyp)
        refs.append(ref)
        rows.append({"id": it.id, "hypothesis": hyp, "references": ref})
    scores = corpus_bleu(hyps, refs, target) if hyps else {"bleu": None, "chrf": None}
    result = {"benchmark": "s2tt", "manifest": str(manifest), "target": target, "instruction": instruction,
              "n": len(rows), **scores, "n_empty": sum(not h for h in hyps), **run.info(), "skipped": run.skipped,
              "items": rows}
    if out:
        md = [f"# Speech translation (→ {lang})", "", f"Manifest: `{manifest}`  ", f"Instruction: \"{instruction}\"", "",
              "| n | BLEU | chrF | empty replies | tokenizer |", "|---|---|---|---|---|",
              f"| {result['n']} | {num(result['bleu'])} | {num(result['chrf'])} | {result['n_empty']} | {scores.get('tokenize', '–')} |",
              "", f"sacrebleu: `{scores.get('signature', '')}`"]
        write_task_report(result, out, "\n".join(md) + "\n", latencies=run.latencies)
    if json:
        print_json(result)
    return result


# ---------------------------------------------------------------- multiple-choice QA


def mcq_instruction(question: str, choices: Sequence[str]) -> str:
    """The question, its lettered choices "(A) ...", and a request for the letter."""
    lines = [question.strip(), *(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices)),
             "Answer with the letter of the correct choice."]
    return "\n".join(lines)


def _norm_text(s: str) -> str:
    s = re.sub(r"[^\w\s]", " ", str(s).lower())
    return " ".join(s.split())


def resolve_answer(answer, choices: Sequence[str]) -> int | None:
    """Gold answer → choice index: a letter ("B", "(B)", "b."), a 0-based int, or a choice's text."""
    if isinstance(answer, bool) or answer is None:
        return None
    if isinstance(answer, int):
        return answer if 0 <= answer < len(choices) else None
    a = str(answer).strip()
    m = re.fullmatch(r"[\(\[]?([A-Za-z])[\)\]\.:]?", a)
    if m and LETTERS.index(m.group(1).upper()) < len(choices):
        return LETTERS.index(m.group(1).upper())
    na = _norm_text(a)
    hits = [i for i, c in enumerate(choices) if _norm_text(c) == na]
    return hits[0] if len(hits) == 1 else None


def parse_choice(reply: str, choices: Sequence[str]) -> int | None:
    """The choice a free-text reply picks, or None. Rules, first that decides wins:

    1. an explicit phrase: "answer/option/choice (is) (B)" — the letter uppercase or in brackets;
    2. a leading letter: "B", "(B)", "B.", "B)", "B:", "b)" at the start of the reply (an
       uppercase letter followed by a space and a lowercase word, "A dog...", is an article);
    3. exactly one distinct bracketed letter "(C)" anywhere;
    4. choice text: the normalised (lowercase, no punctuation) text of exactly one choice occurs
       as whole words in the normalised reply; when several match, choices contained in another
       matching choice are dropped ("dog" vs "dog barking") before requiring one;
    5. exactly one distinct standalone uppercase letter not used as a word ("A dog").
    Letters beyond the number of choices never count.
    """
    text = (reply or "").strip()
    if not text:
        return None
    valid = LETTERS[: len(choices)]

    def idx(letter: str) -> int | None:
        letter = letter.upper()
        return valid.index(letter) if letter in valid else None

    m = re.search(r"(?i:\b(?:answer|option|choice)\b)(?:\s+(?i:is))?\s*[:\-]?\s*(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z']))", text)
    if m and (i := idx(m.group(1) or m.group(2))) is not None:
        return i
    m = re.match(r"\s*(?:[\(\[]([A-Za-z])[\)\]]|([A-Z])(?=[\.\):,\]]|\s*$)|([a-z])(?=\)|\s*$))", text)
    if m and (i := idx(next(g for g in m.groups() if g))) is not None:
        return i
    found = {idx(x) for x in re.findall(r"\(([A-Za-z])\)", text)} - {None}
    if len(found) == 1:
        return found.pop()
    nr = f" {_norm_text(text)} "
    norms = [_norm_text(c) for c in choices]
    hits = [i for i, c in enumerate(norms) if c and f" {c} " in nr]
    hits = [i for i in hits if not any(j != i and norms[i] != norms[j] and f" {norms[i]} " in f" {norms[j]} " for j in hits)]
    if len(set(norms[i] for i in hits)) == 1 and len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        return None
    found = set()
    for mm in re.finditer(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])", text):
        if re.match(r"\s+[a-z]", text[mm.end():]):  # "A dog", "I think": a word, not a letter
            continue
        found.add(idx(mm.group(1)))
    found.discard(None)
    return found.pop() if len(found) == 1 else None


def mcq_metrics(records: Sequence[dict]) -> dict:
    """Accuracy (unparsed counts as wrong), parse rate, per-category accuracy, confusion matrix."""
    n = len(records)
    correct = sum(r["pred"] is not None and r["pred"] == r["gold"] for r in records)
    per = defaultdict(lambda: [0, 0])
    for r in records:
        c = per[r.get("category") or "all"]
        c[0] += 1
        c[1] += r["pred"] is not None and r["pred"] == r["gold"]
    k = max([r["n_choices"] for r in records] or [0])
    conf = np.zeros((k, k + 1), dtype=int)  # last column: unparsed
    for r in records:
        if r["gold"] is not None:
            conf[r["gold"], k if r["pred"] is None else r["pred"]] += 1
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "parsed_rate": sum(r["pred"] is not None for r in records) / n if n else None,
        "chance": statistics.fmean(1 / r["n_choices"] for r in records) if n else None,
        "per_category": {c: {"n": a, "correct": b, "accuracy": b / a} for c, (a, b) in sorted(per.items())},
        "confusion": {"labels": list(LETTERS[:k]), "matrix": conf.tolist()},
    }


def bench_mcq(
    manifest: str | Path,
    model="mini",
    json: bool = False,
    out: str | Path | None = None,
    *,
    threshold: float = 0.5,
    chunk_ms: int = 400,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """MMAU-style multiple-choice audio QA: the instruction carries the question and lettered
    choices (`mcq_instruction`); the joined reply is parsed with `parse_choice`. Rows whose gold
    answer cannot be resolved are skipped (reported on stderr)."""
    items = load_task_manifest(manifest, limit)
    run = TaskRun(model, threshold, chunk_ms)
    records = []
    for it in progress_bar(items, "mcq", progress):
        choices = [str(c) for c in it.row.get("choices") or []]
        gold = resolve_answer(it.row.get("answer"), choices) if choices else None
        if gold is None:
            print(f"[bench] skipping {it.id}: needs choices and an answer among them", file=sys.stderr)
            continue
        w = run.load(it)
        if w is None:
            continue
        instr = mcq_instruction(str(it.row.get("question", "")), choices)
        reply, _ = run(w, instr)
        pred = parse_choice(reply, choices)
        cat = it.row.get("category") or it.row.get("task") or it.row.get("sub-category")
        records.append({"id": it.id, "category": str(cat) if cat else None, "gold": gold, "pred": pred,
                        "n_choices": len(choices), "reply": reply, "correct": pred == gold})
    result = {"benchmark": "mcq", "manifest": str(manifest), **mcq_metrics(records), **run.info(),
              "skipped": run.skipped, "items": records}
    if out:
        md = ["# Multiple-choice audio QA", "", f"Manifest: `{manifest}`", "",
              "| n | accuracy % | parsed % | chance % |", "|---|---|---|---|",
              f"| {result['n']} | {pct(result['accuracy'])} | {pct(result['parsed_rate'])} | {pct(result['chance'])} |",
              "", "| category | n | accuracy % |", "|---|---|---|"]
        md += [f"| {c} | {v['n']} | {pct(v['accuracy'])} |" for c, v in result["per_category"].items()]
        conf = result["confusion"]
        plots = {"confusion.png": lambda p: plot_confusion_matrix(
            conf["matrix"], conf["labels"], [*conf["labels"], "none"], p, "MCQ: gold (rows) vs parsed answer")}
        write_task_report(result, out, "\n".join(md) + "\n", plots, latencies=run.latencies)
    if json:
        print_json(result)
    return result


# ---------------------------------------------------------------- spoken QA


def token_f1(prediction: str, references: str | Sequence[str]) -> float:
    """SQuAD-style token F1 after `wer.normalize_for_wer` (the WER normaliser), best over references."""
    from ..wer import normalize_for_wer as norm

    refs = [references] if isinstance(references, str) else list(references)
    p = norm(prediction or "").split()
    best = 0.0
    for ref in refs:
        r = norm(ref or "").split()
        if not p and not r:
            best = max(best, 1.0)
            continue
        common = sum((Counter(p) & Counter(r)).values())
        if common == 0:
            continue
        prec, rec = common / len(p), common / len(r)
        best = max(best, 2 * prec * rec / (prec + rec))
    return best


JUDGE_PROMPT = """You are grading a voice assistant's answer to a spoken user request.
User request: {question}
Reference answer (may be empty): {reference}
Assistant answer: {reply}

Rate the assistant answer from 1 to 5: 1 = irrelevant, wrong or empty; 2 = mostly wrong; 3 = partly
correct or incomplete; 4 = correct with minor issues; 5 = correct, complete and helpful.
Reply with a JSON object {{"score": <1-5>, "reason": "<one sentence>"}}."""


class LLMJudge:
    """1–5 score from an OpenAI-compatible endpoint in JSON mode (temperature 0).

    Configured by `SOUNDFLOW_JUDGE_BASE_URL`, `SOUNDFLOW_JUDGE_MODEL` and
    `SOUNDFLOW_JUDGE_API_KEY` (or `OPENAI_API_KEY`; "EMPTY" for local servers)."""

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None):
        from openai import OpenAI

        self.base_url = base_url or os.environ.get("SOUNDFLOW_JUDGE_BASE_URL")
        self.model = model or os.environ.get("SOUNDFLOW_JUDGE_MODEL")
        if not self.base_url or not self.model:
            raise ValueError("LLM judge needs SOUNDFLOW_JUDGE_BASE_URL and SOUNDFLOW_JUDGE_MODEL")
        key = api_key or os.environ.get("SOUNDFLOW_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = OpenAI(base_url=self.base_url, api_key=key)

    def __call__(self, question: str, reference: str, reply: str) -> float | None:
        try:
            resp = self.client.chat.completions.create(
                model=self.model, temperature=0, response_format={"type": "json_object"},
                messages=[{"role": "user", "content": JUDGE_PROMPT.format(
                    question=question or "(audio only)", reference=reference or "", reply=reply or "(no answer)")}],
            )
            score = float(_json.loads(resp.choices[0].message.content or "{}")["score"])
        except Exception as e:  # noqa: BLE001 — one failed call leaves the item unscored
            print(f"[bench] judge failed: {type(e).__name__}: {e}", file=sys.stderr)
            return None
        return min(5.0, max(1.0, score))


def _judge_from_env() -> bool:
    return bool(os.environ.get("SOUNDFLOW_JUDGE_BASE_URL") and os.environ.get("SOUNDFLOW_JUDGE_MODEL"))


def bench_spoken_qa(
    manifest: str | Path,
    model="mini",
    judge: str | Callable[[str, str, str], float | None] | None = None,
    json: bool = False,
    out: str | Path | None = None,
    *,
    instruction: str | None = None,
    threshold: float = 0.5,
    chunk_ms: int = 400,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """VoiceBench-style spoken QA: the question is the audio; the joined reply is scored.

    judge: None → the LLM judge when `SOUNDFLOW_JUDGE_BASE_URL` and `SOUNDFLOW_JUDGE_MODEL` are
    set, else "f1"; "llm" → the LLM judge (1–5, `mean_score`; VoiceBench's ×20 scale as
    `score_100`); "f1" → token F1 against `reference` (0–1, `mean_f1`; rows without a
    reference are unscored); or a callable (question, reference, reply) → 1–5.
    `instruction` is the text prefix (default none: the audio is the request)."""
    if judge is None:
        judge = "llm" if _judge_from_env() else "f1"
    kind = "f1" if judge == "f1" else "llm"
    scorer = LLMJudge() if judge == "llm" else judge
    items = load_task_manifest(manifest, limit)
    run = TaskRun(model, threshold, chunk_ms)
    rows = []
    for it in progress_bar(items, "spoken-qa", progress):
        w = run.load(it)
        if w is None:
            continue
        reply, _ = run(w, instruction)
        ref = it.row.get("reference") or it.row.get("references") or ""
        question = str(it.row.get("question") or it.row.get("prompt") or "")
        if kind == "f1":
            score = token_f1(reply, ref) if ref else None
        else:
            score = scorer(question, ref if isinstance(ref, str) else " | ".join(ref), reply)
        rows.append({"id": it.id, "reply": reply, "reference": ref, "score": score})
    scored = [r["score"] for r in rows if r["score"] is not None]
    mean = statistics.fmean(scored) if scored else None
    result = {"benchmark": "spoken-qa", "manifest": str(manifest), "scorer": "token-f1" if kind == "f1" else
              getattr(scorer, "model", getattr(scorer, "__name__", "judge")), "n": len(rows), "n_scored": len(scored),
              "n_empty": sum(not r["reply"] for r in rows)}
    if kind == "f1":
        result["mean_f1"] = mean
    else:
        result["mean_score"] = mean
        result["score_100"] = mean * 20 if mean is not None else None
    result.update({**run.info(), "skipped": run.skipped, "items": rows})
    if out:
        head = "mean token F1" if kind == "f1" else "mean judge score (1–5)"
        md = ["# Spoken QA", "", f"Manifest: `{manifest}`  ", f"Scorer: {result['scorer']}", "",
              f"| n | scored | empty replies | {head} |", "|---|---|---|---|",
              f"| {result['n']} | {result['n_scored']} | {result['n_empty']} | {num(mean, 3)} |"]
        write_task_report(result, out, "\n".join(md) + "\n", latencies=run.latencies)
    if json:
        print_json(result)
    return result
