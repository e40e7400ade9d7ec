"""The SGC schedule: the weight lambda of the training-only SGC path at each optimiser step.

The path itself is the neuron's (`silif.sgc_path`, docs/METHOD.md "SGC"); a stage whose config
composes `SGCSchedule` sets its weight before every step with `apply_sgc`:

    lambda(step) = sgc_start * (1 - p / sgc_until)   while p = step / total_steps < sgc_until,   then 0
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from spikingmamba.neurons.config import SGC_MODES
from spikingmamba.config import option


def sgc_lambda(step: int, total_steps: int, start: float, until: float) -> float:
    """SGC weight at optimiser step `step`: linear from `start` to 0 at `until * total_steps`, then 0."""
    progress = step / total_steps
    return 0.0 if progress >= until else start * (1.0 - progress / until)


@dataclass
class SGCSchedule:
    """The SGC options of a training stage (distill: on by default; rl: off)."""

    sgc: bool = option(True, "use the training-only SGC path (--no-sgc: the ablation without it)")
    sgc_start: float = option(0.5, "SGC weight lambda at the first step", ge=0, le=1)
    sgc_until: float = option(0.5, "fraction of the run after which lambda is 0", gt=0, le=1)
    sgc_mode: str = option("residual", "residual: add lambda * (x - x_hat) in the forward pass; gradient: "
                           "forward stays spiking, only the gradient is smoothed", choices=SGC_MODES)


def apply_sgc(model: nn.Module, schedule: SGCSchedule, step: int, total_steps: int) -> dict[str, float]:
    """Set `model`'s SGC weight and mode for optimiser step `step`; returns {"sgc": lambda} to log."""
    lam = sgc_lambda(step, total_steps, schedule.sgc_start, schedule.sgc_until) if schedule.sgc else 0.0
    model.set_sgc(lam, schedule.sgc_mode)
    return {"sgc": lam}
