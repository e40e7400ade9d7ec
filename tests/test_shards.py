"""Token shards: `spikingmamba tokenize` (formats, dtype, parallel = serial, atomic output, errors) and
training that reads them by memory map (the same rows as the in-memory path, exact resume)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from spikingmamba.cli.main import main
from spikingmamba.data import load_texts, load_tokenizer, pack
from spikingmamba.data.order import ShuffledOrder
from spikingmamba.data.shards import MemmapRows, ShardSet, ShardWriter, token_dtype
from spikingmamba.data.tokenize import tokenize
from spikingmamba.errors import UserError
from spikingmamba.pretrain import pretrain
from training_helpers import SAMPLE, make_teacher, pretrain_settings, train_losses, weights


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def docs():
    return load_texts(SAMPLE)


def run_tokenize(out, inputs, tokenizer, **options) -> dict:
    return tokenize({"inputs": [str(i) for i in inputs], "out": str(out), "tokenizer": str(tokenizer),
                     "progress": False, "workers": 1, **options})


def bins(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


def expected_streams(docs, tokenizer, heldout_fraction=0.05, seed=0) -> dict[str, list[int]]:
    """The documents' ids with eos after each, in order, drawn into splits by one draw per document."""
    draw = random.Random(seed).random
    streams = {"train": [], "heldout": []}
    for doc in docs:
        split = "heldout" if draw() < heldout_fraction else "train"
        streams[split] += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return streams


def test_shards_hold_each_document_then_eos_in_order(tmp_path, teacher, docs):
    index = run_tokenize(tmp_path / "s", [SAMPLE], teacher, shard_tokens=5000, heldout_fraction=0.1)
    tok = load_tokenizer(teacher)
    expected = expected_streams(docs, tok, heldout_fraction=0.1)
    shards = ShardSet.open(tmp_path / "s")
    for split in ("train", "heldout"):
        stream = shards.stream(split)
        assert stream.read(0, len(stream)).tolist() == expected[split]
        assert index["splits"][split]["tokens"] == len(expected[split])
    assert len(index["splits"]["train"]["shards"]) == -(-len(expected["train"]) // 5000)  # cut every 5000
    assert index["splits"]["train"]["documents"] + index["splits"]["heldout"]["documents"] == len(docs)
    assert index["dtype"] == "uint16" and index["eos"]["id"] == tok.eos_token_id
    assert json.loads((tmp_path / "s" / "index.json").read_text()) == index
    assert load_tokenizer(tmp_path / "s" / "tokenizer").get_vocab() == tok.get_vocab()


def test_every_input_format_gives_the_same_shards(tmp_path, teacher, docs):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(docs)))
    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet", row_group_size=7)
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "ds"))
    run_tokenize(tmp_path / "txt", [SAMPLE], teacher)
    reference = bins(tmp_path / "txt")
    for name in ("c.jsonl", "c.parquet", "ds"):
        run_tokenize(tmp_path / f"out-{name}", [tmp_path / name], teacher)
        assert bins(tmp_path / f"out-{name}") == reference, name
    # several inputs are read in order, as one corpus
    half = len(docs) // 2
    (tmp_path / "a.txt").write_text("\n\n".join(docs[:half]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs[half:]))
    run_tokenize(tmp_path / "two", [tmp_path / "a.txt", tmp_path / "b.jsonl"], teacher, text_field="body")
    assert bins(tmp_path / "two") == reference


def test_text_files_stream_in_chunks_exactly_like_a_whole_read(tmp_path, monkeypatch):
    from spikingmamba.data import documents

    raw = "a\r\n\r\nb\r\r\n\n\nc\n\n\n\nd\re\n\n  \n\nf\r"
    path = tmp_path / "t.txt"
    path.write_bytes(raw.encode())
    whole = [p.strip() for p in raw.replace("\r\n", "\n").split("\n\n") if p.strip()]
    for chunk in (1, 2, 3, 5):
        monkeypatch.setattr(documents, "_CHUNK_CHARS", chunk)
        assert list(documents.iter_documents(path)) == whole, chunk


def test_parallel_processes_write_the_same_bytes_as_one(tmp_path, teacher):
    serial = run_tokenize(tmp_path / "one", [SAMPLE], teacher, shard_tokens=3000)
    parallel = run_tokenize(tmp_path / "two", [SAMPLE], teacher, shard_tokens=3000, workers=2, batch_documents=3)
    assert bins(tmp_path / "one") == bins(tmp_path / "two") and len(bins(tmp_path / "one")) > 4
    assert {k: v for k, v in serial.items() if k != "seconds"} == {k: v for k, v in parallel.items()
                                                                    if k != "seconds"}


