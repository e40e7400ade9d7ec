"""Token shards at scale: peak memory while tokenising grows with the corpus only in the in-memory path,
and opening a shard set costs the same time and memory whatever its size.

Each measurement runs in a fresh Python process, which reports its own peak RSS (`ru_maxrss`); the
"over imports" column subtracts a process that only imports the same modules. RSS also counts the
pages of mapped shard files that reads touched (shared, clean page cache that the kernel can drop,
mapped in large pieces), so the opening table also shows private (anonymous) memory apart from
file-backed memory. Printed:

1. tokenising a synthetic corpus of about 1M and 10M tokens (documents of the sample corpus with
   their lines shuffled) with `spikingmamba.data.tokenize` (one process, so all memory is in the
   measured one) and, for contrast, the in-memory path `build_datasets`;
2. opening a 10M- and a 100M-token shard set of random uint16 tokens (written directly), building
   the training rows and reading 64 random rows.

    python benchmarks/bench_tokenize.py [--tokens 1000000 10000000] [--open-tokens 10000000 100000000]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import print_table

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "sample_corpus.txt"

# The body of each measuring process: imports, then the work; prints {"seconds", "peak_rss_mb"}.
_CHILD = """
import json, resource, sys, time
import numpy, torch
from spikingmamba.data import build_datasets, load_tokenizer
from spikingmamba.data.dataset import shard_datasets
from spikingmamba.data.tokenize import tokenize
job = json.loads(sys.argv[1])
started = time.perf_counter()
if job["kind"] == "shards":
    tokenize({"inputs": [job["text"]], "out": job["out"], "workers": 1, "progress": False})
elif job["kind"] == "in_memory":
    build_datasets(job["text"], load_tokenizer(job["tokenizer"]), 256, cache_dir=job["out"])
elif job["kind"] == "open":
    train, heldout = shard_datasets(job["out"], load_tokenizer(job["tokenizer"]), 256)
    rows = train.batch(torch.randint(0, len(train), (64,)))
elapsed = time.perf_counter() - started
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"seconds": elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mb": int(status["RssAnon"].split()[0]) / 1024,
                  "file_mb": int(status["RssFile"].split()[0]) / 1024}))
"""


def measure(job: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(job)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{job['kind']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def synthetic_corpus(path: Path, n_tokens: int, tokens_per_char: float) -> None:
    """Documents of the sample corpus with shuffled lines, written until about `n_tokens` tokens."""
    docs = SAMPLE.read_text(encoding="utf-8").split("\n\n")
    rng = random.Random(0)
    target_chars = int(n_tokens / tokens_per_char)
    written = 0
    with path.open("w", encoding="utf-8") as f:
        while written < target_chars:
            lines = rng.choice(docs).splitlines()
            rng.shuffle(lines)
            doc = "\n".join(lines) + "\n\n"
            f.write(doc)
            written += len(doc)


def random_shards(folder: Path, template: Path, n_tokens: int) -> None:
    """A shard set of `n_tokens` random ids, with the index and tokenizer of `template`."""
    import numpy as np

    from spikingmamba.data.shards import INDEX_FILE, TOKENIZER_DIR, ShardWriter

    index = json.loads((template / INDEX_FILE).read_text())
    folder.mkdir()
    vocab = index["tokenizer"]["vocab_size"]
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", n_tokens - n_tokens // 100), ("heldout", n_tokens // 100)):
        writer = ShardWriter(folder, split, index["dtype"], index["shard_tokens"])
        for start in range(0, count, 1 << 24):
            writer.write(rng.integers(0, vocab, min(1 << 24, count - start), dtype=np.uint16), 0)
        splits[split] = writer.close()
    shutil.copytree(template / TOKENIZER_DIR, folder / TOKENIZER_DIR)
    (folder / INDEX_FILE).write_text(json.dumps({**index, "splits": splits}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="*", default=[1_000_000, 10_000_000],
                   help="corpus sizes to tokenise (none: skip)")
    p.add_argument("--open-tokens", type=int, nargs="*", default=[10_000_000, 100_000_000],
                   help="shard set sizes to open (none: skip)")
    p.add_argument("--no-in-memory", action="store_true", help="skip the in-memory contrast")
    args = p.parse_args()
    from spikingmamba.assets import default_teacher_dir
    from spikingmamba.data.tokenize import tokenize

    tokenizer = str(default_teacher_dir())
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        tmp = Path(tmp)
        probe = tmp / "probe.txt"
        synthetic_corpus(probe, 100_000, 0.25)
        index = tokenize({"inputs": [str(probe)], "out": str(tmp / "probe"), "workers": 1, "progress": False})
        tokens_per_char = sum(s["tokens"] for s in index["splits"].values()) / probe.stat().st_size
        base = measure({"kind": "imports"})["peak_rss_mb"]

        rows = []
        for n in args.tokens:
            text = tmp / f"corpus-{n}.txt"
            synthetic_corpus(text, n, tokens_per_char)
            kinds = ["shards"] + ([] if args.no_in_memory else ["in_memory"])
            for kind in kinds:
                r = measure({"kind": kind, "text": str(text), "out": str(tmp / f"{kind}-{n}"),
                             "tokenizer": tokenizer})
                made = (sum(s["tokens"] for s in json.loads((tmp / f"{kind}-{n}" / "index.json").read_text())
                            ["splits"].values()) if kind == "shards" else n)
                rows.append((kind, n, made, r["seconds"], r["peak_rss_mb"]))
                shutil.rmtree(tmp / f"{kind}-{n}", ignore_errors=True)
            text.unlink()
        table = []
        for kind in dict.fromkeys(r[0] for r in rows):
            mine = [r for r in rows if r[0] == kind]
            for r in mine:
                over = r[4] - base
                table.append((kind, f"{r[1]:,}", f"{r[2]:,}", f"{r[3]:.1f}", f"{r[4]:.0f}", f"{over:.0f}",
                              f"{r[4] / mine[0][4]:.2f}x", f"{over * 2**20 / r[2]:.1f}"))
        if table:
            print_table(f"tokenising (import-only process: {base:.0f} MB)", table,
                        ("path", "tokens asked", "tokens", "seconds", "peak RSS MB", "over imports MB",
                         "peak RSS vs smallest", "over imports: bytes/token"))

        opened = []
        for n in args.open_tokens:
            folder = tmp / f"random-{n}"
            random_shards(folder, tmp / "probe", n)
            r = measure({"kind": "open", "out": str(folder), "tokenizer": tokenizer})
            opened.append((n, r["seconds"], r["peak_rss_mb"], r["anon_mb"], r["file_mb"]))
            shutil.rmtree(folder)
        if opened:
            print_table("opening a shard set + reading 64 random rows of 256 tokens", [
                (f"{n:,}", f"{t:.3f}", f"{t / opened[0][1]:.2f}x", f"{peak:.0f}", f"{anon:.0f}",
                 f"{anon / opened[0][3]:.2f}x", f"{file:.0f}") for n, t, peak, anon, file in opened],
                ("tokens", "seconds", "time vs smallest", "peak RSS MB", "private (anon) MB at end",
                 "private vs smallest", "file-backed MB at end"))

if __name__ == "__main__":
    main()
