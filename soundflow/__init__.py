"""soundflow: always-on audio interaction models (SoundFlow / Audio-Interaction).

    from soundflow import load_model, Engine, EngineOptions
    session = Engine(load_model("mini")).session(instruction="Tell me if something is wrong.")
"""

__version__ = "0.1.0"

_LAZY = {
    "load_model": "loading", "build_model": "model", "ModelConfig": "model", "AudioLM": "model",
    "Engine": "engine", "EngineOptions": "engine",
    "build_sequence": "tokens", "load_audio": "audio", "AudioError": "audio",
    "Recipe": "train", "StageConfig": "train", "load_recipe": "train",
}


def __getattr__(name):  # imports on first use: `import soundflow` stays cheap (no torch)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'soundflow' has no attribute {name!r}")


__all__ = sorted(_LAZY)
