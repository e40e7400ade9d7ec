"""lm-evaluation-harness backend for SpikingMamba checkpoints, registered as `spikingmamba`.

lm-eval does the scoring; this module only loads our model and hands it to lm-eval's `HFLM`.
HFLM's causal path already does what a Mamba needs: log-likelihood requests are sorted by length
(longest first), batched, and right-padded, and the model is called with `input_ids` only. Right
padding is harmless for a causal recurrence (a padded position never feeds an earlier one) and
HFLM drops the padded positions before scoring, so no attention mask is needed.

Use it from Python::

    lm = SpikingMambaLM(pretrained="runs/student", batch_size=32)
    lm_eval.simple_evaluate(model=lm, tasks=[...])

or by name, once this module is imported (`spikingmamba.evaluation` imports it when it runs)::

    lm_eval.simple_evaluate(model="spikingmamba", model_args="pretrained=runs/student", ...)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import transformers

import lm_eval.models  # noqa: F401  (registers lm-eval's own models before ours; see note below)
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from spikingmamba.errors import CheckpointError

# Note: lm-eval fills its model registry lazily, only when the registry is empty. Registering
# `spikingmamba` first would leave the registry non-empty and hide lm-eval's own models, hence
# the import of `lm_eval.models` above.

log = logging.getLogger(__name__)

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
    try:
        from spikingmamba import from_pretrained
    except ImportError:  # TODO(lead): remove once spikingmamba.from_pretrained exists
        from_pretrained = transformers.AutoModelForCausalLM.from_pretrained
    try:
        model = from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load a model from {folder}: {err}") from err
    return model.eval()


def load_tokenizer(path: str | os.PathLike) -> transformers.PreTrainedTokenizerBase:
    """Load the tokenizer saved beside a checkpoint."""
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"no tokenizer in {path}: save one beside the model (tokenizer.save_pretrained) "
            f"or pass tokenizer=... ({err})"
        ) from err


@register_model("spikingmamba")
class SpikingMambaLM(HFLM):
    """HFLM over a SpikingMamba (or plain Mamba) causal LM.

    `pretrained` is a checkpoint folder (loaded with `load_model`, tokenizer from the same folder)
    or an already built `PreTrainedModel`; `tokenizer` is a folder or a tokenizer object and is
    required with a model object whose `name_or_path` has no tokenizer.
    """

    def __init__(
        self,
        pretrained: str | os.PathLike | transformers.PreTrainedModel,
        tokenizer: str | os.PathLike | transformers.PreTrainedTokenizerBase | None = None,
        device: str | None = "cpu",
        dtype: str | torch.dtype | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_length: int | None = DEFAULT_MAX_LENGTH,
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

    def get_model_info(self) -> dict:
        """Model facts for lm-eval's results JSON, without HFLM's model-hub lookups."""
        model = self._model
        return {
            "model_source": self.source,
            "model_class": type(model).__name__,
            "model_num_parameters": sum(p.numel() for p in model.parameters()),
            "model_dtype": str(next(model.parameters()).dtype),
        }
