"""Address-event spike export: round trip, counts equal to the energy report's, format checks."""

import json

import numpy as np
import pytest
import torch

import spikingmamba
from spikingmamba.errors import InputError, UserError
from spikingmamba.inference import export_spikes, read_spikes
from spikingmamba.inference.spike_export import capture_spikes, event_dtype, spikes_to_events
from spikingmamba.neurons.spike_train import integrate_and_fire

VOCAB = 101


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = spikingmamba.SpikingMambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8)
    dense = spikingmamba.SpikingMambaForCausalLM(config).eval()
    calib = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    return dense, spikingmamba.to_spiking(dense, levels=3, calibration_ids=calib).eval()


@pytest.fixture(scope="module")
def student_all(models):
    calib = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    return spikingmamba.to_spiking(models[0], levels=3, sites="all", calibration_ids=calib).eval()


@pytest.mark.parametrize("which", ["paper", "all"])
def test_round_trip_and_counts_equal_firing_stats(models, student_all, tmp_path, which):
    student = models[1] if which == "paper" else student_all
    block_sites = ["in_proj", "out_proj"] if which == "paper" else ["in_proj", "x_proj", "dt_proj", "out_proj"]
    head = [] if which == "paper" else ["lm_head"]
    ids = torch.randint(0, VOCAB, (9,), generator=torch.Generator().manual_seed(2))
    # the energy report's counts, measured independently of the exporter
    with torch.no_grad(), student.record_spikes():
        student(ids.view(1, -1))
    reference = {name: stats["spike_count"] for name, stats in student.firing_stats().items()}
    captured, _ = capture_spikes(student, ids)

    path = tmp_path / "spikes.npz"
    written = export_spikes(student, ids, path, tokens=[f"t{i}" for i in range(9)], source="tiny")
    record = read_spikes(path)
    assert record.header == json.loads(json.dumps(written.header))
    assert record.streams == list(reference)
    assert record.counts() == {name: int(count) for name, count in reference.items()}
    assert sum(reference.values()) == record.events.size > 0
    assert [s["layer"] for s in record.header["streams"]] == [0] * len(block_sites) + [1] * len(block_sites) + \
        [None] * len(head)
    assert [s["site"] for s in record.header["streams"]] == block_sites * 2 + head
    assert all(count > 0 for count in record.counts().values())       # every site fired on this text
    assert record.token_ids.tolist() == ids.tolist() and record.header["tokens"][0] == "t0"
    for name, spikes in captured.items():
        assert np.array_equal(record.integer_spikes(name), spikes.numpy())
        for t in (0, 8):                                              # the binary trains, micro-step by micro-step
            train, sign = integrate_and_fire(spikes[t].float(), 3)
            assert np.array_equal(record.spike_train(name, t), (train * sign).numpy().astype(np.int8))
    ev = record.events
    order = np.lexsort((ev["neuron"], ev["micro"], ev["stream"], ev["token"]))
    assert np.array_equal(order, np.arange(ev.size))                  # time-ordered
    assert set(np.unique(ev["polarity"]).tolist()) <= {-1, 1} and ev["micro"].max() < 3
    assert ev.dtype.itemsize == 10                                    # packed: 4 + 2 + 1 + 1 + 2 bytes


def test_events_of_hand_made_spikes():
    s = torch.tensor([[2, 0, -1], [0, -3, 0]], dtype=torch.int16)      # (tokens 2, channels 3)
    ev = spikes_to_events([s], levels=3)
    rows = [tuple(int(v) for v in e) for e in ev]
    # (token, stream, micro, polarity, neuron)
    assert rows == [(0, 0, 0, 1, 0), (0, 0, 0, -1, 2), (0, 0, 1, 1, 0),
                    (1, 0, 0, -1, 1), (1, 0, 1, -1, 1), (1, 0, 2, -1, 1)]
    assert event_dtype(70000)["neuron"] == np.dtype("<u4")


def test_dense_model_and_bad_files_are_refused(models, tmp_path):
    dense, _ = models
    with pytest.raises(InputError, match="no spiking neurons"):
        export_spikes(dense, torch.tensor([1, 2]), tmp_path / "x.npz")
    with pytest.raises(UserError, match="no such"):
        read_spikes(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a spikingmamba-aer"):
        read_spikes(tmp_path / "junk.npz")
    with open(tmp_path / "other.npz", "wb") as f:
        np.savez(f, header=np.frombuffer(b'{"format": "other"}', dtype=np.uint8), token_ids=np.zeros(1),
                 events=np.zeros(1))
    with pytest.raises(UserError, match="format 'other'"):
        read_spikes(tmp_path / "other.npz")