def test_vocabularies_over_65536_tokens_get_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    assert token_dtype(65536) == "uint16" and token_dtype(65537) == "uint32"
    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, 70_000)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>").save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "c.txt").write_text("w1 w69999 w65536\n\nw5\n\nw7 w7\n\nw65535 w2")
    index = run_tokenize(tmp_path / "s", [tmp_path / "c.txt"], tmp_path / "tok", heldout_fraction=0.4)
    assert index["dtype"] == "uint32"
    shards = ShardSet.open(tmp_path / "s")
    streams = [shards.stream(split) for split in ("train", "heldout")]
    tokens = sorted(t for stream in streams for t in stream.read(0, len(stream)).tolist())
    assert tokens == [0, 0, 0, 0, 1, 2, 5, 7, 7, 65535, 65536, 69999]
    assert (tmp_path / "s" / "train-00000.bin").stat().st_size == 4 * index["splits"]["train"]["tokens"]


def test_memmap_rows_are_the_rows_pack_cuts(tmp_path, teacher, docs):
    run_tokenize(tmp_path / "s", [SAMPLE], teacher, shard_tokens=777)
    tok = load_tokenizer(teacher)
    draw = random.Random(0).random
    train_docs = [d for d in docs if not draw() < 0.05]
    packed = pack(tok(train_docs, add_special_tokens=False)["input_ids"], 16, tok.eos_token_id)
    rows = MemmapRows(ShardSet.open(tmp_path / "s").stream("train"), 16)
    assert rows.shape == tuple(packed.shape)
    assert torch.equal(rows[torch.arange(len(rows))], packed)
    assert torch.equal(rows[5], packed[5]) and rows[[]].shape == (0, 17)


def test_shuffled_order_is_a_fresh_permutation_every_epoch():
    for n in (1, 2, 7, 64, 1000):
        stream = ShuffledOrder(n, seed=3).take(0, 3 * n).tolist()
        epochs = [stream[i * n:(i + 1) * n] for i in range(3)]
        assert all(sorted(e) == list(range(n)) for e in epochs)
        if n >= 7:
            assert epochs[0] != epochs[1] and epochs[0] != ShuffledOrder(n, seed=4).take(0, n).tolist()
    assert ShuffledOrder(1000, 3).take(1234, 10).tolist() == ShuffledOrder(1000, 3).take(0, 2000).tolist()[1234:1244]


def test_pretraining_on_shards_resumes_at_the_recorded_position(tmp_path, teacher):
    run_tokenize(tmp_path / "s", [SAMPLE], teacher, shard_tokens=2000)

    def settings(out, **overrides):  # no tokenizer: the shard folder's
        return {**pretrain_settings(out, teacher, **overrides), "tokenizer": None, "data": str(tmp_path / "s")}

    pretrain(settings(tmp_path / "a"))
    assert load_tokenizer(tmp_path / "a").get_vocab() == load_tokenizer(teacher).get_vocab()
    pretrain(settings(tmp_path / "b", stop_at_step=4, save_every=0))
    trainer = json.loads((tmp_path / "b" / "checkpoint" / "trainer.json").read_text())
    n_rows = len(MemmapRows(ShardSet.open(tmp_path / "s").stream("train"), 16))
    assert trainer["data"] == {"position": 4 * 2, "rows": n_rows}
    pretrain(settings(tmp_path / "b", resume=True))
    assert train_losses(tmp_path / "b") == train_losses(tmp_path / "a")
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the recorded data position, not the step, decides where a resumed run reads
    pretrain(settings(tmp_path / "c", stop_at_step=4, save_every=0))
    trainer["data"]["position"] = 0
    (tmp_path / "c" / "checkpoint" / "trainer.json").write_text(json.dumps(trainer))
    pretrain(settings(tmp_path / "c", resume=True))
    assert train_losses(tmp_path / "c")[:4] == train_losses(tmp_path / "a")[:4]
    assert train_losses(tmp_path / "c")[4:] != train_losses(tmp_path / "a")[4:]
    trainer["data"]["rows"] = n_rows + 1
    (tmp_path / "c" / "checkpoint" / "trainer.json").write_text(json.dumps({**trainer, "step": 4}))
    with pytest.raises(UserError, match="the data now gives"):
        pretrain(settings(tmp_path / "c", resume=True, max_steps=6))


