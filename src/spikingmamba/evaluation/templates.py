"""lm-eval's Jinja prompt templates, each compiled once instead of once per document.

lm-eval renders every `doc_to_text` / `doc_to_target` / `doc_to_choice` template with
`lm_eval.utils.apply_template`, which compiles the template string anew on every call
(`env.from_string`); over the offline suite's ~20k documents that compilation, not the rendering,
is most of the time it takes to build the requests. `templates_compiled_once` swaps in a version
that keeps one compiled template per string, built by lm-eval's own environment (same filters,
same undefined-variable rule), so every prompt renders to exactly the same text.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from unittest import mock


@functools.lru_cache(maxsize=1024)
def _compiled(template: str):
    from lm_eval.utils import env

    return env.from_string(template)


def apply_template(template: str, doc: dict) -> str:
    """`lm_eval.utils.apply_template` with the compiled template kept per template string."""
    return _compiled(template).render(**doc)


@contextlib.contextmanager
def templates_compiled_once() -> Iterator[None]:
    """Inside the block, lm-eval renders its templates through `apply_template` above."""
    with mock.patch("lm_eval.utils.apply_template", apply_template):
        yield
