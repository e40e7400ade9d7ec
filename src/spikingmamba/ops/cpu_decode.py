"""Compiled CPU decode step: `cpu_decode.cpp` behind ctypes, one call per token for the whole model.

The kernel (float32, CPU) runs every block of a deployed Mamba LM and its head in one call: the
per-layer small operations (RMSNorm, conv window, SiLU, softplus, the SSM state update, the gate)
and every projection, a spiking one with its neuron folded in (spikes, the active input channels
and the accumulation of their weight rows in one pass). Nothing is allocated per step but the output:
the scratch buffers live in the library, and a new state is written into state buffers nobody
holds any more (`_Buffers`), not into the state stepped from. See the .cpp for the math and layout.

`FusedStep` describes a model once (pointers into its tensors, which it keeps alive); its `step`
is `MambaMixer.step` through the deployed modules, computed in one call. That module path is the
oracle (tests/test_inference.py); `project_ref` is the oracle of one projection (`project`).
Built and cached by `ops/native.py`; where it cannot be built, `library()` returns None after one
warning and the decoder uses its module path.
"""

from __future__ import annotations

import ctypes
import sys
import weakref
from dataclasses import dataclass

import torch

from spikingmamba.model.state import LayerState, MambaState
from spikingmamba.ops.native import NativeLibrary

COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fPIC", "-std=c++17")

_P, _I64, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float


class _Projection(ctypes.Structure):
    _fields_ = [("wt", _P), ("bias", _P), ("theta", _P), ("theta_numel", _I64), ("c_in", _I64), ("c_out", _I64),
                ("lo", _F32), ("hi", _F32), ("counts", _P)]


class _Layer(ctypes.Structure):
    _fields_ = [("norm_w", _P), ("in_proj", _Projection), ("x_proj", _Projection), ("dt_proj", _Projection),
                ("out_proj", _Projection), ("taps", _P), ("conv_bias", _P), ("A", _P), ("D", _P)]


class _Model(ctypes.Structure):
    _fields_ = [("d_model", _I64), ("d_inner", _I64), ("n", _I64), ("dt_rank", _I64), ("kernel", _I64),
                ("vocab", _I64), ("n_layer", _I64), ("eps", _F32), ("embeddings", _P), ("layers", _P),
                ("norm_f", _P), ("head", _Projection)]


def _declare(lib: ctypes.CDLL) -> None:
    lib.decode_step.argtypes = [_P, _P, _I64, _P, _P, _P, _P, _P, ctypes.c_int, ctypes.c_int]
    lib.decode_step.restype = ctypes.c_int
    lib.project_f32.argtypes = [_P, _P, _I64, _P, ctypes.c_int]
    lib.project_f32.restype = None


