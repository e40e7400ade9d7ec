"""Address-event export of a spiking model's binary spike trains, and its reader.

File layout (`.npz`, a zip of numpy arrays, deflate-compressed; `numpy.load` reads it):

    header     uint8 array: UTF-8 JSON (see below)
    token_ids  int64 (T,): the tokens of the exported text, in order
    events     structured array (E,), one row per binary spike, little-endian, packed:
                   token     <u4   position of the token in the text (0 .. T-1)
                   stream    <u2   which neuron population: index into header["streams"]
                   micro     u1    micro-timestep 0 .. D-1 inside the token
                   polarity  i1    +1 or -1 (the sign of the integer activation)
                   neuron    <u2   channel index inside the stream (<u4 if a stream has > 65535)
               sorted by (token, stream, micro, neuron): the order in which the spikes happen
               (token by token, layer by layer in forward order, micro-step by micro-step).

One stream per spiking neuron group, in forward order: per block (layer N) its spiking sites among
in_proj, x_proj, dt_proj, out_proj, then the LM head's (layer null) when it spikes. The global
timestep of an event is token * D + micro. An integer activation s of a neuron fires on the first |s| micro-steps of
its token with polarity sign(s) (integrate-and-fire without leak, spikingmamba.neurons.spike_train),
so the number of events of a stream equals its `firing_stats()["spike_count"]` (sum of |s|) on
the same text, and decoding the events gives back the integer spikes exactly.

Header JSON: {"format": "spikingmamba-aer", "version": 1, "levels": D, "neuron": kind,
"n_tokens": T, "streams": [{"name", "layer", "site", "channels", "spike_count", "numel"}, ...],
"event_fields": [...], "source": model path or null, "tokens": [token strings] or null}.
The spikes come from one full-sequence forward pass in eval mode (what the energy report counts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spikingmamba.errors import InputError, UserError
from spikingmamba.neurons.sites import iter_sites

FORMAT = "spikingmamba-aer"
VERSION = 1
EVENT_FIELDS = ("token", "stream", "micro", "polarity", "neuron")


def event_dtype(max_channels: int) -> np.dtype:
    neuron = "<u2" if max_channels <= np.iinfo(np.uint16).max + 1 else "<u4"
    return np.dtype([("token", "<u4"), ("stream", "<u2"), ("micro", "u1"), ("polarity", "i1"), ("neuron", neuron)])


@torch.no_grad()
def capture_spikes(model, input_ids: torch.LongTensor) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Integer spikes of every neuron on one sequence (l,) or (1, l): {name: (l, channels)}, plus
    the model's `firing_stats()` recorded during the same forward pass."""
    if not getattr(model, "is_spiking", False):
        raise InputError("this model has no spiking neurons: export needs a spiking student")
    ids = input_ids.view(1, -1) if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise InputError(f"export takes one non-empty sequence, got ids of shape {tuple(input_ids.shape)}")
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for ref in iter_sites(model):
        def hook(module, args, name=ref.name):
            recording, module.recording = module.recording, False            # do not count twice
            try:
                captured[name] = module.spikes(args[0].detach())[0].to(torch.int16)   # (l, channels)
            finally:
                module.recording = recording
        handles.append(ref.neuron.register_forward_pre_hook(hook))
    was_training, mode = model.training, model.spike_mode
    model.eval()
    model.spike_mode = "integer"          # binary mode calls spike_train, not forward: keep hooks firing
    try:
        with model.record_spikes():
            model(ids)
        stats = model.firing_stats()
    finally:
        for h in handles:
            h.remove()
        model.spike_mode = mode
        model.train(was_training)
    return captured, stats


def spikes_to_events(spikes: list[torch.Tensor], levels: int) -> np.ndarray:
    """Address events from integer spikes, one (T, channels) tensor per stream, time-ordered."""
    dtype = event_dtype(max((s.shape[1] for s in spikes), default=1))
    chunks = []
    for stream, s in enumerate(spikes):
        mag, sign = s.abs(), torch.sign(s)
        for micro in range(levels):
            token, neuron = (mag > micro).nonzero(as_tuple=True)              # fires on the first |s| steps
            ev = np.empty(token.numel(), dtype=dtype)
            ev["token"], ev["neuron"] = token.numpy(), neuron.numpy()
            ev["stream"], ev["micro"] = stream, micro
            ev["polarity"] = sign[token, neuron].numpy()
            chunks.append(ev)
    events = np.concatenate(chunks) if chunks else np.empty(0, dtype=dtype)
    order = np.lexsort((events["neuron"], events["micro"], events["stream"], events["token"]))
    return events[order]


