"""Lone spoken digits under four conditions: `bench asr`'s digital-silence pads or a -40 dBFS
noise bed, and `bench asr`'s instruction or the training one. Prints each reference with the
model's four transcripts (BENCHMARKS.md, the rehearsal stage).

    python scripts/asr_ood.py MODEL_DIR [N]
"""

import sys

import numpy as np

from soundflow.audio import SAMPLE_RATE
from soundflow.bench.asr import TRANSCRIBE
from soundflow.bench.tasks import TaskRun, load_task_manifest
from soundflow.compose import colored_noise
from soundflow.data import shared_data_dir
from soundflow.tasks import ASR_INSTRUCTIONS


def main() -> None:
    model, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8
    items = load_task_manifest(shared_data_dir() / "speech" / "manifest.jsonl", n)
    run = TaskRun(model, 0.5, 400)
    rng = np.random.default_rng(0)
    train_instruction = ASR_INSTRUCTIONS[0]
    for it in items:
        w = run.load(it)
        pad = np.zeros(SAMPLE_RATE, np.float32)
        quiet = np.concatenate([pad, w, pad])
        noisy = quiet + colored_noise(len(quiet), rng, "pink", -40.0)
        outs = [run(x, ins)[0] for x in (quiet, noisy) for ins in (TRANSCRIBE, train_instruction)]
        print(it.row["text"], "|", " | ".join(repr(o) for o in outs), flush=True)


if __name__ == "__main__":
    main()
