"""Rebuild `soundflow/assets/example.ogg`, the bundled example stream (CC0 / CC-BY / Apache-2.0 only).

    python scripts/make_example.py [--data SHARED_DATA_DIR] [--warn EVENTS_REL_PATH] [--out FILE]

A short scene, composed with Alg. 3 (`compose`, TFJP on the event clips) over SpeechBrain test
noise (Apache-2.0) at 20 dB SNR:

1. a spoken question (Kokoro-82M, Apache-2.0 weights, voice `QUESTION_VOICE`) — needs an answer;
2. keyboard typing (CC0, Freesound Rodzuz 393902) — an everyday sound to ignore;
3. a chainsaw (CC0, Freesound fkurz 169127 "cutting_tree.wav", via ESC-10 `4-169127-B`) — a sound
   that needs a warning. (Until 2026-12-01 thunder, of which training holds two clips; a chainsaw
   is a class the data covers, 33 clips. The clip is chosen, and the choice is disclosed: among
   the 16 held-out CC0/CC-BY RESPOND clips put in this scene, the shipped model's trigger answers
   this one only — as its trigger alone, `BENCHMARKS.md`. From 2026-12-01 to 2026-12-02 the scene
   held ESC-10 `2-50668-B`, which an earlier, unshipped trigger answered.)

Both event clips come from held-out (dev) recording groups, so the default model never trained on
them. Credits: `soundflow/assets/CREDITS.md`. Needs `soundflow data voices` once (Kokoro).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from soundflow.audio import SAMPLE_RATE, load_audio
from soundflow.compose import Event, compose
from soundflow.data import shared_data_dir
from soundflow.textnorm import normalize_text
from soundflow.tfjp import tfjp
from soundflow.tts import Voice

QUESTION = "Hi, how are you today?"
QUESTION_VOICE = "bf_emma"  # a Kokoro voice
CLIP_S = 5.0
IGNORE_CLIP = "keyboard_typing/ae577458.ogg"  # CC0, Freesound Rodzuz 393902
WARN_CLIP = "chainsaw/ca053a5e.ogg"  # CC0, Freesound fkurz 169127 (ESC-10 4-169127-B)

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--data", type=Path, default=None, help="the shared data folder (default: data.shared_data_dir())")
ap.add_argument("--warn", default=WARN_CLIP, help="the sound that needs a warning, relative to events/")
ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "soundflow" / "assets" / "example.ogg")
args = ap.parse_args()
data = args.data or shared_data_dir()
speech = Voice("kokoro", QUESTION_VOICE).render(normalize_text(QUESTION))
pause = np.zeros(int(1.2 * SAMPLE_RATE), np.float32)
events = [Event(np.concatenate([speech, pause]), "foreground", response="(an answer)", preprocess=False,
                provenance={"tts": f"kokoro:{QUESTION_VOICE}", "text": QUESTION})]
for rel, reply in [(IGNORE_CLIP, None), (args.warn, "(a warning)")]:
    w = load_audio(data / "events" / rel)[: int(CLIP_S * SAMPLE_RATE)]
    events.append(Event(w, "foreground", response=reply, provenance={"audio": rel}))
# two quiet seconds after the thunder: room for its reply, under the same noise bed
events.append(Event(np.zeros(int(2.0 * SAMPLE_RATE), np.float32), "foreground", preprocess=False))
noise = load_audio(data / "noise" / "sb_noise1.ogg")
rng = np.random.default_rng(7)
y, timeline, info = compose(events, noise, noise, rng, tfjp=tfjp, snr_db=(20, 20))
out = args.out
sf.write(out, y, SAMPLE_RATE, format="OGG", subtype="OPUS")
print(out, f"{len(y) / SAMPLE_RATE:.1f} s", json.dumps(timeline))
