"""Device check for one CUDA GPU (issue 12); run through `bash benchmarks/gpu_check.sh`.

    python benchmarks/gpu_check.py            # CUDA: 130m shape, seq 2048, batch 8
    python benchmarks/gpu_check.py --dry      # CPU, tiny shapes, Triton's interpreter: the script runs

Prints one table per section, each measured side by side in this run:

  1. parity    the Triton scan vs the sequential reference scan (float32 on the device), forward,
               backward (every input's gradient and the last state's), float32 and bf16 inputs
  2. scan      Triton vs the per-timestep torch loop ("loop", what `auto` used on GPUs before) at one
               130m layer (8 x 2048, d_inner 1536, N 16), fwd + bwd: time, peak memory above the
               inputs, and both against storing every state (b l d N float32)
  3. training  tokens/s of a training step (bf16 autocast, random weights) of the dense teacher,
               the spiking student (same CE loss) and a distillation step (teacher forward + student
               KL), with and without gradient checkpointing: peak memory (CUDA) and bytes saved for
               the backward (any device)
  4. decode    tokens/s of `deploy(model)` one token at a time, dense vs spiking, bf16 and float32

A section that fails prints its error and the others still run; the exit code is 1 when any
section failed or a parity check is out of tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

DRY = "--dry" in sys.argv
if DRY and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"          # before triton defines a kernel

import torch  # noqa: E402

from common import print_table  # noqa: E402

FAILED: list[str] = []
STARTED = time.perf_counter()
BUDGET_S = 420            # sections that would start later are skipped (the script must end within 8 min)


def run_section(name: str, fn) -> None:
    """fn(); an exception is reported as a failed section and the next section runs."""
    if time.perf_counter() - STARTED > BUDGET_S:
        FAILED.append(name)
        print(f"\n{name}: SKIPPED (time budget of {BUDGET_S} s used up)")
        return
    started = time.perf_counter()
    try:
        fn()
    except Exception as err:  # a device check reports every failure and keeps going
        FAILED.append(name)
        print(f"\n{name}: FAILED ({type(err).__name__}: {err})")
        traceback.print_exc(limit=4)
    print(f"[{name}: {time.perf_counter() - started:.1f} s]", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, warmup: int = 1, cap_s: float = 20.0) -> float:
    """Median seconds of fn() over `repeats` runs after `warmup` (fewer once they take `cap_s`)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    while len(times) < repeats and sum(times) < cap_s:
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def saved_bytes(fn) -> tuple[int, object]:
    """Bytes of the tensors autograd keeps for the backward while fn() builds its graph (each
    storage counted once): the activation memory, measured the same way on every device."""
    seen: dict[tuple, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def peak_above(fn, device) -> tuple[float | None, object]:
    """(peak CUDA memory above what was allocated before, in bytes; None on the CPU), fn()."""
    if device.type != "cuda":
        return None, fn()
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    sync(device)
    return torch.cuda.max_memory_allocated() - base, out


def mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="CPU, tiny shapes, Triton interpreter")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    from spikingmamba.ops.selective_scan import selective_scan

    if args.dry:
        device = torch.device("cpu")
        shape = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, state_size=4)
        batch, seq, repeats = 2, 16, 1
        parity_shape, scan_shape = (2, 11, 40, 5), (2, 16, 64, 4)
        decode_tokens, decode_batches = 3, (1, 2)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry for the CPU check")
            return 2
        device = torch.device("cuda")
        from spikingmamba.inference.bench import SHAPES

        shape = dict(SHAPES["130m"])
        batch, seq, repeats = args.batch, args.seq, args.repeats
        parity_shape, scan_shape = (2, 300, 192, 16), (8, 2048, 1536, 16)
        decode_tokens, decode_batches = 64, (1, 16)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (dry run)'}; "
          f"torch {torch.__version__}; triton {triton_version}")

    def scan_inputs(b, l, d, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(b, l, d, generator=g)
        dt = torch.nn.functional.softplus(torch.randn(b, l, d, generator=g) - 2)
        A = -torch.exp(torch.randn(d, n, generator=g))
        B, C = torch.randn(b, l, n, generator=g), torch.randn(b, l, n, generator=g)
        D = torch.randn(d, generator=g)
        return [t.to(device) for t in (x, dt, A, B, C, D)]

    def fwd_bwd(backend, args_, grad_y, grad_h):
        leaves = [a.detach().clone().requires_grad_() for a in args_]
        y, h = selective_scan(*leaves, backend=backend)
        ((y.float() * grad_y).sum() + (h * grad_h).sum()).backward()
        return y.detach(), h.detach(), [t.grad for t in leaves]

    def parity():
        x, dt, A, B, C, D = scan_inputs(*parity_shape)
        grad_y = torch.randn_like(x)
        grad_h = torch.randn(x.shape[0], x.shape[2], A.shape[1], device=device)
        rows = []
        for name, dtype, tol in (("fp32", torch.float32, 1e-4), ("bf16", torch.bfloat16, 2e-2)):
            low = [x.to(dtype), dt.to(dtype), A, B.to(dtype), C.to(dtype), D]
            y, h, grads = fwd_bwd("triton", low, grad_y, grad_h)
            y_r, h_r, grads_r = fwd_bwd("reference", [t.float() for t in low], grad_y, grad_h)
            pairs = [("y", y.float(), y_r), ("h_last", h, h_r)]
            pairs += [(f"d{n}", g.float(), r) for n, g, r in zip(("x", "dt", "A", "B", "C", "D"), grads, grads_r)]
            for what, got, ref in pairs:
                err = float((got - ref).abs().max() / ref.abs().max().clamp(min=1e-12))
                ok = err <= tol
                if not ok:
                    FAILED.append(f"parity {name} {what}")
                rows.append((name, what, f"{err:.2e}", f"{tol:.0e}", "ok" if ok else "FAIL"))
        print_table(f"1. Triton vs reference scan, b l d N = {parity_shape}, max |diff| / max |ref|",
                    rows, ("inputs", "tensor", "rel. error", "tolerance", ""))

    def scan():
        args_ = [t if i in (2, 5) else t.to(torch.bfloat16) for i, t in enumerate(scan_inputs(*scan_shape))]
        b, l, d, n = scan_shape
        all_states = b * l * d * n * 4
        grad_y = torch.randn(b, l, d, device=device)
        grad_h = torch.zeros(b, d, n, device=device)
        rows = []
        results = {}
        for backend in ("triton", "loop"):
            run = lambda: fwd_bwd(backend, args_, grad_y, grad_h)  # noqa: E731
            seconds = timed(run, device, repeats=max(1, repeats // 2))
            peak, _ = peak_above(run, device)
            leaves = [a.detach().clone().requires_grad_() for a in args_]
            saved, _ = saved_bytes(lambda: selective_scan(*leaves, backend=backend))
            results[backend] = seconds
            rows.append((backend, f"{seconds:.4f}", mib(peak), mib(saved),
                         "n/a" if peak is None else f"{peak / all_states:.3f}", f"{saved / all_states:.3f}"))
        rows.append(("(speed-up)", f"{results['loop'] / results['triton']:.1f}x", "", "", "", ""))
        print_table(f"2. Scan fwd+bwd, bf16 inputs, b l d N = {scan_shape}; every state in float32 = "
                    f"{mib(all_states)} MiB", rows,
                    ("backend", "seconds", "peak MiB", "saved MiB", "peak / all states", "saved / all states"))

    def training():
        from spikingmamba.distill.losses import kl_divergence
        from spikingmamba.model import SpikingMambaConfig, SpikingMambaForCausalLM
        from spikingmamba.model.convert import to_spiking
        from spikingmamba.training.loop import enable_grad_checkpointing

        torch.manual_seed(0)
        teacher = SpikingMambaForCausalLM(SpikingMambaConfig(**shape)).to(device).eval()

        def trainee(spiking: bool, checkpointing: bool):
            if spiking:
                model = to_spiking(teacher, levels=4)
            else:
                model = SpikingMambaForCausalLM(teacher.config).to(device)
                model.load_state_dict(teacher.state_dict())
            if checkpointing:
                enable_grad_checkpointing(model)
            return model.train()
        ids = torch.randint(0, shape["vocab_size"], (batch, seq + 1), device=device)
        inputs, targets = ids[:, :-1], ids[:, 1:]

        def ce_step(model):
            def fn():
                model.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    logits = model(inputs).logits
                    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
                loss.backward()
            return fn

        def distill_step(model):
            def fn():
                model.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    with torch.no_grad():
                        t_logits = teacher(inputs).logits
                    loss = kl_divergence(model(inputs).logits, t_logits)
                loss.backward()
            return fn

        def graph_bytes(model):
            def forward():
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return model(inputs).logits
            return saved_bytes(forward)[0]

        contenders = [("dense teacher, CE", False, False, ce_step),
                      ("dense teacher, CE, checkpointed", False, True, ce_step),
                      ("spiking student, CE", True, False, ce_step),
                      ("spiking student, CE, checkpointed", True, True, ce_step),
                      ("distillation (teacher fwd + student KL)", True, False, distill_step),
                      ("distillation, checkpointed", True, True, distill_step)]
        rows, speed = [], {}
        tokens = batch * seq
        for name, spiking, checkpointing, make in contenders:
            model = trainee(spiking, checkpointing)
            fn = make(model)
            seconds = timed(fn, device, repeats=repeats)
            model.zero_grad(set_to_none=True)
            peak, _ = peak_above(fn, device)
            saved = graph_bytes(model)
            speed[name] = tokens / seconds
            rows.append((name, f"{tokens / seconds:,.0f}", f"{seconds:.3f}", mib(peak), mib(saved)))
            del model, fn
        base = speed["dense teacher, CE"]
        rows = [r + (f"{speed[r[0]] / base:.2f}",) for r in rows]
        print_table(f"3. Training step, bf16 autocast, random weights, d_model {shape['hidden_size']} x "
                    f"{shape['num_hidden_layers']} layers, vocab {shape['vocab_size']}, batch {batch} x {seq}",
                    rows, ("step", "tokens/s", "seconds", "peak MiB", "saved for bwd MiB (model fwd)",
                           "tokens/s vs dense"))

    def decode():
        from spikingmamba.inference.deploy import deploy
        from spikingmamba.model import SpikingMambaConfig, SpikingMambaForCausalLM
        from spikingmamba.model.convert import to_spiking

        torch.manual_seed(0)
        dense = SpikingMambaForCausalLM(SpikingMambaConfig(**shape)).eval()
        spiking = to_spiking(dense, levels=4).eval()
        rows = []
        for dtype in (torch.bfloat16, torch.float32):
            for b in decode_batches:
                rate = {}
                for name, model in (("dense", dense), ("spiking", spiking)):
                    decoder = deploy(model.to(device=device, dtype=dtype))
                    prompt = torch.randint(0, shape["vocab_size"], (b, 8), device=device)

                    def run():
                        _, state = decoder.prefill(prompt)
                        token = prompt[:, -1]
                        for _ in range(decode_tokens):
                            logits, state = decoder.step(token, state)
                            token = logits.argmax(-1)
                    seconds = timed(run, device, repeats=max(1, repeats // 2))
                    rate[name] = b * decode_tokens / seconds
                rows.append((str(dtype).replace("torch.", ""), b, f"{rate['dense']:,.0f}", f"{rate['spiking']:,.0f}",
                             f"{rate['spiking'] / rate['dense']:.2f}"))
        print_table(f"4. Decode, deploy(model).step, {decode_tokens} tokens after an 8-token prompt (random "
                    "weights, untrained thresholds)", rows,
                    ("dtype", "batch", "dense tokens/s", "spiking tokens/s", "spiking / dense"))

    for name, fn in (("parity", parity), ("scan", scan), ("training", training), ("decode", decode)):
        run_section(name, fn)
    print(f"\nfailed: {', '.join(FAILED)}" if FAILED else "\nall sections ran; parity within tolerance")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
