"""The SGC schedule: the weight lambda of the training-only SGC path at each optimiser step.

The path itself is the neuron's (`silif.sgc_path`, docs/METHOD.md "SGC"); a stage sets its weight
before every step with `apply_sgc`:

    lambda(step) = start * (1 - p / until)   while p = step / total_steps < until,   then 0
"""

from __future__ import annotations

from torch import nn


def sgc_lambda(step: int, total_steps: int, start: float, until: float) -> float:
    """SGC weight at optimiser step `step`: linear from `start` to 0 at `until * total_steps`, then 0."""
    progress = step / total_steps
    return 0.0 if progress >= until else start * (1.0 - progress / until)
