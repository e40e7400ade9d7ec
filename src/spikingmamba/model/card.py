"""The model card (README.md) of a saved folder.

`save_pretrained` writes the card from the config alone (what the model is, how to load it);
`distill` and `quickstart` rewrite it at the end of their runs with what that run knows: the
recipe, the distillation's held-out numbers, the energy table and the evaluation tables. A section
is present only when its numbers were measured in that run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

CARD_FILE = "README.md"

# distillation's final held-out evaluation (DistillTask.evaluate): key -> (row label, format)
_DISTILL_ROWS = {
    "student_ppl": ("student perplexity", "{:.2f}"),
    "teacher_ppl": ("teacher perplexity", "{:.2f}"),
    "kl": ("KL(teacher || student) per token", "{:.4f}"),
    "firing_rate": ("firing rate (fraction non-zero)", "{:.4f}"),
    "spikes_per_neuron": ("spikes per neuron per token", "{:.4f}"),
    "eval_tokens": ("held-out tokens", "{:,}"),
}


def _shape_rows(config) -> list[tuple[str, str]]:
    rows = [("layers", config.num_hidden_layers), ("d_model", config.hidden_size),
            ("d_inner", config.intermediate_size), ("d_state", config.state_size), ("vocabulary", config.vocab_size)]
    sc = config.spiking_config
    if sc is not None:
        rows += [("neuron", sc.neuron), ("levels D", sc.levels), ("neurons before", ", ".join(sc.sites)),
                 ("thresholds", "per channel" if sc.per_channel else "per site")]
    return [(name, str(value)) for name, value in rows]


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]


def _block(text: str) -> list[str]:
    return ["```", text.rstrip(), "```"]


def model_card(config, name: str, recipe: Mapping[str, Any] | None = None, command: str | None = None,
               distillation: Mapping[str, Any] | None = None, energy: str | None = None,
               evaluation: str | None = None) -> str:
    """The card's markdown. `recipe`: the run's settings; `command`: the command that ran it;
    `distillation`: the final held-out evaluation of `distill`; `energy`, `evaluation`: the
    plain-text tables of `spikingmamba energy` / `eval`."""
    from spikingmamba import __version__

    spiking = config.spiking is not None
    what = ("a SpikingMamba student: a Mamba-1 language model with spiking neurons (SpikingMamba, "
            "arXiv 2510.04595)" if spiking else "a dense Mamba-1 language model")
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [spikingmamba, mamba" + (", spiking-neural-network" if spiking else "") + "]", "---", "",
             f"# {name}", "", f"{what}, saved by spikingmamba {__version__}.", "",
             *_table(("shape", "value"), _shape_rows(config)), "",
             "## Use", "",
             "The folder's `configuration_spikingmamba.py` and `modeling_spikingmamba.py` import the model "
             "from the installed `spikingmamba` package, so install it first.", "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline", "",
             f'model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)  '
             "# or `import spikingmamba` first",
             f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
             'ids = tokenizer("KING HENRY.", return_tensors="pt").input_ids',
             "print(tokenizer.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))",
             'print(pipeline("text-generation", model=model, tokenizer=tokenizer)("KING HENRY.")[0]["generated_text"])',
             "```", "",
             "`generate` carries the constant-size recurrent state as its cache; its defaults "
             "(generation_config.json) are those of `spikingmamba generate`: sampling at temperature 1, "
             "top-k and top-p off. From the command line: "
             f'`spikingmamba generate {name} --prompt "KING HENRY."`.', ""]
    if recipe is not None or command is not None:
        lines += ["## Recipe", ""]
        if command is not None:
            lines += ["Command:", "", "```", command, "```", ""]
        if recipe is not None:
            lines += ["```yaml", yaml.safe_dump(dict(recipe), sort_keys=False).rstrip(), "```", ""]
    if distillation:
        rows = [(label, fmt.format(distillation[key])) for key, (label, fmt) in _DISTILL_ROWS.items()
                if distillation.get(key) is not None]
        lines += ["## Distillation, held-out evaluation at the last step", "", *_table(("quantity", "value"), rows), ""]
    if energy is not None:
        lines += ["## Energy", "", *_block(energy), ""]
    if evaluation is not None:
        lines += ["## Evaluation", "", *_block(evaluation), ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path, config, **sections) -> Path:
    """Write README.md into `folder` (see `model_card` for the optional sections)."""
    path = Path(folder) / CARD_FILE
    path.write_text(model_card(config, Path(folder).name, **sections), encoding="utf-8")
    return path
