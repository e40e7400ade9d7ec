"""Measured energy: run token ids through the student, count its spikes, price both models.

The teacher's ops do not depend on the data (all dense), so they come from its shapes; the
student's accumulates come from the spikes its neurons emit on the text
(`record_spikes()` + `firing_stats()`). Both models also get their next-token loss on the same
text, so an energy ratio is never shown without the quality it costs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spikingmamba.energy.counting import LayerSpikes, MambaShape, SiteSpikes
from spikingmamba.energy.report import EnergyReport, build_report
from spikingmamba.energy.tables import EnergyTable
from spikingmamba.errors import UserError
from spikingmamba.neurons.sites import sites_by_name

def spikes_from_stats(stats: dict[str, dict], n_layer: int) -> tuple[list[LayerSpikes | None], LayerSpikes | None]:
    """Per-block LayerSpikes and the head's (None where no neuron fires there) from `firing_stats()`
    (keys are the neurons' module names, `spikingmamba.neurons.sites.neuron_name`)."""
    per_layer: list[dict] = [{} for _ in range(n_layer)]
    head: dict = {}
    known = sites_by_name(n_layer)
    for name, st in stats.items():
        if name not in known:
            raise ValueError(f"neuron {name!r} is not at a neuron site of a {n_layer}-block model; cannot price it")
        layer, site = known[name]
        spikes = SiteSpikes(firing_rate=float(st["firing_rate"]), mean_abs_spike=float(st["mean_abs_spike"]))
        (head if layer is None else per_layer[layer])[site] = spikes
    return [LayerSpikes(**sites) if sites else None for sites in per_layer], (LayerSpikes(**head) if head else None)


@torch.no_grad()
def _score(model, ids: torch.Tensor, context: int) -> tuple[float, int, list[torch.Tensor]]:
    """Summed next-token NLL, its token count, and the argmax predictions, in windows of `context`."""
    nll, count, preds = 0.0, 0, []
    for start in range(0, ids.shape[1], context):
        window = ids[:, start:start + context]
        logits = model(window).logits                                        # (1, l, V)
        if window.shape[1] > 1:
            nll += float(F.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum"))
            count += window.shape[1] - 1
        preds.append(logits[0].argmax(-1))
    return nll, count, preds


def measure_report(student, ids: torch.Tensor, table: EnergyTable, *, teacher=None, context: int = 1024,
                   model_name: str = "model", teacher_name: str | None = None) -> EnergyReport:
    """Energy report of `student` on token ids (1, T); `teacher` (optional) only adds its loss and
    must have the student's shapes."""
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 2:
        raise UserError(f"need at least 2 tokens of text in one sequence, got shape {tuple(ids.shape)}")
    shape = MambaShape.from_config(student.config)
    notes = []
    if teacher is not None and MambaShape.from_config(teacher.config) != shape:
        raise UserError(f"teacher {teacher_name} and model {model_name} have different shapes "
                        f"({MambaShape.from_config(teacher.config)} vs {shape}); the energy ratio needs a "
                        "student made from this teacher")
    student.eval()
    with student.record_spikes():
        nll, count, student_preds = _score(student, ids, context)
        stats = student.firing_stats()
    layer_spikes, head_spikes = spikes_from_stats(stats, shape.n_layer)
    levels = student.spiking_config.levels if student.is_spiking else 1
    if not student.is_spiking:
        notes.append("the model has no spiking neurons: it is priced as dense, ratio 1")
    quality = {"student_loss": nll / count, "student_ppl": math.exp(min(nll / count, 50.0))}
    if teacher is not None:
        teacher.eval()
        t_nll, _, teacher_preds = _score(teacher, ids, context)
        agree = sum(int((a == b).sum()) for a, b in zip(student_preds, teacher_preds))
        quality.update(teacher_loss=t_nll / count, teacher_ppl=math.exp(min(t_nll / count, 50.0)),
                       top1_agreement=agree / ids.shape[1])
    notes.append(f"spikes counted in windows of {context} tokens (state reset per window), integer spike mode "
                 "(the binary micro-step train has exactly |s| spikes per neuron, so the counts are the same)")
    return build_report(shape, table, layer_spikes, head_spikes=head_spikes, levels=levels, mode="measured",
                        model=model_name, teacher=teacher_name, tokens=int(ids.shape[1]), notes=notes,
                        quality=quality)
