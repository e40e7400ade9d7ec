"""Mamba-1 mixer with optional spiking neurons before its projections.

Glossary (Gu & Dao 2023; SpikingMamba, Huang et al. 2025):
    d_model / d_inner / d_state / dt_rank   hidden size, expand * d_model, N, rank of Delta
    x, z        the two halves of in_proj: SSM branch and gate
    Delta, B, C selective parameters from x_proj (Delta through dt_proj + softplus)
    A = -exp(A_log), D skip
    in_neuron, x_neuron, dt_neuron, out_neuron
                SI-LIF neurons whose integer spikes drive in_proj, x_proj, dt_proj, out_proj; each is
                None (a dense projection) unless its site is chosen (spikingmamba.neurons.sites)

Every projection is called as a module (never through `.weight` in a fused kernel), so the
neurons cannot be skipped, and a site's projection goes through `project`, so deployment can swap
in its sparse kernel (spikingmamba.inference.deploy) and `step` stays the one decode step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spikingmamba.model.config import SpikingMambaConfig
from spikingmamba.model.state import LayerState
from spikingmamba.neurons import SpikingConfig, SpikingNeuron, spiking_linear
from spikingmamba.neurons.sites import BLOCK_SITES, NEURON_ATTR
from spikingmamba.ops.causal_conv import causal_conv_silu
from spikingmamba.ops.selective_scan import selective_scan, selective_state_update


class MambaMixer(nn.Module):
    def __init__(self, config: SpikingMambaConfig):
        super().__init__()
        d_model, d_inner, n = config.hidden_size, config.intermediate_size, config.state_size
        self.d_inner, self.d_state, self.dt_rank = d_inner, n, config.time_step_rank
        self.conv_kernel = config.conv_kernel
        self.scan_backend = config.scan_backend

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=config.use_bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, config.conv_kernel, groups=d_inner,
                                padding=config.conv_kernel - 1, bias=config.use_conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=config.use_bias)
        for site in BLOCK_SITES:                    # in_neuron, x_neuron, ...: None (dense) until add_neurons
            setattr(self, site.neuron, None)
        if config.spiking is not None:
            self.add_neurons(config.spiking_config)

    def add_neurons(self, sc: SpikingConfig) -> None:
        """A neuron on the input of every block projection named in `sc.sites`."""
        for site in BLOCK_SITES:
            channels = getattr(self, site.name).in_features
            neuron = SpikingNeuron.from_config(channels, sc, site.name) if site.name in sc.sites else None
            setattr(self, site.neuron, neuron)

    def project(self, site: str, x: torch.Tensor) -> torch.Tensor:
        """The projection of neuron site `site` applied to x, through the site's neuron if it has one."""
        return spiking_linear(getattr(self, NEURON_ATTR[site]), getattr(self, site), x)

    def ssm_A(self) -> torch.Tensor:
        """A = -exp(A_log) (d_inner, n), float32."""
        return -torch.exp(self.A_log.float())

    def conv_taps(self) -> torch.Tensor:
        """The depthwise conv1d's weights as (d_inner, kernel), for the one-token conv of `step`."""
        return self.conv1d.weight[:, 0, :]

    def init_state(self, batch_size: int) -> LayerState:
        """The state before the first token: zero conv window and zero SSM state (float32)."""
        w = self.conv1d.weight
        return LayerState(conv=w.new_zeros(batch_size, self.d_inner, self.conv_kernel - 1),
                          ssm=w.new_zeros(batch_size, self.d_inner, self.d_state, dtype=torch.float32))

    def _ssm_params(self, xc: torch.Tensor):
        """Delta before its softplus, B, C from the conv output xc (..., d_inner)."""
        dbc = self.project("x_proj", xc)                                      # (..., dt_rank + 2n)
        dt, B, C = torch.split(dbc, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return self.project("dt_proj", dt), B, C

    def forward(self, hidden: torch.Tensor, return_state: bool = False, state: LayerState | None = None):
        """hidden (b, l, d_model) -> (b, l, d_model) [, LayerState after the last position].

        `state` (from `step`, `init_state` or a forward with `return_state`) continues a sequence:
        its conv window is put before the conv input and its SSM state starts the scan, so the
        result equals `step` over the l tokens one by one."""
        length = hidden.shape[1]
        xz = self.project("in_proj", hidden)                                  # (b, l, 2 d_inner)
        x, z = xz.chunk(2, dim=-1)                                            # (b, l, d_inner) x2
        conv_in = x.transpose(1, 2)                                           # (b, d_inner, l), a view
        if state is None:
            xc = causal_conv_silu(x, self.conv1d.weight, self.conv1d.bias)   # (b, l, d_inner)
        else:
            window = torch.cat([state.conv.transpose(1, 2).to(x.dtype), x], dim=1)  # (b, k - 1 + l, d_inner)
            conv_in = window.transpose(1, 2)                                  # (b, d_inner, k - 1 + l), a view
            xc = causal_conv_silu(window, self.conv1d.weight, self.conv1d.bias)[:, window.shape[1] - length :]
        dt, B, C = self._ssm_params(xc)                                       # (b,l,d_inner), (b,l,n) x2
        # A = -exp(A_log) (ssm_A), Delta = softplus(dt) (in float32, as under CUDA autocast), the gate y * silu(z):
        # in the scan's kernel where it can
        y, h_last = selective_scan(xc, dt, self.A_log.float(), B, C, self.D, backend=self.scan_backend,
                                   h0=None if state is None else state.ssm, z=z, delta_softplus=True,
                                   A_is_log=True)                             # (b, l, d_inner)
        out = self.project("out_proj", y)                                     # (b, l, d_model)
        if not return_state:
            return out
        k = self.conv_kernel - 1
        conv = F.pad(conv_in, (max(k - conv_in.shape[-1], 0), 0))[..., -k:] if k else x.new_zeros(x.shape[0], self.d_inner, 0)
        return out, LayerState(conv=conv.detach(), ssm=h_last.detach())

    def step(self, hidden: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """One token: hidden (b, d_model) -> (b, d_model), with the constant-size state updated."""
        xz = self.project("in_proj", hidden)                                  # (b, 2 d_inner)
        x, z = xz.chunk(2, dim=-1)                                            # (b, d_inner) x2
        window = torch.cat([state.conv, x.unsqueeze(-1)], dim=-1)             # (b, d_inner, kernel)
        xc = (window * self.conv_taps()).sum(-1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias
        xc = F.silu(xc)                                                       # (b, d_inner)
        dt, B, C = self._ssm_params(xc)
        A = self.ssm_A()
        y, h = selective_state_update(state.ssm, xc, F.softplus(dt.float()), A, B, C, self.D)
        y = y * F.silu(z)
        out = self.project("out_proj", y)                                     # (b, d_model)
        return out, LayerState(conv=window[..., 1:], ssm=h)
