"""RL stage, pure parts: DPO losses on hand-computed log-probs, completion masking, record checks."""

import json
import math

import pytest
import torch

from spikingmamba.errors import ConfigError, UserError
from spikingmamba.neurons.rate import rate_excess
from spikingmamba.training.losses import masked_mean
from spikingmamba.rl.losses import dpo_loss, sequence_logprobs
from spikingmamba.rl.preferences import (PreferencePairs, PreferenceStats, TokenizedPair, read_preferences,
                                         split_records, tokenize_records)

# policy chosen/rejected, reference chosen/rejected: log-ratios +1 (chosen) and -1 (rejected), h = 2
PC, PR, RC, RR = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.mark.parametrize("loss_type, beta, smoothing, expected", [
    ("sigmoid", 0.5, 0.0, softplus(-1.0)),                              # -log sigma(0.5 * 2)
    ("sigmoid", 0.5, 0.1, 0.9 * softplus(-1.0) + 0.1 * softplus(1.0)),  # conservative DPO
    ("robust", 0.5, 0.1, (0.9 * softplus(-1.0) - 0.1 * softplus(1.0)) / 0.8),
    ("hinge", 0.25, 0.0, 0.5),                                          # max(0, 1 - 0.25 * 2)
    ("hinge", 0.5, 0.0, 0.0),
    ("ipo", 0.5, 0.0, 1.0),                                             # (2 - 1 / (2 * 0.5))^2
])
def test_dpo_loss_matches_hand_computed_values(loss_type, beta, smoothing, expected):
    out = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type=loss_type, label_smoothing=smoothing)
    assert out.losses.item() == pytest.approx(expected, rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(beta * 1.0)
    assert out.rejected_rewards.item() == pytest.approx(beta * -1.0)


def test_ipo_uses_per_token_log_ratios_when_lengths_are_given():
    out = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo", chosen_lengths=torch.tensor([2.0]),
                   rejected_lengths=torch.tensor([4.0]))
    assert out.losses.item() == pytest.approx((1 / 2 + 1 / 4 - 1.0) ** 2)


def test_dpo_loss_is_log2_at_equal_policies_and_pushes_the_right_way():
    pc, pr = torch.tensor([-4.0, -1.0], requires_grad=True), torch.tensor([-2.0, -5.0], requires_grad=True)
    out = dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.1)
    torch.testing.assert_close(out.losses, torch.full((2,), math.log(2)))
    out.losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()   # raise chosen, lower rejected


def test_dpo_loss_rejects_bad_settings():
    with pytest.raises(ConfigError, match="loss must be one of"):
        dpo_loss(PC, PR, RC, RR, loss_type="kto")
    with pytest.raises(ConfigError, match="beta"):
        dpo_loss(PC, PR, RC, RR, beta=0.0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, label_smoothing=0.5)


def test_sequence_logprobs_sums_only_masked_targets():
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]])   # (1, 3, V=3)
    targets = torch.tensor([[0, 1, 2]])
    total, count = sequence_logprobs(probs.log(), targets, torch.tensor([[0, 1, 1]]))
    assert total.item() == pytest.approx(math.log(0.6) + math.log(0.6))
    assert count.item() == 2


def test_pairs_batch_and_mask_only_the_completion():
    pair = TokenizedPair(prompt=[5, 6], chosen=[7, 8, 9], rejected=[4])
    pairs = PreferencePairs([pair], max_tokens=8, pad_id=0)
    assert (len(pairs), pairs.seq_len) == (1, 8)
    batch = pairs.batch(torch.tensor([0]))
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [5, 6, 4, 0]]
    assert batch.target_ids.tolist() == [[6, 7, 8, 9], [6, 4, 0, 0]]
    # target t is token t + 1: chosen tokens 7, 8, 9 are targets 1..3; rejected's 4 is target 1
    assert batch.mask.tolist() == [[False, True, True, True], [False, True, False, False]]
    assert batch.lengths.tolist() == [5, 3]


def test_completion_log_prob_equals_step_by_step_and_ignores_padding():
    """Masked log-prob of a padded batch = sum of next-token log-probs from recurrent decoding."""
    import spikingmamba

    torch.manual_seed(0)
    model = spikingmamba.SpikingMambaForCausalLM(spikingmamba.SpikingMambaConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, state_size=4)).eval()
    pairs = [TokenizedPair([1, 2, 3], [4, 5], [6, 7, 8, 9, 10]), TokenizedPair([11], [12, 13, 14], [15])]
    batch = PreferencePairs(pairs, 12, pad_id=0).batch(torch.tensor([0, 1]))
    with torch.no_grad():
        total, count = sequence_logprobs(model(batch.input_ids).logits, batch.target_ids, batch.mask)
    expected = []
    for seqs in ([p.prompt + p.chosen for p in pairs], [p.prompt + p.rejected for p in pairs]):
        for i, seq in enumerate(seqs):
            n_prompt = len(pairs[i].prompt)
            state, logp = model.init_state(1), 0.0
            for t in range(len(seq) - 1):
                logits, state = model.step(torch.tensor([seq[t]]), state)
                if t + 1 >= n_prompt:
                    logp += torch.log_softmax(logits[0], -1)[seq[t + 1]].item()
            expected.append(logp)
    torch.testing.assert_close(total, torch.tensor(expected), rtol=1e-4, atol=1e-4)
    assert count.tolist() == [2, 3, 5, 1]


