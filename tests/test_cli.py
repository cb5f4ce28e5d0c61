"""The command-line contract of docs/cli.md: commands exist and run end to end on small inputs."""

import json

import numpy as np
import pytest
import soundfile as sf

from soundflow.cli import build_parser, main


def test_contract_commands_parse():
    p = build_parser()
    for argv in (["listen", "x.wav", "--model", "mini", "--instruction", "hi", "--chunk-ms", "400", "--realtime",
                  "--jsonl", "--plot", "o.png"],
                 ["bench", "proactive", "m.jsonl", "--model", "mini", "--tier", "both", "--json"],
                 ["bench", "asr", "m.jsonl", "--model", "mini", "--json"],
                 ["bench", "latency", "--model", "mini", "--json"],
                 ["data", "build", "r.yaml", "--out", "d", "--ray", "local"],
                 ["tfjp", "in.wav", "out.wav"], ["train", "r.yaml", "--resume"],
                 ["serve", "--host", "127.0.0.1", "--port", "8765", "--model", "mini"]):
        assert p.parse_args(argv).fn


def test_tfjp_command_on_a_file(tmp_path):
    sr = 16000
    t = np.arange(sr) / sr
    x = np.concatenate([0.3 * np.sin(2 * np.pi * 440 * t[:8000]), np.zeros(sr), 0.3 * np.sin(2 * np.pi * 660 * t[:8000])])
    sf.write(tmp_path / "in.wav", x.astype(np.float32), sr)
    assert main(["tfjp", str(tmp_path / "in.wav"), str(tmp_path / "out.wav")]) == 0
    y, sr2 = sf.read(tmp_path / "out.wav")
    assert sr2 == sr and len(y) < len(x) and len(y) % (sr // 5) == 0  # silence cut, 200 ms grid


def test_listen_jsonl_on_bundled_example_tiny(capsys):
    from pathlib import Path

    import soundflow

    example = Path(soundflow.__file__).parent / "assets" / "example.ogg"
    assert main(["listen", str(example), "--model", "tiny", "--jsonl", "--quant", "none"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    dec = [r for r in rows if r["type"] == "decision"]
    import soundfile as sf

    n_chunks = -(-sf.info(example).frames // 6400)  # 400 ms chunks at 16 kHz, the last one padded
    assert n_chunks >= 30 and [r["chunk"] for r in dec] == list(range(n_chunks))  # one decision each
    assert all("latency_ms" in r for r in dec)


def test_device_option(capsys, monkeypatch):
    import pytest
    import torch

    from soundflow.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        resolve_device("warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
        # the CLI turns it into one line and exit 2, before any audio is processed
        from pathlib import Path

        import soundflow

        example = Path(soundflow.__file__).parent / "assets" / "example.ogg"
        assert main(["listen", str(example), "--model", "tiny", "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "no CUDA device" in err and "Traceback" not in err


@pytest.mark.slow
def test_main_job_warns_about_the_chainsaw_and_nowhere_else(capsys):
    """The README's main job with the shipped `mini`: silent through the spoken question and the
    typing (0-10 s), one warning that names the chainsaw after it starts (at 10 s)."""
    from pathlib import Path

    import soundflow

    example = Path(soundflow.__file__).parent / "assets" / "example.ogg"
    assert main(["listen", str(example), "--jsonl"]) == 0
    replies = [r for r in map(json.loads, capsys.readouterr().out.splitlines()) if r["type"] == "response"]
    assert len(replies) == 1, replies
    assert replies[0]["t"] > 10.0 and "chainsaw" in replies[0]["text"].lower()


def test_cli_precision_choices_are_the_optimisers():
    from soundflow import cli, optimize

    assert cli.QUANTS == optimize.QUANTS
