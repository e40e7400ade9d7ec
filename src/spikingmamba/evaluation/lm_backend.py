"""lm-evaluation-harness backend for SpikingMamba checkpoints, registered as `spikingmamba`.

lm-eval builds the requests and computes the metrics; this backend loads our model and returns
the log-likelihood of each (context, continuation) pair, as lm-eval's `HFLM`, which it extends.

HFLM's causal path already works for a Mamba: requests are sorted by length, batched and
right-padded, and the model is called with `input_ids` only. Right padding is harmless for a
causal recurrence (a padded position never feeds an earlier one) and HFLM drops the padded
positions before scoring, so no attention mask is needed. It is the fallback here.

The default path is faster for a recurrent model: multiple-choice requests repeat one context
with 2-4 continuations, and a Mamba can read the context once (`model.prefill`, which returns
its constant-size state) and then score each continuation from that state token by token
(`model.step`), so HellaSwag, ARC and OpenBookQA read each context once, not once per choice. Contexts are
batched by exact length, since a state read after padding tokens would not be the context's.

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
    scores with HFLM's own batching (also used for models without `prefill`/`step`).
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
        for contexts in _same_length_batches(list(by_context), batch_size):
            rows = [(b, index) for b, context in enumerate(contexts) for index in by_context[context]]
            scores = self._score_from_contexts(contexts, [requests[index][2] for _, index in rows],
                                               [b for b, _ in rows])
            for (_, index), answer in zip(rows, scores, strict=True):
                results[index] = answer
                self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
            progress.update(len(rows))
        progress.close()
        return results

    def _can_share_prefixes(self, requests) -> bool:
        model = self.model
        return (
            self.prefix_sharing
            and callable(getattr(model, "prefill", None))
            and callable(getattr(model, "step", None))
            # rolling-window perplexity requests carry no key, and over-long ones need truncation:
            # both keep HFLM's handling
            and all(key is not None and len(context) + len(cont) <= self.max_length + 1
                    for key, context, cont in requests)
        )

    @torch.no_grad()
    def _score_from_contexts(self, contexts, continuations, row_context) -> list[tuple[float, bool]]:
        """Read equal-length `contexts` once; score each continuation from its context's state.

        Row r scores `continuations[r]` after `contexts[row_context[r]]`: the logits after the
        context predict the first continuation token, each `step` predicts the next one.
        """
        model = self.model
        ids = torch.tensor(contexts, dtype=torch.long, device=self.device)  # (b, l)
        logits, state = self.model.prefill(ids)  # (b, vocab) at the last position, state after it
        lengths = [len(c) for c in continuations]
        # Longest continuations first, so the rows still running at step t are a prefix.
        order = sorted(range(len(continuations)), key=lambda r: -lengths[r])
        width = lengths[order[0]]
        targets = torch.zeros(len(order), width, dtype=torch.long, device=self.device)
        for i, r in enumerate(order):
            targets[i, : lengths[r]] = torch.tensor(continuations[r], dtype=torch.long)
        pick = torch.tensor([row_context[r] for r in order], device=self.device)
        logits, state = logits[pick], _index_state(state, pick)
        total = torch.zeros(len(order), dtype=torch.float64, device=self.device)
        greedy = torch.ones(len(order), dtype=torch.bool, device=self.device)
        sorted_lengths = torch.tensor([lengths[r] for r in order], device=self.device)
        for t in range(width):
            active = int((sorted_lengths > t).sum())  # rows whose continuation has a token t
            logprobs = F.log_softmax(logits[:active].float(), dim=-1, dtype=self.softmax_dtype)
            target = targets[:active, t]
            total[:active] += logprobs.gather(1, target[:, None]).squeeze(1).double()
            greedy[:active] &= logprobs.argmax(-1) == target
            still = int((sorted_lengths > t + 1).sum())
            if still:
                logits, state = model.step(target[:still], _index_state(state, slice(0, still)))
        answers: list[tuple[float, bool] | None] = [None] * len(order)
        for i, r in enumerate(order):
            answers[r] = (float(total[i]), bool(greedy[i]))
        return answers


def _same_length_batches(contexts: list[tuple[int, ...]], batch_size: int):
    """Batches of at most `batch_size` contexts of one token length, longest contexts first."""
    by_length: dict[int, list[tuple[int, ...]]] = {}
    for context in contexts:
        by_length.setdefault(len(context), []).append(context)
    for length in sorted(by_length, reverse=True):
        group = by_length[length]
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def _index_state(state, index):
    """Select batch rows of a recurrent state: tensors (batch first) in lists and dataclasses."""
    if isinstance(state, torch.Tensor):
        return state[index]
    if isinstance(state, (list, tuple)):
        return type(state)(_index_state(item, index) for item in state)
    if dataclasses.is_dataclass(state):
        return dataclasses.replace(state, **{f.name: _index_state(getattr(state, f.name), index)
                                             for f in dataclasses.fields(state) if f.init})
    return state
