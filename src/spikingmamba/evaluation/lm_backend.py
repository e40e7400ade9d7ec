"""lm-evaluation-harness backend for SpikingMamba checkpoints, registered as `spikingmamba`.

lm-eval builds the requests and computes the metrics; this backend loads our model and returns
the log-likelihood of each (context, continuation) pair, as lm-eval's `HFLM`, which it extends.

HFLM's causal path already works for a Mamba: requests are sorted by length, batched and
right-padded, and the model is called with `input_ids` only. Right padding is harmless for a
causal recurrence (a padded position never feeds an earlier one) and HFLM drops the padded
positions before scoring, so no attention mask is needed. It is the fallback here.

The default path is faster for a recurrent model: multiple-choice requests repeat one context
with 2-4 continuations, and a Mamba can read the context once (`model.prefill`, which returns
its constant-size state) and then score all continuations from their context's state in one
sequence pass (`model.extend`: the scan starts from that state, the conv window carries over),
so HellaSwag, ARC and OpenBookQA read each context once, not once per choice, and no
continuation is stepped token by token. Contexts are batched by exact length, since a state read
after padding tokens would not be the context's; continuations are sorted by length over many
context batches and right-padded.

Use it from Python::

    lm = SpikingMambaLM(pretrained="runs/student", batch_size=32)
    lm_eval.simple_evaluate(model=lm, tasks=[...])

or by name, once this module is imported (`spikingmamba.evaluation` imports it when it runs)::

    lm_eval.simple_evaluate(model="spikingmamba", model_args="pretrained=runs/student", ...)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from tqdm import tqdm

import lm_eval.models  # noqa: F401  (registers lm-eval's own models before ours; see note below)
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from spikingmamba.errors import CheckpointError

# Note: lm-eval fills its model registry lazily, only when the registry is empty. Registering
# `spikingmamba` first would leave the registry non-empty and hide lm-eval's own models, hence
# the import of `lm_eval.models` above.

DEFAULT_BATCH_SIZE = 32
# Mamba has no position limit; this only bounds the longest scored sequence (LAMBADA is < 300).
DEFAULT_MAX_LENGTH = 2048
# Scoring holds at most this many logits per pass over continuations (float32: 128 MiB), however
# large the vocabulary; a longer continuation than that still runs, alone.
LOGITS_PER_PASS = 2**25
# Context states held at once: contexts are read (in batches of one length) until their states fill
# this, then all their continuations are sorted by length and scored, so that each `extend` pass
# gets rows of similar lengths (little padding) however the lengths mix within one context batch.
STATE_BYTES_PER_WINDOW = 256 * 2**20


def load_model(path: str | os.PathLike) -> transformers.PreTrainedModel:
    """Load a checkpoint folder as a causal LM, on the CPU, in eval mode.

    The one place that decides how checkpoints are read: our `spikingmamba.from_pretrained`.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist")
    from spikingmamba import from_pretrained

    try:
        model = from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load a model from {folder}: {err}") from err
    return model.eval()


def load_tokenizer(path: str | os.PathLike) -> transformers.PreTrainedTokenizerBase:
    """Load the tokenizer saved beside a checkpoint (or "gpt-neox", the public Mamba tokenizer)."""
    from spikingmamba.data.tokenizer import load_tokenizer as load

    return load(path)


