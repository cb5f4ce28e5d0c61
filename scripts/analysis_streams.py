"""Write a few real-audio streams (StreamAudio-2M line format) for `soundflow analyze`.

Two tasks, as the paper traces its analyses per task: `asr` (spoken digits, the reply is the
transcript) and `proactive` (sound events; RESPOND classes get a reply, IGNORE classes
"<no need to response>"). Clips come from the shared development data (`data.shared_data_dir`);
audio paths are absolute, so the file stays where it is written. Deterministic for a seed.

    python scripts/analysis_streams.py OUT.jsonl [--per-task 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import random

from soundflow.data import read_jsonl, shared_data_dir, write_jsonl
from soundflow.interop import NO_RESPONSE

MAX_EVENT_S = 4.5  # short events: several turns fit in the chunks an analysis reads
TURNS = 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--per-task", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    root = shared_data_dir()
    if root is None:
        raise SystemExit("no shared data folder (set SOUNDFLOW_DATA)")
    rng = random.Random(a.seed)
    speech = read_jsonl(root / "speech/manifest.jsonl")
    events = [r for r in read_jsonl(root / "events/catalog.jsonl") if r["duration"] <= MAX_EVENT_S]
    lines = []
    for i in range(a.per_task):
        turns = [{"user": r["text"], "assistant": r["text"], "emotion": "normal", "scene_type": "dictation",
                  "audio_path": str(root / "speech" / r["audio"])} for r in rng.sample(speech, TURNS)]
        lines.append({"id": f"asr_{i:06d}", "stream_scene_type": "dictation", "num_turns": TURNS, "turns": turns})
        picks = rng.sample([r for r in events if r["decision"] == "RESPOND"], TURNS // 2) + \
            rng.sample([r for r in events if r["decision"] == "IGNORE"], TURNS - TURNS // 2)
        rng.shuffle(picks)
        turns = [{"user": "", "assistant": f"I hear {r['caption']}." if r["decision"] == "RESPOND" else NO_RESPONSE,
                  "emotion": "urgent" if r["decision"] == "RESPOND" else "normal", "scene_type": r["category"],
                  "audio_path": str(root / "events" / r["audio"])} for r in picks]
        lines.append({"id": f"proactive_{i:06d}", "stream_scene_type": "home", "num_turns": TURNS, "turns": turns})
    write_jsonl(a.out, lines)
    print(f"{len(lines)} streams written to {a.out}")


if __name__ == "__main__":
    main()