def test_rate_excess_counts_only_activity_above_the_reference_on_real_tokens():
    rates = torch.tensor([[[0.5, 0.1, 9.0]]], requires_grad=True)   # (groups 1, b 1, l 3); last is padding
    reference = torch.tensor([[[0.2, 0.3, 0.0]]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    penalty = masked_mean(rate_excess(rates, reference), mask)
    assert penalty.item() == pytest.approx(0.3 / 2)
    penalty.backward()
    assert rates.grad.tolist() == [[[0.5, 0.0, 0.0]]] and reference.grad is None   # the reference is a floor


# --- records ----------------------------------------------------------------------------------
def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


GOOD = {"prompt": "The king", "chosen": " is dead", "rejected": " xq"}


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "a", "chosen": "b"}, 'record 2 \\(line 3\\): the field "rejected" is missing'),
    ({"prompt": "a", "chosen": "  ", "rejected": "c"}, 'record 2 \\(line 3\\): the field "chosen" is empty'),
    ({"prompt": "", "chosen": "b", "rejected": "c"}, 'record 2 \\(line 3\\): the field "prompt" is empty'),
    ({"prompt": "a", "chosen": 3, "rejected": "c"}, '"chosen" must be a string'),
    ({"prompt": "a", "chosen": "b", "rejected": "b"}, "chosen and rejected are the same"),
    ("{not json", "record 2 \\(line 3\\): not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_records_are_errors_naming_the_record(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, "", bad, GOOD])    # line 2 is blank: not a record
    with pytest.raises(UserError, match=message):
        read_preferences(path)


def test_skip_invalid_counts_every_skipped_record(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, {"prompt": "a", "chosen": "b"}, {"prompt": "a", "chosen": "",
                                              "rejected": "c"}, {"prompt": "a", "chosen": "", "rejected": "d"}, GOOD])
    stats = PreferenceStats()
    records = read_preferences(path, skip_invalid=True, stats=stats)
    assert [r.number for r in records] == [1, 5]
    assert stats.to_dict()["skipped"] == {"missing rejected": 1, "empty chosen": 2}
    assert stats.records == 5


class CharTokenizer:
    """One token per character (ids 1..), pad 0: enough to test the length rules."""

    pad_token_id, eos_token_id = 0, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 50 + 1 for c in text]}


def test_prompt_longer_than_the_context_is_an_error_or_a_counted_skip(tmp_path):
    long = {"prompt": "x" * 10, "chosen": "ab", "rejected": "cd"}
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, long])
    records = read_preferences(path)
    with pytest.raises(UserError, match="record 2 \\(line 2\\): the prompt has 10 tokens; with seq_len 10"):
        tokenize_records(records, CharTokenizer(), 10, False, PreferenceStats(), path)
    stats = PreferenceStats()
    pairs = tokenize_records(records, CharTokenizer(), 10, True, stats, path)
    assert len(pairs) == 1 and stats.skipped == {"prompt too long": 1} and stats.used == 1


def test_long_completions_are_cut_to_fit_and_counted(tmp_path):
    records = read_preferences(write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "abcd", "chosen": "efghij", "rejected": "k"},
        {"prompt": "abcd", "chosen": "efghijk", "rejected": "efghijl"}]), )
    stats = PreferenceStats()
    with pytest.raises(UserError, match="record 2 .*the same in their first 4 tokens"):
        tokenize_records(records, CharTokenizer(), 8, False, stats)
    stats = PreferenceStats()
    pairs = tokenize_records(records, CharTokenizer(), 8, True, stats)
    assert len(pairs) == 1 and stats.truncated_chosen == 2 and stats.truncated_rejected == 1
    assert pairs.batch(torch.tensor([0])).lengths.tolist() == [8, 5]


def test_split_is_by_record_and_reproducible(tmp_path):
    records = read_preferences(write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(20)]))
    train, held = split_records(records, 0.25, seed=3)
    assert len(held) == 5 and len(train) == 15
    assert {r.number for r in train} | {r.number for r in held} == set(range(1, 21))
    assert split_records(records, 0.25, seed=3)[1] == held
