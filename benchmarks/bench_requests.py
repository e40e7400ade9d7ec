"""Building and tokenising the offline suite's requests, before and after, side by side.

    python benchmarks/bench_requests.py [--docs N]     (no --docs: all 57006 requests)

  build     lm-eval's `build_all_requests` for every offline task: each Jinja template compiled once
            (`templates_compiled_once`, the default) vs compiled again for every document (lm-eval's own)
  tokenise  the backend's `loglikelihood` up to scoring (scoring stubbed out): each distinct string
            tokenised once (the default) vs HFLM's `tok_encode` for every context and context +
            continuation

Prints wall and CPU seconds of each and the old / new ratio of CPU seconds, and checks that both
ways give the same requests and the same tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from unittest import mock

from common import print_table
from lm_eval.models.huggingface import HFLM

from spikingmamba.evaluation import templates
from spikingmamba.evaluation.lm_backend import SpikingMambaLM
from spikingmamba.evaluation.offline import offline_requests
from spikingmamba.runtime import configure


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def tokenised(lm, requests):
    seen = []
    with mock.patch.object(lm, "_loglikelihood_tokens", lambda reqs, **kw: seen.extend(reqs) or [(0.0, True)] * len(reqs)):
        lm.loglikelihood(requests, disable_tqdm=True)
    return seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="src/spikingmamba/assets/default_teacher")
    p.add_argument("--docs", type=int, default=None, help="documents per offline task (none: all)")
    args = p.parse_args()
    configure(0)

    new, build_wall, build_cpu = timed(lambda: offline_requests(args.docs))
    with mock.patch.object(templates, "templates_compiled_once", contextlib.nullcontext):
        old, old_build_wall, old_build_cpu = timed(lambda: offline_requests(args.docs))
    key = [(r.task_name, r.doc_id, r.idx, r.args) for r in new]
    assert key == [(r.task_name, r.doc_id, r.idx, r.args) for r in old], "different requests"

    lm = SpikingMambaLM(args.model)
    ours, tok_wall, tok_cpu = timed(lambda: tokenised(lm, new))
    with mock.patch.object(lm, "tok_encode", functools.partial(HFLM.tok_encode, lm)):
        theirs, old_tok_wall, old_tok_cpu = timed(lambda: tokenised(lm, new))
    assert ours == theirs, "different tokens"

    rows = [("build", f"{old_build_wall:.1f} / {old_build_cpu:.1f}", f"{build_wall:.1f} / {build_cpu:.1f}",
             f"{old_build_cpu / build_cpu:.1f}x"),
            ("tokenise", f"{old_tok_wall:.1f} / {old_tok_cpu:.1f}", f"{tok_wall:.1f} / {tok_cpu:.1f}",
             f"{old_tok_cpu / tok_cpu:.1f}x")]
    print_table(f"{len(new)} requests ({args.docs or 'all'} documents per offline task), same requests and tokens",
                rows, ("step", "before: wall / CPU s", "now: wall / CPU s", "CPU before / now"))


if __name__ == "__main__":
    main()
