"""Typed manifests and the training-side view of stream samples (data.py): the chunk matrix,
the JSON round trip of the stable format (docs/formats.md), and shard reading, on files the
tests write themselves."""

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from soundflow.audio import SAMPLE_RATE, chunk_samples
from soundflow.data import (
    StreamSample,
    read_jsonl,
    read_shards,
    split_chunks,
    synthetic_beeps,
    write_jsonl,
)

N = chunk_samples(400)


def test_split_chunks_pads_the_last_chunk_and_caps_the_count():
    w = np.arange(2 * N + 10, dtype=np.float32)
    m = split_chunks(w)
    assert m.shape == (3, N) and m.dtype == np.float32
    np.testing.assert_array_equal(m.reshape(-1)[: len(w)], w)
    assert not m[2, 10:].any()  # zero padding, not wrapped-around audio
    assert split_chunks(w, max_chunks=2).shape == (2, N)
    assert split_chunks(np.zeros(0, np.float32)).shape == (0, N)


def test_stream_sample_json_round_trip_keeps_the_stable_format():
    s = StreamSample(id="a", task="asr", audio="a.flac", instruction="Transcribe.",
                     timeline=[{"chunk": 3, "text": "hello"}, {"chunk": 9, "text": "world"}],
                     events=[{"type": "speech", "start": 0.5}], wave=np.ones(5, np.float32))
    d = s.to_json()
    assert "instruction_audio" not in d and "wave" not in d and "root" not in d
    back = StreamSample.from_json(json.loads(json.dumps(d)), root="/x")
    assert back == s and back.root == "/x" and back.wave is None
    assert [e["text"] for e in back.timeline_within(9)] == ["hello"]
    spoken = StreamSample(id="b", instruction_audio="b.instruction.flac")
    assert spoken.to_json()["instruction_audio"] == "b.instruction.flac" and spoken.has_instruction_audio
    assert StreamSample.from_json({"id": "c", "unknown_key": 1}).id == "c"  # newer fields are ignored


def test_jsonl_is_written_atomically_and_bad_lines_are_named(tmp_path):
    p = tmp_path / "m.jsonl"
    write_jsonl(p, [{"id": i} for i in range(3)])
    assert read_jsonl(p) == [{"id": 0}, {"id": 1}, {"id": 2}]
    assert not list(tmp_path.glob("*.tmp"))
    p.write_text('{"id": 0}\n\n{"id": \n')
    with pytest.raises(ValueError, match=r"m\.jsonl:3: not JSON"):
        read_jsonl(p)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _flac(wave: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="FLAC")
    return buf.getvalue()


def test_read_shards_resamples_skips_partial_shards_and_names_missing_members(tmp_path):
    rng = np.random.default_rng(0)
    stereo_8k = (0.1 * rng.standard_normal((8000, 2))).astype(np.float32)
    with tarfile.open(tmp_path / "shard-00000.tar", "w") as tar:
        s = StreamSample(id="s0", timeline=[{"chunk": 1, "text": "hi"}])
        _add(tar, "s0.json", json.dumps(s.to_json()).encode())
        _add(tar, "s0.flac", _flac(stereo_8k, 8000))
    with tarfile.open(tmp_path / "shard-00001.tar.tmp", "w") as tar:  # an unfinished shard
        _add(tar, "x.json", json.dumps(StreamSample(id="x").to_json()).encode())
    got = list(read_shards(tmp_path))
    assert [g.id for g in got] == ["s0"]
    assert got[0].wave.ndim == 1 and abs(len(got[0].wave) - SAMPLE_RATE) <= 1  # 1 s at 16 kHz mono
    assert got[0].timeline == [{"chunk": 1, "text": "hi"}]

    with tarfile.open(tmp_path / "shard-00002.tar", "w") as tar:
        _add(tar, "s1.json", json.dumps(StreamSample(id="s1", instruction_audio="s1.instruction.flac").to_json()).encode())
    with pytest.raises(ValueError, match="s1.instruction.flac"):
        list(read_shards(tmp_path))


def test_synthetic_beeps_are_seed_pure():
    a, b, c = synthetic_beeps(4, seed=3), synthetic_beeps(4, seed=3), synthetic_beeps(4, seed=4)
    assert [x.timeline for x in a] == [x.timeline for x in b]
    assert all(np.array_equal(x.wave, y.wave) for x, y in zip(a, b))
    assert not all(np.array_equal(x.wave, y.wave) for x, y in zip(a, c))
    for s in a:  # the reply sits at the chunk holding the tone
        k = s.timeline[0]["chunk"]
        energy = (s.chunks() ** 2).mean(axis=1)
        assert int(np.argmax(energy)) == k


def test_a_list_of_data_specs_is_their_samples_in_order():
    from soundflow.dataspec import load_streams

    a, b = "synthetic:beep?n=3&chunks=4&seed=1", "synthetic:beep?n=2&chunks=4&seed=2"
    both = load_streams([a, b])
    assert [s.id for s in both] == [f"0/{s.id}" for s in load_streams(a)] + [f"1/{s.id}" for s in load_streams(b)]
    assert len({s.id for s in load_streams([a, a])}) == 6  # the same build twice: distinct ids
    with pytest.raises(ValueError, match="empty"):
        load_streams([])
