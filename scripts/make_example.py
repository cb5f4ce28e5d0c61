"""Rebuild `soundflow/assets/example.ogg`, the bundled example stream (CC0 / CC-BY / Apache-2.0 only).

    python scripts/make_example.py [SHARED_DATA_DIR]

keyboard typing (CC0, Freesound Rodzuz 393902) → jazz guitar (CC0, Freesound Sub-d 49658) →
thunder (CC-BY, Freesound InspectorJ 360328), 6 s each after TFJP, over SpeechBrain test noise
(Apache-2.0) at 20 dB SNR. Credits: `soundflow/assets/CREDITS.md`.
"""

import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from soundflow.audio import load_audio
from soundflow.compose import Event, compose
from soundflow.data import shared_data_dir
from soundflow.tfjp import tfjp

data = Path(sys.argv[1]) if len(sys.argv) > 1 else shared_data_dir()
clips = [("keyboard_typing/ae577458.ogg", None), ("instrument/c79a0cbb.ogg", None),
         ("thunder/cd4448ae.ogg", "I hear thunder; a storm may be close.")]
events = []
for rel, reply in clips:
    w = load_audio(data / "events" / rel)[: 6 * 16000]
    events.append(Event(w, "foreground", response=reply, provenance={"audio": rel}))
noise = load_audio(data / "noise" / "sb_noise1.ogg")
rng = np.random.default_rng(7)
y, timeline, info = compose(events, noise, noise, rng, tfjp=tfjp, snr_db=(20, 20))
out = Path(__file__).resolve().parents[1] / "soundflow" / "assets" / "example.ogg"
sf.write(out, y, 16000, format="OGG", subtype="OPUS")
print(out, f"{len(y) / 16000:.1f} s", json.dumps(timeline))
