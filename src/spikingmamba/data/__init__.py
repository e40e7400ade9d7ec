"""Data for pretraining and distillation: the offline default corpus, tokenizers, packed datasets."""

from spikingmamba.data.cache import default_cache_dir
from spikingmamba.data.corpus import fetch_default_corpus
from spikingmamba.data.dataset import PackedDataset, build_datasets, load_texts, pack, split_documents
from spikingmamba.data.tokenizer import EOS_TOKEN, check_vocab, load_tokenizer, train_tokenizer

__all__ = [
    "EOS_TOKEN",
    "PackedDataset",
    "build_datasets",
    "check_vocab",
    "default_cache_dir",
    "fetch_default_corpus",
    "load_texts",
    "load_tokenizer",
    "pack",
    "split_documents",
    "train_tokenizer",
]
