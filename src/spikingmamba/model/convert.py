"""Teacher -> spiking student: `to_spiking`, with thresholds calibrated on teacher activations."""

from __future__ import annotations

import copy

import torch

from spikingmamba.model.config import SpikingMambaConfig
from spikingmamba.model.lm import SpikingMambaForCausalLM
from spikingmamba.neurons import DEFAULT_SITES, SpikingConfig, iter_sites
from spikingmamba.neurons.calibration import mse_optimal_theta, rate_aware_theta

MAX_CALIBRATION_ROWS = 8192


def to_spiking(teacher: SpikingMambaForCausalLM, levels: int = 4, neuron: str = "silif",
               sites: tuple[str, ...] | str = DEFAULT_SITES, per_channel: bool = True,
               surrogate_alpha: float = 1.0, site_levels: dict[str, int] | None = None,
               calibration_ids: torch.LongTensor | None = None,
               calibration_rates: dict[str, float] | None = None) -> SpikingMambaForCausalLM:
    """A copy of the dense `teacher` with a spiking neuron before each chosen projection (`sites`:
    names from spikingmamba.neurons.sites, or "all").

    `site_levels` ({site: D_site}, each <= `levels`) gives some sites a smaller largest spike.
    With `calibration_ids` (b, l), each neuron's theta is the MSE-optimal scale of the teacher's
    activations at its site; otherwise theta = 1. `calibration_rates` ({site: mean |s|}) calibrates
    those sites rate-aware instead (`rate_aware_theta`): they start at that firing rate.
    """
    if teacher.is_spiking:
        raise ValueError("to_spiking expects a dense teacher; this model already has spiking neurons")
    spiking = SpikingConfig(levels=levels, neuron=neuron, sites=sites, per_channel=per_channel,
                            surrogate_alpha=surrogate_alpha, site_levels=dict(site_levels or {}))
    config = SpikingMambaConfig(**{**teacher.config.to_diff_dict(), "spiking": spiking.to_dict()})
    student = SpikingMambaForCausalLM(config).to(device=teacher.lm_head.weight.device, dtype=teacher.lm_head.weight.dtype)
    student.load_state_dict(copy.deepcopy(teacher.state_dict()), strict=False)
    if config.tie_word_embeddings:
        student.tie_weights()
    if calibration_ids is not None:
        calibrate(student, teacher, calibration_ids, calibration_rates)
    return student.train(teacher.training)


@torch.no_grad()
def collect_site_inputs(teacher: SpikingMambaForCausalLM, input_ids: torch.LongTensor,
                        sites: tuple[str, ...]) -> dict[tuple[int, str], torch.Tensor]:
    """Teacher activations entering each chosen site, keyed (layer, site) (layer None for the head),
    as (rows, channels)."""
    captured: dict[tuple[int, str], list[torch.Tensor]] = {}
    handles = []
    for ref in iter_sites(teacher, with_dense=True):
        if ref.site in sites:
            def hook(_m, args, key=(ref.layer, ref.site)):
                captured.setdefault(key, []).append(args[0].detach().flatten(0, -2).float())
            handles.append(ref.projection.register_forward_pre_hook(hook))
    try:
        teacher.eval()(input_ids)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for key, chunks in captured.items():
        rows = torch.cat(chunks)
        if rows.shape[0] > MAX_CALIBRATION_ROWS:
            rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))[:MAX_CALIBRATION_ROWS]]
        out[key] = rows
    return out


@torch.no_grad()
def calibrate(student: SpikingMambaForCausalLM, teacher: SpikingMambaForCausalLM,
              input_ids: torch.LongTensor, rates: dict[str, float] | None = None) -> None:
    """Set every neuron's theta from the teacher's activations at its site: MSE-optimal, or at the
    sites in `rates` rate-aware (`rate_aware_theta`, that mean |s| per layer's neuron group)."""
    sc = student.spiking_config
    inputs = collect_site_inputs(teacher, input_ids, sc.sites)
    rates = rates or {}
    for ref in iter_sites(student):
        x = inputs[ref.layer, ref.site]
        if ref.site in rates:
            theta = rate_aware_theta(x, ref.neuron.lo, ref.neuron.hi, rates[ref.site],
                                     ref.projection.weight.float().pow(2).sum(0), sc.per_channel)
        else:
            theta = mse_optimal_theta(x, ref.neuron.lo, ref.neuron.hi, sc.per_channel)
        ref.neuron.theta.copy_(theta.to(ref.neuron.theta.dtype))