@register_model("spikingmamba")
class SpikingMambaLM(HFLM):
    """HFLM over a SpikingMamba (or plain Mamba) causal LM.

    `pretrained` is a checkpoint folder (loaded with `load_model`, tokenizer from the same folder)
    or an already built `PreTrainedModel`; `tokenizer` is a folder or a tokenizer object and is
    required with a model object whose `name_or_path` has no tokenizer. `prefix_sharing=False`
    scores with HFLM's own batching (also used for models without `prefill`/`extend`).
    """

    def __init__(
        self,
        pretrained: str | os.PathLike | transformers.PreTrainedModel,
        tokenizer: str | os.PathLike | transformers.PreTrainedTokenizerBase | None = None,
        device: str | None = "cpu",
        dtype: str | torch.dtype | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        prefix_sharing: bool = True,
        **kwargs: Any,
    ) -> None:
        if isinstance(pretrained, (str, os.PathLike)):
            source = str(pretrained)
            model = load_model(source)
            tokenizer = tokenizer if tokenizer is not None else source
        else:
            model = pretrained
            source = getattr(model, "name_or_path", "") or type(model).__name__
            if tokenizer is None:
                tokenizer = source
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        if dtype is not None and dtype != "auto":
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        model = model.to(device or "cpu").eval()
        self._encodings: dict[tuple[str, bool | None], list[int]] | None = None  # see `loglikelihood`

        # HFLM, given a model object, skips its own loading and every hub call but one (below).
        super().__init__(
            pretrained=model,
            backend="causal",
            tokenizer=tokenizer,
            batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
            max_length=max_length,
            **kwargs,
        )
        self.source = source
        self.prefix_sharing = prefix_sharing in (True, "True", "true", "1", 1)

    def get_model_info(self) -> dict:
        """Model facts for lm-eval's results JSON, without HFLM's model-hub lookups."""
        model = self._model
        return {
            "model_source": self.source,
            "model_class": type(model).__name__,
            "model_num_parameters": sum(p.numel() for p in model.parameters()),
            "model_dtype": str(next(model.parameters()).dtype),
        }

    # ---- tokenising each distinct string once ----

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """HFLM's, with each distinct string tokenised once: lm-eval tokenises context + continuation
        and the context of every request, so a multiple-choice context is otherwise tokenised twice
        per choice."""
        self._encodings = {}
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._encodings = None

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """HFLM's `tok_encode`, remembered per (string, add_special_tokens) within `loglikelihood`."""
        if self._encodings is None or kwargs:
            return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)
        key = (string, add_special_tokens)
        ids = self._encodings.get(key)
        if ids is None:
            ids = self._encodings[key] = super().tok_encode(string, add_special_tokens)
        return ids[-left_truncate_len:] if left_truncate_len else list(ids)

    # ---- scoring with shared context prefixes ----

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """[((context, continuation), context_ids, continuation_ids)] -> [(log-likelihood, is_greedy)]."""
        if not self._can_share_prefixes(requests):
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        by_context: dict[tuple[int, ...], list[int]] = {}
        for index, (_, context, _) in enumerate(requests):
            by_context.setdefault(tuple(context), []).append(index)
        batch_size = self.batch_size if isinstance(self.batch_size, int) else DEFAULT_BATCH_SIZE
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                        desc="Running loglikelihood requests")

        def score(window: list[tuple[int, ...]], first: list[torch.Tensor], states: list) -> None:
            rows = [(c, index) for c, context in enumerate(window) for index in by_context[context]]
            answers = self._score_continuations(torch.cat(first), _cat_states(states),
                                                [requests[index][2] for _, index in rows], [c for c, _ in rows],
                                                batch_size)
            for (_, index), answer in zip(rows, answers, strict=True):
                results[index] = answer
                self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
            progress.update(len(rows))

        window, first, states, held = [], [], [], 0
        for contexts in _same_length_batches(list(by_context), batch_size):
            with torch.no_grad():
                logits, state = self.model.prefill(torch.tensor(contexts, dtype=torch.long, device=self.device))
            window += contexts
            first.append(logits)  # (c, vocab) at each context's last position
            states.append(state)  # after it
            held += _state_bytes(state)
            if held >= STATE_BYTES_PER_WINDOW:
                score(window, first, states)
                window, first, states, held = [], [], [], 0
        if window:
            score(window, first, states)
        progress.close()
        return results

    def _can_share_prefixes(self, requests) -> bool:
        model = self.model
        return (
            self.prefix_sharing
            and callable(getattr(model, "prefill", None))
            and callable(getattr(model, "extend", None))
            # rolling-window perplexity requests carry no key, and over-long ones need truncation:
            # both keep HFLM's handling
            and all(key is not None and len(context) + len(cont) <= self.max_length + 1
                    for key, context, cont in requests)
        )

    @torch.no_grad()
    def _score_continuations(self, first, state, continuations, row_context, batch_size) -> list[tuple[float, bool]]:
        """Score each continuation from its context's state, `batch_size` rows per `extend` pass.

        Row r scores `continuations[r]` after context `row_context[r]`, whose last-position logits
        are `first[row_context[r]]` (they predict the first continuation token) and whose state is
        row `row_context[r]` of `state`; one `extend` pass over the continuation (all but its last
        token, right-padded) from that state predicts the others. Rows are sorted by length, so
        a pass's rows have similar lengths and little padding.
        """
        lengths = [len(c) for c in continuations]
        order = sorted(range(len(continuations)), key=lambda r: -lengths[r])
        answers: list[tuple[float, bool] | None] = [None] * len(order)
        vocab = first.shape[-1]
        start = 0
        while start < len(order):
            width = lengths[order[start]]
            rows = order[start : start + max(1, min(batch_size, LOGITS_PER_PASS // (width * vocab)))]
            start += len(rows)
            pick = torch.tensor([row_context[r] for r in rows], device=self.device)
            targets = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)  # (rows, width)
            for i, r in enumerate(rows):
                targets[i, : lengths[r]] = torch.tensor(continuations[r], dtype=torch.long)
            token, greedy = self._token_scores(first[pick].unsqueeze(1), targets[:, :1])  # (rows, 1) x2
            if width > 1:
                later, _ = self.model.extend(targets[:, :-1], _index_state(state, pick))  # (rows, width - 1, vocab)
                later_token, later_greedy = self._token_scores(later, targets[:, 1:])
                token, greedy = torch.cat([token, later_token], 1), torch.cat([greedy, later_greedy], 1)
            real = torch.arange(width, device=self.device) < torch.tensor([lengths[r] for r in rows],
                                                                          device=self.device)[:, None]
            total = torch.where(real, token, 0.0).sum(1)
            greedy = (greedy | ~real).all(1)
            for i, r in enumerate(rows):
                answers[r] = (float(total[i]), bool(greedy[i]))
        return answers

    def _token_scores(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits (rows, w, vocab) predicting targets (rows, w) -> each target's log-probability
        (float64) and whether it is the most likely token (rows, w), as HFLM computes them."""
        logprobs = F.log_softmax(logits.float(), dim=-1, dtype=self.softmax_dtype)
        token = logprobs.gather(2, targets[..., None]).squeeze(2).double()
        return token, logprobs.argmax(-1) == targets


def _same_length_batches(contexts: list[tuple[int, ...]], batch_size: int):
    """Batches of at most `batch_size` contexts of one token length, longest contexts first."""
    by_length: dict[int, list[tuple[int, ...]]] = {}
    for context in contexts:
        by_length.setdefault(len(context), []).append(context)
    for length in sorted(by_length, reverse=True):
        group = by_length[length]
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def _map_state(fn, *states):
    """fn applied to the matching tensors of recurrent states (tensors in lists and dataclasses)."""
    head = states[0]
    if isinstance(head, torch.Tensor):
        return fn(*states)
    if isinstance(head, (list, tuple)):
        return type(head)(_map_state(fn, *items) for items in zip(*states, strict=True))
    if dataclasses.is_dataclass(head):
        return dataclasses.replace(head, **{f.name: _map_state(fn, *(getattr(s, f.name) for s in states))
                                            for f in dataclasses.fields(head) if f.init})
    return head


def _index_state(state, index):
    """Select batch rows of a recurrent state (batch first)."""
    return _map_state(lambda t: t[index], state)


def _cat_states(states: list):
    """Recurrent states of several batches as one (concatenated along the batch)."""
    return _map_state(lambda *ts: torch.cat(ts), *states)


def _state_bytes(state) -> int:
    sizes = []
    _map_state(lambda t: sizes.append(t.numel() * t.element_size()), state)
    return sum(sizes)
