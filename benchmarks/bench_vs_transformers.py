"""Training step (forward + backward) of our dense Mamba vs transformers' MambaForCausalLM, same weights.

    python benchmarks/bench_vs_transformers.py [--d-model 256 --layers 4 --batch 8 --length 256 --vocab 4096]

Compared, interleaved in one run: ours (compiled CPU scan), ours with the sequential reference scan,
transformers with `use_mambapy=True` (needs `pip install mambapy`), transformers' default CPU path.
Issue 2 bar: ours / transformers+mambapy >= 1.0 (aim 2x).
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from common import interleaved_median, print_table
from spikingmamba.runtime import configure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-slow", action="store_true", help="leave out transformers' default (sequential) path")
    args = p.parse_args()
    configure(args.threads)

    from transformers import MambaConfig, MambaForCausalLM
    from transformers.utils.import_utils import is_mambapy_available

    import spikingmamba

    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=args.vocab, hidden_size=args.d_model, num_hidden_layers=args.layers)
    hf = MambaForCausalLM(cfg).train()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = spikingmamba.from_pretrained(folder, scan_backend="cpu").train()
        ours_ref = spikingmamba.from_pretrained(folder, scan_backend="reference").train()
    ids = torch.randint(0, args.vocab, (args.batch, args.length))

    def step(model, **kw):
        def fn():
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids, **kw).loss.backward()
        return fn

    def hf_step(mambapy: bool):
        def fn():
            for layer in hf.backbone.layers:
                layer.mixer.use_mambapy = mambapy
            hf.zero_grad(set_to_none=True)
            hf(ids, labels=ids).loss.backward()
        return fn

    contenders = {"ours (compiled scan)": step(ours), "ours (reference scan)": step(ours_ref)}
    if is_mambapy_available():
        contenders["transformers + mambapy"] = hf_step(True)
    else:
        print("mambapy is not installed: `pip install mambapy` to include transformers + mambapy")
    if not args.skip_slow:
        contenders["transformers default CPU path"] = hf_step(False)
    times = interleaved_median(contenders, args.repeats, warmup=1)
    ours_t = times["ours (compiled scan)"]
    tokens = args.batch * args.length
    rows = [(name, f"{t:.3f}", f"{tokens / t:,.0f}", f"{t / ours_t:.2f}x") for name, t in times.items()]
    print_table(f"train step (fwd+bwd), d_model {args.d_model}, {args.layers} layers, vocab {args.vocab}, "
                f"batch {args.batch} x {args.length}, {args.threads} threads, median of {args.repeats}",
                rows, ("implementation", "seconds", "tokens/s", "its time / ours"))


if __name__ == "__main__":
    main()