def test_distilling_from_shards_reads_the_rows_and_checks_the_tokenizer(tmp_path, teacher):
    from spikingmamba.distill import distill
    from training_helpers import distill_settings

    run_tokenize(tmp_path / "s", [SAMPLE], teacher)
    result = distill(distill_settings(tmp_path / "d", teacher, data=str(tmp_path / "s"), max_steps=2, eval_every=0))
    assert result["finished"] and result["train_rows"] == len(MemmapRows(ShardSet.open(tmp_path / "s")
                                                                           .stream("train"), 16))
    run_tokenize(tmp_path / "neox", [SAMPLE], "default")
    with pytest.raises(UserError, match="made with another tokenizer"):
        distill(distill_settings(tmp_path / "e", teacher, data=str(tmp_path / "neox"), max_steps=2))


def test_an_interrupted_tokenize_leaves_no_index(tmp_path, teacher, monkeypatch):
    written = []

    def interrupt(self, tokens, documents):
        written.append(len(tokens))
        if len(written) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_tokenize(tmp_path / "s", [SAMPLE], teacher, batch_documents=2)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one
    monkeypatch.undo()
    run_tokenize(tmp_path / "s", [SAMPLE], teacher)
    before = bins(tmp_path / "s")
    monkeypatch.setattr(ShardWriter, "write", interrupt)
    written.clear()
    with pytest.raises(KeyboardInterrupt):
        run_tokenize(tmp_path / "s", [SAMPLE], teacher, overwrite=True, heldout_fraction=0.5)
    assert bins(tmp_path / "s") == before and [p.name for p in tmp_path.iterdir()] == ["s"]


def test_cli_tokenize_and_its_errors_exit_2_in_one_line(tmp_path, teacher, capsys, monkeypatch):
    import datasets
    import huggingface_hub

    # offline as this machine is, without waiting for the hub client's retries
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["tokenize", str(SAMPLE), "--out", str(tmp_path / "s"), "--tokenizer", str(teacher),
                 "--no-progress", "--workers", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["tokens"] > 0
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (tmp_path / "empty.txt").write_text("\n\n \n")
    cases = {
        "does not exist": [str(tmp_path / "missing.txt")],
        "already holds files": [str(SAMPLE), "--out", str(tmp_path / "s")],
        "line 2: not valid JSON": [str(tmp_path / "bad.jsonl")],
        "hold no text": [str(tmp_path / "empty.txt")],
        "inputs are required": [],
        "could not stream hf:nobody/nothing": ["hf:nobody/nothing"],
        "not a readable parquet file": [str(tmp_path / "x.parquet")],
    }
    (tmp_path / "x.parquet").write_text("not parquet")
    for message, argv in cases.items():
        if "--out" not in argv:
            argv = argv + ["--out", str(tmp_path / "o")]
        assert main(["tokenize", *argv, "--tokenizer", str(teacher), "--no-progress"]) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("spikingmamba tokenize: error:"), (message, err)
        assert not (tmp_path / "o").exists()


def test_damaged_shard_folders_are_clear_errors(tmp_path, teacher):
    run_tokenize(tmp_path / "s", [SAMPLE], teacher)
    with open(tmp_path / "s" / "train-00000.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(UserError, match=r"train-00000.bin of split train should hold \d+ bytes .* but is 10 bytes"):
        ShardSet.open(tmp_path / "s")
    (tmp_path / "s" / "index.json").write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="not a token shard index"):
        ShardSet.open(tmp_path / "s")
    with pytest.raises(UserError, match="no index.json"):
        ShardSet.open(tmp_path)


def test_token_streams_read_across_shard_boundaries(tmp_path):
    writer = ShardWriter(tmp_path, "train", "uint16", shard_tokens=4)
    writer.write(np.arange(5), 1)
    writer.write(np.arange(5, 11), 2)
    entry = writer.close()
    assert [s["tokens"] for s in entry["shards"]] == [4, 4, 3] and entry["documents"] == 3
    from spikingmamba.data.shards import TokenStream

    stream = TokenStream(tmp_path, entry, np.dtype("<u2"))
    assert len(stream) == 11 and stream.read(2, 10).tolist() == list(range(2, 10))
    assert stream.read(4, 8).tolist() == [4, 5, 6, 7]
