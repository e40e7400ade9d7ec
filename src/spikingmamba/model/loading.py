"""Load a Mamba-1 checkpoint in any of its formats as a SpikingMambaForCausalLM.

Formats (a local folder with `config.json`):
    spikingmamba   our own `save_pretrained` output (dense teacher or spiking student)
    transformers   `MambaForCausalLM` (`model_type: mamba`)
    state-spaces   the original release (`d_model`, `n_layer`, ...; weights under `backbone.`)
Anything that is not an existing path is treated as a hub id and handed to transformers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from transformers import GenerationConfig

from spikingmamba.errors import CheckpointError, FileError
from spikingmamba.model.config import SpikingMambaConfig
from spikingmamba.model.lm import SpikingMambaForCausalLM
from spikingmamba.utils.io import read_json

GENERATION_CONFIG = "generation_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HF_FIELDS = ("vocab_size", "hidden_size", "state_size", "num_hidden_layers", "layer_norm_epsilon", "expand",
             "conv_kernel", "use_bias", "use_conv_bias", "time_step_rank", "residual_in_fp32",
             "tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")


def detect_format(config: dict) -> str:
    if config.get("model_type") == "spikingmamba":
        return "spikingmamba"
    if config.get("model_type") == "mamba":
        return "transformers"
    if "d_model" in config and "n_layer" in config:
        return "state-spaces"
    raise CheckpointError(f"config.json is neither a Mamba-1 nor a SpikingMamba config (model_type="
                          f"{config.get('model_type')!r}); expected model_type 'mamba' or 'spikingmamba', "
                          f"or a state-spaces config with d_model and n_layer")


def config_from_state_spaces(cfg: dict) -> SpikingMambaConfig:
    ssm = dict(cfg.get("ssm_cfg") or {})
    if ssm.get("layer", "Mamba1") != "Mamba1":
        raise CheckpointError(f"state-spaces checkpoint uses {ssm['layer']}; only Mamba-1 is supported")
    if not cfg.get("rms_norm", True):
        raise CheckpointError("state-spaces checkpoint uses LayerNorm (rms_norm: false); only RMSNorm is supported")
    vocab, multiple = cfg["vocab_size"], cfg.get("pad_vocab_size_multiple", 1)
    vocab += (multiple - vocab % multiple) % multiple
    return SpikingMambaConfig(
        vocab_size=vocab, hidden_size=cfg["d_model"], num_hidden_layers=cfg["n_layer"],
        state_size=ssm.get("d_state", 16), expand=ssm.get("expand", 2), conv_kernel=ssm.get("d_conv", 4),
        time_step_rank=ssm.get("dt_rank", "auto"), use_bias=ssm.get("bias", False),
        use_conv_bias=ssm.get("conv_bias", True), residual_in_fp32=cfg.get("residual_in_fp32", True),
        tie_word_embeddings=cfg.get("tie_embeddings", True), layer_norm_epsilon=cfg.get("norm_epsilon", 1e-5))


def config_from_transformers(cfg: dict) -> SpikingMambaConfig:
    return SpikingMambaConfig(**{k: cfg[k] for k in HF_FIELDS if k in cfg})


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict in `folder`: one weights file, or the shards its index names (inside `folder`)."""
    from spikingmamba.utils.io import load_safetensors, load_torch

    def load(path: Path):
        if path.suffix == ".safetensors":
            return load_safetensors(path, "weights file")
        return load_torch(path, "weights file")

    for name in WEIGHT_FILES:
        if (folder / name).exists():
            return load(folder / name)
    for name in SHARD_INDEXES:
        index = folder / name
        if index.exists():
            weight_map = read_json(index, "shard index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"shard index {index} has no weight_map of tensor names to files")
            state = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                path = (folder / shard).resolve()
                if path.parent != folder.resolve():
                    raise CheckpointError(f"shard index {index} names {shard!r}, which is outside its folder; "
                                          "shards must sit beside the index")
                state.update(load(path))
            return state
    raise CheckpointError(f"{folder} has a config.json but no weights ({', '.join(WEIGHT_FILES)} or a shard index)")


def load_state(model: SpikingMambaForCausalLM, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with the one renaming the formats need; mismatches are named, not raised from deep inside."""
    state = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in state.items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    expected = model.state_dict()
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s), e.g. {unexpected[:3]}")
    if wrong:
        problems.append(f"shapes disagree with config.json: {wrong[:3]}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match its config: " + "; ".join(problems))
    model.load_state_dict(state, strict=not model.config.tie_word_embeddings)
    if model.config.tie_word_embeddings:
        model.tie_weights()


RUN_MODEL_DIR = "model"  # where a training run (pretrain / distill / rl) saves its model inside --out


def model_folder(path: str | os.PathLike) -> Path:
    """`path`, or the model a training run saved in `path/model/` when `path` is that run's folder
    (it holds no config.json of its own): `spikingmamba eval runs/student` reads runs/student/model."""
    folder = Path(path)
    if not (folder / "config.json").exists() and (folder / RUN_MODEL_DIR / "config.json").is_file():
        return folder / RUN_MODEL_DIR
    return folder


def from_pretrained(path: str | os.PathLike, scan_backend: str | None = None,
                    dtype: torch.dtype = torch.float32) -> SpikingMambaForCausalLM:
    """Load a dense Mamba or a SpikingMamba student from a folder (any format above) or a hub id."""
    folder = model_folder(path)
    if not folder.exists():
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
            raise CheckpointError(f"{path}: no such checkpoint folder (and not a hub id like owner/name)")
        return _from_hub(str(path), scan_backend, dtype)
    if not folder.is_dir():
        raise CheckpointError(f"{path} is a file; expected a checkpoint folder with config.json and weights")
    config_file = folder / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path} is not a Mamba checkpoint folder: it has no config.json")
    try:
        raw = read_json(config_file, "model config")
    except FileError as err:
        raise CheckpointError(str(err)) from None
    fmt = detect_format(raw)
    try:
        if fmt == "spikingmamba":
            raw = {k: v for k, v in raw.items() if k in SpikingMambaConfig.__dataclass_fields__ or k == "spiking"}
            config = SpikingMambaConfig(**raw)
        elif fmt == "transformers":
            config = config_from_transformers(raw)
        else:
            config = config_from_state_spaces(raw)
    except (TypeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{config_file}: incomplete or malformed {fmt} config ({err})") from None
    if scan_backend is not None:
        config.scan_backend = scan_backend
    model = SpikingMambaForCausalLM(config)
    load_state(model, _read_weights(folder), str(folder))
    if (folder / GENERATION_CONFIG).exists():
        read_json(folder / GENERATION_CONFIG, "generation config")  # a damaged one is named, not raised deep inside
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.to(dtype).eval()


def _from_hub(name: str, scan_backend: str | None, dtype: torch.dtype) -> SpikingMambaForCausalLM:
    from transformers import MambaForCausalLM

    try:
        hf = MambaForCausalLM.from_pretrained(name)
    except Exception as err:  # transformers raises OSError / ValueError / HTTP errors here
        raise CheckpointError(f"{name!r} is not a local folder and could not be loaded from the hub: {err}") from None
    config = config_from_transformers(hf.config.to_dict())
    if scan_backend is not None:
        config.scan_backend = scan_backend
    model = SpikingMambaForCausalLM(config)
    load_state(model, hf.state_dict(), name)
    return model.to(dtype).eval()
