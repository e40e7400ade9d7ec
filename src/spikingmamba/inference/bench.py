"""Decode benchmark: dense vs sparse spike-driven decoding, tokens/s, weight bytes read, memory.

Variants, all in the same dtype on the same device and threads, timed in turn chunk by chunk (A B C A B C ...) so
machine noise hits them alike; each reports the median chunk time:

    dense (model.step)   the dense model's own step code (`nn.Linear` everywhere; the reference)
    dense (modules)      the dense model through `deploy(step_kernel="modules")`: the step code of the
                         deployed modules, projections and head by the column-accumulate kernel
    dense (fused)        the dense model through `deploy`: the compiled whole-model step
                         (`spikingmamba.ops.cpu_decode`; CPU float32 only), every weight row streamed
    sparse (modules)     the spiking student through `deploy(mode="sparse", step_kernel="modules")`
    sparse (fused)       the spiking student through `deploy(mode="sparse")`: the compiled step, which
                         reads only the weight rows of firing neurons

The speed-up is sparse (fused, or modules where the compiled step is unavailable) / the fastest dense
variant, for the whole step (with the LM head) and for the blocks alone (`DecodeModel.step(head=False)`:
blocks + final norm, no head; fastest dense deployed variant).

Bytes bound: decoding one token at batch 1 moves the weights it reads and the recurrent state (read and
written). `bytes_per_step` counts both, each distinct active weight row of a sparse projection once
(plus its neuron's theta, and 12 bytes of index and value per spike), so dense bytes / sparse bytes
is the speed-up a decoder bound by memory traffic would reach; efficiency = measured speed-up / that
bound.

Time: every chunk is timed by the wall clock and by the process's CPU time (`time.process_time`).
Wall-clock ratios are what a user waits for; on a machine shared with other jobs, a chunk's wall
time also counts the time it waited for a core, which differs between short sparse and long dense
chunks, so the speed-up and efficiency are also reported from CPU time (with one thread, the step's
own compute time).

Firing rate (fraction of non-zero spikes) is set, not learned: `set_firing_rate` runs the student
once on random tokens and, at each neuron in forward order (so each sees the activations the
earlier spiking layers produce), sets theta_c = 2 * quantile(|x_c|, 1 - rate), so that
|x_c / theta_c| >= 1/2 (a non-zero spike after rounding) for a fraction `rate` of the samples of
channel c. A rate may be one number for every neuron or a `SiteRates` mapping (site -> rate): a
trained student fires at different rates at different sites, and a spike into in_proj reads a
column of 2 d_inner weights, one into out_proj only d_model, so the per-site rates, not their mean,
set the bytes read. The measured rate during decoding is reported next to the target.

Memory: `decoder MB` is the bytes of tensors the decoder holds (shared tensors counted once),
`state MB` the recurrent state, `decode growth MB` the rise of the process's peak RSS during a
decode run (Linux: VmHWM after resetting it via /proc/self/clear_refs; 0 means the run needed no
memory beyond what the process already had), `process peak MB` the process's peak RSS so far.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from spikingmamba.errors import InputError
from spikingmamba.inference.deploy import DecodeModel, deploy
from spikingmamba.inference.sparse_linear import ColumnLinear, SparseSpikeLinear
from spikingmamba.model.config import SpikingMambaConfig
from spikingmamba.model.lm import SpikingMambaForCausalLM
from spikingmamba.neurons.silif import THETA_MIN
from spikingmamba.neurons.sites import iter_sites

# Mamba-1 shapes of the public checkpoints (state-spaces/mamba-130m, -370m), vocab padded to 50280.
SHAPES = {
    "130m": dict(hidden_size=768, num_hidden_layers=24, vocab_size=50280),
    "370m": dict(hidden_size=1024, num_hidden_layers=48, vocab_size=50280),
}
MB = 1e6


class SiteRates(dict):
    """Target firing rate per neuron site, e.g. SiteRates(in_proj=0.117, out_proj=0.056)."""

    def __str__(self) -> str:
        return ",".join(f"{site}={rate:g}" for site, rate in self.items())


Rate = float | SiteRates


def random_model(shape: str, seed: int = 0) -> SpikingMambaForCausalLM:
    """A dense Mamba of a named shape with random (initialisation) weights, eval mode, float32."""
    if shape not in SHAPES:
        raise InputError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    torch.manual_seed(seed)
    return SpikingMambaForCausalLM(SpikingMambaConfig(**SHAPES[shape])).eval()


def dense_twin(model: SpikingMambaForCausalLM) -> SpikingMambaForCausalLM:
    """The same weights without neurons (a spiking checkpoint's dense counterpart)."""
    if not model.is_spiking:
        return model
    config = SpikingMambaConfig(**{**model.config.to_diff_dict(), "spiking": None})
    dense = SpikingMambaForCausalLM(config).to(model.lm_head.weight.dtype)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_neuron.theta")}
    dense.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        dense.tie_weights()
    return dense.eval()


@torch.no_grad()
def set_firing_rate(student: SpikingMambaForCausalLM, rate: Rate, input_ids: torch.LongTensor) -> None:
    """Set every neuron's theta so that a fraction `rate` of its spikes on `input_ids` are non-zero
    (a `SiteRates`: each site's neurons at that site's rate; every spiking site needs one)."""
    sites = {ref.site for ref in iter_sites(student)}
    per_site = rate if isinstance(rate, SiteRates) else SiteRates({site: rate for site in sites})
    missing = sorted(sites - set(per_site))
    if missing:
        raise InputError(f"no firing rate for the spiking site(s) {', '.join(missing)} (rates given for "
                         f"{', '.join(per_site) or 'none'})")
    if not all(0 < r <= 1 for r in per_site.values()):
        raise InputError(f"firing rate must lie in (0, 1], got {rate}")
    handles = []
    for ref in iter_sites(student):
        def hook(module, args, rate=per_site[ref.site]):
            x = args[0].detach().float().reshape(-1, module.channels)        # (rows, channels)
            if module.theta.numel() == 1:
                x = x.reshape(-1, 1)
            q = torch.quantile(x.abs(), 1 - rate, dim=0)                       # (channels,)
            module.theta.copy_((2 * q).clamp(min=THETA_MIN).to(module.theta.dtype))
        handles.append(ref.neuron.register_forward_pre_hook(hook))
    mode = student.spike_mode
    student.spike_mode = "integer"           # binary mode calls spike_train, not forward: no hooks
    try:
        student.eval()(input_ids)
    finally:
        student.spike_mode = mode
        for h in handles:
            h.remove()


# --- accounting ---------------------------------------------------------------------------------
def _bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def weight_bytes_per_step(decoder: DecodeModel, batch: int,
                          active: dict[str, tuple[float, float]] | None = None, head: bool = True) -> int:
    """Bytes of weights one decode step reads from memory (all batch rows): dense tensors once per
    step; for a sparse projection, its neuron's theta, each distinct active row once (c_out weights;
    the other batch rows that share it read it from the cache) plus an 8-byte index and a 4-byte
    value per spike.
    `active` maps a sparse projection's name (as in `decoder.sparse_projections()`) to
    (distinct active rows, non-zero spikes) per step; a projection not in it counts as dense."""
    active = active or {}

    def projection(name: str, proj: nn.Module) -> int:
        if isinstance(proj, SparseSpikeLinear):             # its neuron reads theta for every input channel
            w, small = proj.weight_t, _bytes(proj.bias) + _bytes(proj.theta)
            if name in active and proj.mode != "dense":
                distinct, spikes = active[name]
                return int(distinct * w.shape[1] * w.element_size() + 12 * spikes) + small
            return _bytes(w) + small
        if isinstance(proj, (nn.Linear, ColumnLinear)):
            return _bytes(proj.weight) + _bytes(proj.bias)
        return 0

    embeddings = decoder.backbone.embeddings.weight
    total = batch * _bytes(embeddings) // embeddings.shape[0]                # b rows
    for layer, block in enumerate(decoder.backbone.layers):
        mixer = block.mixer
        total += _bytes(block.norm.weight) + _bytes(mixer.taps) + _bytes(mixer.conv1d.bias)
        total += _bytes(mixer.A) + _bytes(mixer.D)
        for name, proj in mixer.named_children():                           # every projection, sites or not
            total += projection(f"backbone.layers.{layer}.mixer.{name}", proj)
    total += _bytes(decoder.backbone.norm_f.weight)
    if head:
        total += projection("lm_head", decoder.lm_head)
    return total


def nonzero_per_step(decoder: DecodeModel, batch: int) -> dict[str, tuple[float, float]]:
    """(distinct active rows, non-zero spikes) per step of each sparse projection of `decoder` since its
    `reset_counts()`, over the steps that projection ran (each counts the inputs it saw: a step without
    the head, `step(head=False)`, runs every block but not the head)."""
    out = {}
    for name, m in decoder.sparse_projections():
        steps = m.count_numel / (batch * m.weight_t.shape[0])
        if steps > 0:
            out[name] = (m.count_distinct / steps, m.count_nonzero / steps)
    return out


def bytes_per_step(decoder: DecodeModel, batch: int, active: dict[str, tuple[float, float]] | None = None,
                   head: bool = True) -> int:
    """The memory traffic of one decode step: `weight_bytes_per_step` plus the recurrent state, read and written."""
    return weight_bytes_per_step(decoder, batch, active, head) + 2 * decoder.init_state(batch).nbytes()


def resident_bytes(module: torch.nn.Module) -> int:
    """Bytes of the distinct tensors (parameters and buffers) a module holds."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _proc_status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_growth(fn) -> tuple[float | None, float | None]:
    """(rise of peak RSS during fn() in MB, process peak RSS in MB); None where not measurable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")          # reset VmHWM to the current RSS
        resettable = True
    except OSError:
        resettable = False
    before = _proc_status_kb("VmRSS")
    fn()
    peak = _proc_status_kb("VmHWM")
    if peak is None:
        import resource
        return None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    growth = max(peak - before, 0) * 1e3 / MB if (resettable and before is not None) else None
    return growth, peak * 1e3 / MB


# --- timing -------------------------------------------------------------------------------------
@dataclass
class Variant:
    name: str
    model: object            # SpikingMambaForCausalLM or DecodeModel
    head: bool = True


class _Run:
    """One variant decoding a fixed token sequence (n, b), a chunk of steps at a time; the tokens are
    fixed in advance, so every variant does the same work whatever its logits."""

    def __init__(self, variant: Variant, tokens: torch.LongTensor, warmup: int):
        self.variant, self.tokens, self.t = variant, tokens, 0
        self.state = variant.model.init_state(tokens.shape[1])
        self.chunk(warmup)

    def chunk(self, steps: int) -> tuple[float, float]:
        """Wall-clock and CPU seconds for the next `steps` steps."""
        model, head = self.variant.model, self.variant.head
        _synchronize(self.tokens.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            token = self.tokens[self.t % self.tokens.shape[0]]
            if head:
                _, self.state = model.step(token, self.state)
            else:
                _, self.state = model.step(token, self.state, head=False)
            self.t += 1
        _synchronize(self.tokens.device)
        return time.perf_counter() - start, time.process_time() - start_cpu


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class DecodeResult:
    batch: int
    target_rate: Rate | None
    measured_rate: float | None
    tokens_per_s: dict[str, float]
    speedup: float | None
    speedup_blocks: float | None
    mb_per_token: dict[str, float]
    mb_per_token_blocks: dict[str, float]
    resident_mb: dict[str, float]
    state_mb: float
    decode_growth_mb: dict[str, float | None] = field(default_factory=dict)
    process_peak_mb: float | None = None
    cpu_tokens_per_s: dict[str, float] = field(default_factory=dict)   # tokens per CPU second
    speedup_cpu: float | None = None
    speedup_blocks_cpu: float | None = None

    @property
    def bound(self) -> float | None:
        """The bytes-bound speed-up of the whole step: dense bytes / sparse bytes per token."""
        return self.mb_per_token["dense"] / self.mb_per_token["sparse"] if "sparse" in self.mb_per_token else None

    @property
    def bound_blocks(self) -> float | None:
        mb = self.mb_per_token_blocks
        return mb["dense"] / mb["sparse"] if "sparse" in mb else None

    @property
    def efficiency(self) -> float | None:
        """Measured speed-up / bytes-bound speed-up, whole step."""
        return _efficiency(self.speedup, self.bound)

    @property
    def efficiency_blocks(self) -> float | None:
        return _efficiency(self.speedup_blocks, self.bound_blocks)

    @property
    def efficiency_cpu(self) -> float | None:
        """`efficiency` from CPU time."""
        return _efficiency(self.speedup_cpu, self.bound)

    @property
    def efficiency_blocks_cpu(self) -> float | None:
        return _efficiency(self.speedup_blocks_cpu, self.bound_blocks)


def _efficiency(speedup: float | None, bound: float | None) -> float | None:
    """Measured / bytes-bound speed-up; None where either is unknown."""
    return None if speedup is None or bound is None else speedup / bound


def _decoders(model: SpikingMambaForCausalLM, kind: str, **kwargs) -> dict[str, DecodeModel]:
    """kind's deployed decoders by step kernel: "fused" (the compiled step, where it runs) and "modules"."""
    decoders = {"modules": deploy(model, step_kernel="modules", **kwargs)}
    fused = deploy(model, **kwargs)
    if fused.step_kernel == "fused":
        decoders["fused"] = fused
    return {f"{kind} ({k})": d for k, d in decoders.items()}


def run_decode_benchmark(dense: SpikingMambaForCausalLM, student: SpikingMambaForCausalLM | None,
                         rates: list[Rate | None], batch_sizes: list[int], tokens: int = 8, repeats: int = 12,
                         warmup: int = 4, seed: int = 0, calibration_tokens: int = 256, log=print
                         ) -> list[DecodeResult]:
    """Interleaved timing of dense vs sparse decoding (see the module docstring).

    Each variant decodes `repeats` chunks of `tokens` steps (after `warmup` untimed steps), the
    variants taking turns chunk by chunk, so a burst of load from other processes hits one chunk
    of each; tokens/s comes from the median chunk time.
    `rates`: target firing rates to set on `student` (None: keep its own thresholds).
    """
    vocab = dense.config.vocab_size
    device = dense.lm_head.weight.device
    g = torch.Generator().manual_seed(seed)
    calib = torch.randint(0, vocab, (max(calibration_tokens // 64, 1), 64), generator=g).to(device)
    dense_decoders = _decoders(dense, "dense")
    dense_best = list(dense_decoders)[-1]                       # fused where it runs, else modules
    results = []
    for rate in rates:
        sparse_decoders: dict[str, DecodeModel] = {}
        if student is not None:
            if rate is not None:
                set_firing_rate(student, rate, calib)
            sparse_decoders = _decoders(student, "sparse", mode="sparse")
        sparse_name = list(sparse_decoders)[-1] if sparse_decoders else None
        sparse = sparse_decoders.get(sparse_name)
        for b in batch_sizes:
            ids = torch.randint(0, vocab, (warmup + tokens * repeats, b), generator=g).to(device)
            variants = [Variant("dense (model.step)", dense)]
            variants += [Variant(name, d) for name, d in dense_decoders.items()]
            variants += [Variant(name, d) for name, d in sparse_decoders.items()]
            variants.append(Variant("dense blocks", dense_decoders[dense_best], head=False))
            if sparse is not None:
                variants.append(Variant("sparse blocks", sparse, head=False))
                sparse.reset_counts()
            runs = {v.name: _Run(v, ids, warmup) for v in variants}
            times: dict[str, list[tuple[float, float]]] = {v.name: [] for v in variants}
            for _ in range(repeats):
                for name, run in runs.items():
                    times[name].append(run.chunk(tokens))
            tps = {name: b * tokens / statistics.median(wall for wall, _ in ts) for name, ts in times.items()}
            cpu_tps = {name: b * tokens / max(statistics.median(cpu for _, cpu in ts), 1e-9)
                       for name, ts in times.items()}
            measured = None
            nonzero: dict[str, tuple[float, float]] = {}
            if sparse is not None:
                measured = sparse.firing_rate()
                nonzero = nonzero_per_step(sparse, b)
            best_dense = max(t for name, t in tps.items() if name.startswith("dense ("))
            best_dense_cpu = max(t for name, t in cpu_tps.items() if name.startswith("dense ("))
            dense_deploy = dense_decoders[dense_best]
            mb = {"dense": bytes_per_step(dense_deploy, b) / b / MB}
            mb_blocks = {"dense": bytes_per_step(dense_deploy, b, head=False) / b / MB}
            resident = {"dense": resident_bytes(dense_deploy) / MB}
            growth = {}
            growth["dense"], peak = peak_rss_growth(lambda: runs[dense_best].chunk(tokens))
            if sparse is not None:
                mb["sparse"] = bytes_per_step(sparse, b, nonzero) / b / MB
                mb_blocks["sparse"] = bytes_per_step(sparse, b, nonzero, head=False) / b / MB
                resident["sparse"] = resident_bytes(sparse) / MB
                growth["sparse"], peak = peak_rss_growth(lambda: runs[sparse_name].chunk(tokens))
            result = DecodeResult(
                batch=b, target_rate=rate, measured_rate=measured, tokens_per_s=tps,
                speedup=tps[sparse_name] / best_dense if sparse is not None else None,
                speedup_blocks=tps["sparse blocks"] / tps["dense blocks"] if sparse is not None else None,
                mb_per_token=mb, mb_per_token_blocks=mb_blocks, resident_mb=resident,
                state_mb=dense.init_state(b).nbytes() / MB, decode_growth_mb=growth, process_peak_mb=peak,
                cpu_tokens_per_s=cpu_tps,
                speedup_cpu=cpu_tps[sparse_name] / best_dense_cpu if sparse is not None else None,
                speedup_blocks_cpu=cpu_tps["sparse blocks"] / cpu_tps["dense blocks"] if sparse is not None else None)
            results.append(result)
            log(format_row(result))
        del sparse, sparse_decoders
    return results


def break_even(results: list[DecodeResult], batch: int, key: str = "speedup") -> float | None:
    """Firing rate where the speed-up crosses 1, by linear interpolation between measured rates."""
    pts = sorted((r.measured_rate, getattr(r, key)) for r in results
                 if r.batch == batch and r.measured_rate is not None and getattr(r, key) is not None)
    for (r0, s0), (r1, s1) in zip(pts, pts[1:]):
        if (s0 - 1) * (s1 - 1) <= 0 and s0 != s1:
            return r0 + (1 - s0) * (r1 - r0) / (s1 - s0)
    return None


TABLE_HEADERS = ("batch", "target rate", "measured rate", "dense tok/s (model.step / modules / fused)",
                 "sparse tok/s (modules / fused)", "speed-up", "bytes bound", "efficiency", "speed-up blocks",
                 "bytes bound blocks", "efficiency blocks", "speed-up (CPU time)", "efficiency (CPU time)",
                 "speed-up blocks (CPU time)", "efficiency blocks (CPU time)", "MB/token dense / sparse",
                 "resident MB dense / sparse", "decode growth MB dense / sparse")


def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def format_row(r: DecodeResult) -> str:
    t = r.tokens_per_s
    target = ("own" if r.target_rate is None else str(r.target_rate) if isinstance(r.target_rate, SiteRates)
              else f"{r.target_rate:.2f}")

    def tokens(kind, kernels):
        return " / ".join(_f(t.get(f"{kind} ({k})"), ".1f") for k in kernels)

    def x(v):
        return _f(v, ".2f") + ("x" if v is not None else "")

    def pct(v):
        return "-" if v is None else f"{100 * v:.0f}%"
    cells = [str(r.batch), target, _f(r.measured_rate, ".3f"), tokens("dense", ("model.step", "modules", "fused")),
             tokens("sparse", ("modules", "fused")), x(r.speedup), x(r.bound), pct(r.efficiency),
             x(r.speedup_blocks), x(r.bound_blocks), pct(r.efficiency_blocks), x(r.speedup_cpu), pct(r.efficiency_cpu),
             x(r.speedup_blocks_cpu), pct(r.efficiency_blocks_cpu),
             f"{r.mb_per_token['dense']:.1f} / {_f(r.mb_per_token.get('sparse'), '.1f')}",
             f"{r.resident_mb['dense']:.0f} / {_f(r.resident_mb.get('sparse'), '.0f')}",
             f"{_f(r.decode_growth_mb.get('dense'), '.1f')} / {_f(r.decode_growth_mb.get('sparse'), '.1f')}"]
    return "| " + " | ".join(cells) + " |"


def markdown_table(results: list[DecodeResult]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADERS) + " |", "|" + "---|" * len(TABLE_HEADERS)]
    lines += [format_row(r) for r in results]
    return "\n".join(lines)


def results_to_json(results: list[DecodeResult]) -> list[dict]:
    return [{**asdict(r), "bound": r.bound, "efficiency": r.efficiency, "bound_blocks": r.bound_blocks,
             "efficiency_blocks": r.efficiency_blocks, "efficiency_cpu": r.efficiency_cpu,
             "efficiency_blocks_cpu": r.efficiency_blocks_cpu} for r in results]
