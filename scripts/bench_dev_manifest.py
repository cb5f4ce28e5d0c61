"""Write the held-out Proactive-Sound-Bench manifest the default model is scored on.

    python scripts/bench_dev_manifest.py [OUT_DIR] [--split dev]

The dev recording groups of `shared/data/events/catalog.jsonl` (never drawn by training builds)
in the public layout, each RESPOND row given the public benchmark's standard answers for the
same sound (`shared/proactive-sound-bench/reference_replies.jsonl`), so `bench proactive
--semantic` scores replies against answers written by the benchmark's authors, not by us.
Classes without a matching public sound (alarm clock; our sirens are street sirens, theirs an air
raid siren) keep no answers and are left out of the semantic score.
"""

import argparse
import json

from soundflow.bench.proactive import catalog_to_bench_manifest
from soundflow.data import read_jsonl, shared_data_dir, write_jsonl

# our catalog class -> the public benchmark's descriptions of the same sound
REFERENCE_SOUNDS = {
    "glass_break": ["glass break"],
    "door_knock": ["knock", "knock door(2)"],
    "phone_ring": ["phone ring"],
    "chainsaw": ["chainsaw", "chainsaw cut tree"],
    "baby_cry": ["baby crying"],
    "cough_multiple": ["multiple cough"],
    "sneeze": ["sneeze", "sneeze(2)"],
    "smoke_alarm": ["smoke alarm", "fire alarm"],
    "car_horn": ["car horn"],
    "thunder": ["thunder", "thunder(2)"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="runs/bench/dev")
    ap.add_argument("--split", default="dev")
    a = ap.parse_args()
    shared = shared_data_dir()
    path = catalog_to_bench_manifest(shared / "events" / "catalog.jsonl", a.out, split=a.split)
    refs: dict[str, list[str]] = {}
    for r in read_jsonl(shared.parent / "proactive-sound-bench" / "reference_replies.jsonl"):
        refs.setdefault(r["description"].strip(), []).extend(r.get("standard_answers") or [])
    rows = list(read_jsonl(path))
    n = 0
    for r in rows:
        answers = [a for d in REFERENCE_SOUNDS.get(r.get("class", ""), []) for a in refs.get(d, [])]
        if answers and r["decision"] == "RESPOND":
            r["standard_answers"] = list(dict.fromkeys(answers))
            n += 1
    write_jsonl(path, rows)
    print(json.dumps({"manifest": str(path), "rows": len(rows), "with_standard_answers": n}))


if __name__ == "__main__":
    main()