@dataclass
class SpikeRecord:
    """A loaded export: header dict, token ids (T,), events (E,) structured array."""

    header: dict
    token_ids: np.ndarray
    events: np.ndarray

    @property
    def streams(self) -> list[str]:
        return [s["name"] for s in self.header["streams"]]

    @property
    def levels(self) -> int:
        return int(self.header["levels"])

    def _stream_index(self, name: str) -> int:
        try:
            return self.streams.index(name)
        except ValueError:
            raise InputError(f"no stream {name!r} in this export; streams: {self.streams[:4]}...") from None

    def counts(self) -> dict[str, int]:
        """Binary spikes per stream."""
        per = np.bincount(self.events["stream"], minlength=len(self.streams))
        return {name: int(n) for name, n in zip(self.streams, per)}

    def integer_spikes(self, name: str) -> np.ndarray:
        """The integer activations s (T, channels) of one stream, rebuilt from its events."""
        k = self._stream_index(name)
        ev = self.events[self.events["stream"] == k]
        s = np.zeros((int(self.header["n_tokens"]), self.header["streams"][k]["channels"]), dtype=np.int16)
        np.add.at(s, (ev["token"].astype(np.int64), ev["neuron"].astype(np.int64)), ev["polarity"].astype(np.int16))
        return s

    def spike_train(self, name: str, token: int) -> np.ndarray:
        """The signed binary spike train (D, channels) in {-1, 0, +1} of one stream at one token."""
        k = self._stream_index(name)
        ev = self.events[(self.events["stream"] == k) & (self.events["token"] == token)]
        train = np.zeros((self.levels, self.header["streams"][k]["channels"]), dtype=np.int8)
        train[ev["micro"].astype(np.int64), ev["neuron"].astype(np.int64)] = ev["polarity"]
        return train


def export_spikes(model, input_ids: torch.LongTensor, path: str | Path, tokens: list[str] | None = None,
                  source: str | None = None) -> SpikeRecord:
    """Run `model` on one sequence and write its spike trains to `path` (format above)."""
    captured, stats = capture_spikes(model, input_ids)
    sites = list(iter_sites(model))                   # the streams, in the order capture_spikes saw them
    levels = model.spiking_config.levels
    events = spikes_to_events([captured[ref.name] for ref in sites], levels)
    streams = []
    for ref in sites:
        name = ref.name
        streams.append({"name": name, "layer": ref.layer, "site": ref.site, "channels": int(captured[name].shape[1]),
                        "spike_count": int(round(stats[name]["spike_count"])), "numel": int(stats[name]["numel"])})
    ids = input_ids.reshape(-1).cpu().numpy().astype(np.int64)
    header = {"format": FORMAT, "version": VERSION, "levels": levels, "neuron": model.spiking_config.neuron,
              "n_tokens": int(ids.size), "streams": streams, "event_fields": list(EVENT_FIELDS),
              "source": source, "tokens": tokens}
    path = Path(path)
    with open(path, "wb") as f:                       # a file object: numpy would append .npz to a str
        np.savez_compressed(f, header=np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
                            token_ids=ids, events=events)
    return SpikeRecord(header, ids, events)


def read_spikes(path: str | Path) -> SpikeRecord:
    """Load an export written by `export_spikes`; raises UserError on anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such spike file")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode("utf-8"))
            token_ids, events = data["token_ids"], data["events"]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path} is not a {FORMAT} spike file ({err})") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise UserError(f"{path}: format {header.get('format')!r} version {header.get('version')!r}, "
                        f"expected {FORMAT!r} version {VERSION}")
    if tuple(events.dtype.names or ()) != EVENT_FIELDS:
        raise UserError(f"{path}: events have fields {events.dtype.names}, expected {EVENT_FIELDS}")
    return SpikeRecord(header, token_ids, events)
