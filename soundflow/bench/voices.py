"""ASR-gate pass rate per TTS family, per voice and per augmentation (issue: many real voices).

Every voice of the installed families renders the same N sentences (drawn from the shipped
WordNet sentences, `recipes/sentences_en.txt`), each at a speed drawn from its family's
first-draw range, as a data build would; the renderings go through the data builder's ASR gate
(`asr_gate.AsrGate`: Whisper-base, packed windows, solo re-check of failures). A sentence passes when
its first rendering has WER ≤ 0.10 (no re-render: the pass rate is what a voice costs the gate).
Each augmentation (`soundflow.augment`) is applied alone, with the same renderings, one draw of
its parameters per voice (as per speaker in a build).

    soundflow bench voices [--families kokoro,piper,espeak] [--sentences 12]
                           [--augment none,speed,reverb,telephone,level] [--json]
"""

from __future__ import annotations

import json as _json
import time

import numpy as np

SPEEDS = {"kokoro": "KOKORO_SPEED", "espeak": "ESPEAK_SPEED"}


def _speed_range(family: str) -> tuple[float, float]:
    from soundflow import tts

    return getattr(tts, SPEEDS[family]) if family in SPEEDS else (0.9, 1.15)


def bench_voices(families: tuple[str, ...] = ("kokoro", "piper", "espeak"), sentences: int = 12, seed: int = 0,
                 augment: tuple[str, ...] = ("none",), voices: tuple[str, ...] | None = None,
                 json: bool = False) -> dict:
    from soundflow import tts
    from soundflow.asr_gate import AsrGate
    from soundflow.audio import SAMPLE_RATE
    from soundflow.augment import only
    from soundflow.tasks import RECIPES_DIR, read_sentences
    from soundflow.textnorm import normalize_text

    pool = read_sentences(RECIPES_DIR / "sentences_en.txt")
    rng = np.random.default_rng(seed)
    texts = [pool[int(i)] for i in rng.choice(len(pool), size=sentences, replace=False)]
    spoken = [normalize_text(t) for t in texts]
    gate = AsrGate()
    rows: list[dict] = []
    installed = tts.available_families()
    for fam in families:
        if fam not in installed:
            continue
        for vi, name in enumerate(tts.family_voices(fam)):
            if voices and f"{fam}:{name}" not in voices:
                continue
            vrng = np.random.default_rng([seed, vi, len(fam)])
            speeds = [tts.draw_speed(vrng, *_speed_range(fam)) for _ in spoken]
            voice = tts.Voice(fam, name)
            c0 = time.process_time()
            waves = [voice.render(s, speed=sp) for s, sp in zip(spoken, speeds)]
            render_cpu = time.process_time() - c0
            audio_s = sum(len(w) for w in waves) / SAMPLE_RATE
            for cond in augment:
                fx = None if cond == "none" else only(cond).draw(np.random.default_rng([seed, vi, 7]))
                ws = [fx.apply(w) for w in waves] if fx is not None else waves
                wers = gate.check(ws, spoken)
                rows.append({"voice": f"{fam}:{name}", "family": fam, "blend": "+" in name, "augment": cond,
                             "n": len(wers), "passed": int(sum(w <= gate.threshold for w in wers)),
                             "mean_wer": round(float(np.mean(wers)), 4),
                             "render_x_rt_per_cpu_s": round(audio_s / max(render_cpu, 1e-9), 2),
                             "failed": [t for t, w in zip(texts, wers) if w > gate.threshold]})
    summary = _summarize(rows)
    out = {"sentences": sentences, "seed": seed, "summary": summary, "voices": rows}
    if json:
        print(_json.dumps(out, indent=1))
    else:
        print(markdown(out))
    return out


def _summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        kind = "blends" if r["blend"] else "voices"
        groups.setdefault((r["family"], kind, r["augment"]), []).append(r)
    out = []
    for (fam, kind, cond), rs in sorted(groups.items()):
        n, p = sum(r["n"] for r in rs), sum(r["passed"] for r in rs)
        out.append({"family": fam, "kind": kind, "augment": cond, "voices": len(rs), "renderings": n,
                    "pass_rate": round(p / n, 4) if n else None,
                    "render_x_rt_per_cpu_s": round(float(np.median([r["render_x_rt_per_cpu_s"] for r in rs])), 2)})
    return out


def markdown(out: dict) -> str:
    lines = ["| family | voices | augmentation | renderings | pass rate | render × real time per CPU-s (median) |",
             "|---|---|---|---|---|---|"]
    for s in out["summary"]:
        lines.append(f"| {s['family']} | {s['voices']} {s['kind']} | {s['augment']} | {s['renderings']} | "
                     f"{100 * s['pass_rate']:.1f} % | {s['render_x_rt_per_cpu_s']} |")
    conds = sorted({r["augment"] for r in out["voices"]}, key=lambda c: (c != "none", c))
    lines += ["", "| voice | " + " | ".join(conds) + " |", "|---" * (len(conds) + 1) + "|"]
    by_voice: dict[str, dict] = {}
    for r in out["voices"]:
        by_voice.setdefault(r["voice"], {})[r["augment"]] = f"{r['passed']}/{r['n']}"
    for v, d in by_voice.items():
        lines.append(f"| {v} | " + " | ".join(d.get(c, "") for c in conds) + " |")
    return "\n".join(lines)