LIBRARY = NativeLibrary("cpu_decode", "compiled decode step", COMPILE_FLAGS, _declare,
                        "the torch modules' decode step")


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None (after one warning) where they cannot be built."""
    return LIBRARY.load()


@dataclass
class ProjectionSpec:
    """One projection as the kernel reads it: y = bias + sum_i v_i weight_t[i], v = x (dense) or the
    spikes clip(round(x / theta), lo, hi); `counts` (3,) int64 accumulates non-zero spikes, distinct
    active rows and inputs seen (spiking only)."""

    weight_t: torch.Tensor                 # (c_in, c_out) float32, contiguous
    bias: torch.Tensor | None = None       # (c_out,)
    theta: torch.Tensor | None = None      # (c_in,) or (1,), clamped; None: dense
    lo: int = 0
    hi: int = 0
    counts: torch.Tensor | None = None     # (3,) int64

    def struct(self) -> _Projection:
        for t in (self.weight_t, self.bias, self.theta):
            if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous()):
                raise ValueError("the compiled decode step needs contiguous float32 CPU tensors")
        c_in, c_out = self.weight_t.shape
        return _Projection(self.weight_t.data_ptr(), _ptr(self.bias), _ptr(self.theta),
                           0 if self.theta is None else self.theta.numel(), c_in, c_out, float(self.lo),
                           float(self.hi), _ptr(self.counts))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def project(spec: ProjectionSpec, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """The kernel of one projection: x (b, c_in) float32 -> y (b, c_out)."""
    x = x.contiguous()
    if x.dim() != 2 or x.shape[1] != spec.weight_t.shape[0] or x.dtype != torch.float32:
        raise ValueError(f"x must be float32 (batch, {spec.weight_t.shape[0]}), got {tuple(x.shape)} {x.dtype}")
    y = x.new_empty(x.shape[0], spec.weight_t.shape[1])
    struct = spec.struct()
    library().project_f32(ctypes.byref(struct), x.data_ptr(), x.shape[0], y.data_ptr(),
                          threads or torch.get_num_threads())
    return y


def project_ref(spec: ProjectionSpec, x: torch.Tensor) -> torch.Tensor:
    """The plain torch twin of `project` (and its test oracle)."""
    v = x if spec.theta is None else torch.round(x / spec.theta).clamp(spec.lo, spec.hi)
    y = v @ spec.weight_t
    return y if spec.bias is None else y + spec.bias


@dataclass
class LayerSpec:
    norm_weight: torch.Tensor              # (d_model,)
    in_proj: ProjectionSpec
    x_proj: ProjectionSpec
    dt_proj: ProjectionSpec
    out_proj: ProjectionSpec
    taps: torch.Tensor                     # (d_inner, kernel)
    conv_bias: torch.Tensor | None         # (d_inner,)
    A: torch.Tensor                        # (d_inner, n)
    D: torch.Tensor                        # (d_inner,)


class KernelState(MambaState):
    """A `MambaState` handed out by `FusedStep.step`: its layers are views of one buffer pair in the
    kernel's layout (`_Buffers`), shaped as every MambaState's, and a later step from it passes the
    kernel their pointers (nothing to check or copy)."""

    def __init__(self, layers: list[LayerState], buffers: _Buffers):
        super().__init__(layers)
        self.buffers = buffers


class _Buffers:
    """The storage of one state in the kernel's layout: conv (layers, b, K-1, d_inner) and ssm (layers, b,
    n, d_inner), channels last; the per-layer views a `MambaState` shows, (b, d_inner, K-1) and
    (b, d_inner, n) (transposed, not contiguous); the kernel's pointer arrays.

    A step writes its new state into buffers nobody can see (`free`): the state last handed out over
    them is gone and no one holds its layer list, a LayerState, a tensor or a view of one. So a state
    a caller keeps is never overwritten, and a decode loop that drops each state after the next step
    alternates between two buffers, allocating nothing per step."""

    def __init__(self, key: object, n_layer: int, batch: int, d_inner: int, kernel: int, n: int):
        self.key, self.batch = key, batch
        self.conv = torch.empty(n_layer, batch, kernel - 1, d_inner)
        self.ssm = torch.empty(n_layer, batch, n, d_inner)
        self.pointers = (_pointers(self.conv), _pointers(self.ssm))
        self.views = tuple((c.transpose(1, 2), m.transpose(1, 2)) for c, m in zip(self.conv.unbind(0),
                                                                                self.ssm.unbind(0)))
        self.layers = [LayerState(c, m) for c, m in self.views]
        self._parts = (self.layers, *self.layers, *(t for pair in self.views for t in pair))
        self._storages = tuple(t.untyped_storage()._cdata for t in (self.conv, self.ssm))
        self.handed_out: weakref.ref | None = None
        self._baseline = self._holders()

    def _holders(self) -> tuple[int, ...]:
        """Reference counts of the parts a state over these buffers shows (the layer list, its LayerStates,
        their tensors) and the use counts of the two storages (every view of them holds one)."""
        return (*map(sys.getrefcount, self._parts), *map(torch._C._storage_Use_Count, self._storages))

    def free(self) -> bool:
        return (self.handed_out is None or self.handed_out() is None) and self._holders() == self._baseline

    def shows(self, state: MambaState) -> bool:
        """`state` is the one handed out over these buffers, unchanged (its layers still these views)."""
        return state.layers is self.layers and all(s.conv is c and s.ssm is m
                                                    for s, (c, m) in zip(self.layers, self.views))

    def hand_out(self) -> KernelState:
        state = KernelState(self.layers, self)
        self.handed_out = weakref.ref(state)
        return state


def _pointers(flat: torch.Tensor) -> ctypes.Array:
    """One pointer per layer (the first dimension) into a contiguous tensor."""
    step = flat.stride(0) * flat.element_size()
    return (_P * flat.shape[0])(*range(flat.data_ptr(), flat.data_ptr() + flat.shape[0] * step, step))


class FusedStep:
    """The whole-model decode step of one deployed model, float32 on the CPU (see the module docstring).

    Every tensor the kernel reads is referenced here, so its pointers stay valid for the object's
    lifetime; rebuild it after changing the model's tensors. The conv taps and A are kept transposed
    (the kernel's layout); states live in `_Buffers`, a few of which are kept for reuse."""

    POOL = 3                     # buffers kept for reuse: a state in, the state out, one a caller still holds

    def __init__(self, embeddings: torch.Tensor, layers: list[LayerSpec], norm_f: torch.Tensor, eps: float,
                 head: ProjectionSpec):
        lib = library()
        if lib is None:
            raise RuntimeError("the compiled decode step is unavailable")
        self._lib = lib
        first = layers[0]
        self.d_model = embeddings.shape[1]
        self.d_inner, self.n = first.A.shape
        self.kernel = first.taps.shape[1]
        self.vocab = embeddings.shape[0]
        small = [embeddings, norm_f] + [t for spec in layers for t in (spec.norm_weight, spec.taps, spec.conv_bias,
                                                                         spec.A, spec.D) if t is not None]
        for t in small:
            if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
                raise ValueError("the compiled decode step needs contiguous float32 CPU tensors")
        transposed = [(s.taps.t().contiguous(), s.A.t().contiguous()) for s in layers]   # (K, d_inner), (n, d_inner)
        self._keep = (embeddings, layers, norm_f, head, transposed)
        self._layers = (_Layer * len(layers))(*[
            _Layer(s.norm_weight.data_ptr(), s.in_proj.struct(), s.x_proj.struct(), s.dt_proj.struct(),
                   s.out_proj.struct(), taps.data_ptr(), _ptr(s.conv_bias), A.data_ptr(), s.D.data_ptr())
            for s, (taps, A) in zip(layers, transposed)])
        self._model = _Model(self.d_model, self.d_inner, self.n, first.dt_proj.weight_t.shape[0], self.kernel,
                             self.vocab, len(layers), float(eps), embeddings.data_ptr(),
                             ctypes.addressof(self._layers), norm_f.data_ptr(), head.struct())
        self.n_layer = len(layers)
        self.head_out = head.weight_t.shape[1]
        self._key = object()         # marks the buffers this object made
        self._pool: list[_Buffers] = []

    def _free_buffers(self, batch: int, busy: _Buffers | None) -> _Buffers:
        """Kept buffers for `batch` that nobody can see (not `busy`), else new ones (kept in their place)."""
        for buffers in self._pool:
            if buffers is not busy and buffers.batch == batch and buffers.free():
                return buffers
        buffers = _Buffers(self._key, self.n_layer, batch, self.d_inner, self.kernel, self.n)
        if len(self._pool) >= self.POOL:
            self._pool.remove(next(b for b in self._pool if b is not busy))
        self._pool.append(buffers)
        return buffers

    def _load(self, state: MambaState, batch: int) -> _Buffers:
        """Free buffers holding a copy of any other state (checked), in the kernel's layout."""
        shapes = ((batch, self.d_inner, self.kernel - 1), (batch, self.d_inner, self.n))
        if len(state.layers) != self.n_layer:
            raise ValueError(f"the state must have {self.n_layer} layers, got {len(state.layers)}")
        for layer in state.layers:
            for t, shape in zip((layer.conv, layer.ssm), shapes):
                if tuple(t.shape) != shape or t.device.type != "cpu":
                    raise ValueError(f"state tensors must be {shape} on the CPU, got {tuple(t.shape)}")
        buffers = self._free_buffers(batch, None)
        for layer, (conv, ssm) in zip(state.layers, buffers.views):
            conv.copy_(layer.conv)
            ssm.copy_(layer.ssm)
        return buffers

    def step(self, token_ids: torch.Tensor, state: MambaState, head: bool, threads: int
             ) -> tuple[torch.Tensor, KernelState]:
        """token_ids (b,) -> out (b, vocab) or (b, d_model), and the new state. `state` is left as it
        was: a state this object handed out is read in place, any other one is checked and copied."""
        b = token_ids.shape[0]
        buffers = getattr(state, "buffers", None)
        if not (isinstance(state, KernelState) and buffers.key is self._key and buffers.batch == b
                and buffers.shows(state)):
            buffers = self._load(state, b)
        ids = token_ids if token_ids.dtype == torch.long and token_ids.is_contiguous() else \
            token_ids.to(torch.long).contiguous()
        out = torch.empty(b, self.head_out if head else self.d_model)
        new = self._free_buffers(b, buffers)
        failed = self._lib.decode_step(ctypes.byref(self._model), ids.data_ptr(), b, buffers.pointers[0],
                                       buffers.pointers[1], new.pointers[0], new.pointers[1], out.data_ptr(),
                                       int(head), threads)
        if failed:
            raise ValueError(f"token ids must lie in [0, {self.vocab})")
        return out, new.hand_out()
