"""Offline-evaluation scoring paths side by side on real offline task requests.

    python benchmarks/bench_eval.py [--model src/spikingmamba/assets/default_teacher --docs 40 --repeats 3]

Builds lm-eval's requests for the first `--docs` documents of every offline task (the same requests
`spikingmamba eval MODEL --tasks offline --limit DOCS` scores) and times, interleaved in one run,
the backend's `loglikelihood` over all of them with:

  extend   the default: context read once (`prefill`), every continuation scored in one sequence
           pass from the context's state (`model.extend`), rows sorted by length across many contexts
  step     the previous default: context read once, continuations stepped token by token from its
           state (`model.step`), all continuations of a batch together; kept here as the baseline
  hflm     lm-eval's own HFLM batching (`prefix_sharing=False`): context + continuation in one
           forward per request, right-padded batches sorted by length

It prints seconds, requests/s and each path's time / extend's, and the largest difference of the
log-likelihoods from the `step` path and how many is_greedy flags differ (the equality check at
benchmark scale; the tests check it against an unbatched oracle and transformers).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import interleaved_median, print_table
from spikingmamba.evaluation.lm_backend import DEFAULT_BATCH_SIZE, SpikingMambaLM, _index_state, _same_length_batches
from spikingmamba.evaluation.offline import offline_requests
from spikingmamba.runtime import configure


class StepScoringLM(SpikingMambaLM):
    """The previous scoring path: per batch of equal-length contexts, the context read once, then all
    its continuations stepped token by token from its state (`model.step`)."""

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        by_context: dict[tuple[int, ...], list[int]] = {}
        for index, (_, context, _) in enumerate(requests):
            by_context.setdefault(tuple(context), []).append(index)
        results = [None] * len(requests)
        for contexts in _same_length_batches(list(by_context), self.batch_size):
            rows = [(b, index) for b, context in enumerate(contexts) for index in by_context[context]]
            scores = self._step_from_contexts(contexts, [requests[index][2] for _, index in rows],
                                              [b for b, _ in rows])
            for (_, index), answer in zip(rows, scores, strict=True):
                results[index] = answer
        return results

    @torch.no_grad()
    def _step_from_contexts(self, contexts, continuations, row_context):
        model = self.model
        logits, state = model.prefill(torch.tensor(contexts, dtype=torch.long))  # (c, vocab), state
        lengths = [len(c) for c in continuations]
        order = sorted(range(len(continuations)), key=lambda r: -lengths[r])  # running rows: a prefix
        width = lengths[order[0]]
        targets = torch.zeros(len(order), width, dtype=torch.long)
        for i, r in enumerate(order):
            targets[i, : lengths[r]] = torch.tensor(continuations[r], dtype=torch.long)
        pick = torch.tensor([row_context[r] for r in order])
        logits, state = logits[pick], _index_state(state, pick)
        total = torch.zeros(len(order), dtype=torch.float64)
        greedy = torch.ones(len(order), dtype=torch.bool)
        sorted_lengths = torch.tensor([lengths[r] for r in order])
        for t in range(width):
            active = int((sorted_lengths > t).sum())
            logprobs = F.log_softmax(logits[:active].float(), dim=-1, dtype=self.softmax_dtype)
            target = targets[:active, t]
            total[:active] += logprobs.gather(1, target[:, None]).squeeze(1).double()
            greedy[:active] &= logprobs.argmax(-1) == target
            still = int((sorted_lengths > t + 1).sum())
            if still:
                logits, state = model.step(target[:still], _index_state(state, slice(0, still)))
        answers = [None] * len(order)
        for i, r in enumerate(order):
            answers[r] = (float(total[i]), bool(greedy[i]))
        return answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="src/spikingmamba/assets/default_teacher")
    p.add_argument("--docs", type=int, default=40, help="documents per offline task")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-threads", type=int, default=0, help="0: every available core")
    p.add_argument("--paths", default="extend,step,hflm")
    args = p.parse_args()
    threads = configure(args.num_threads)

    requests = offline_requests(args.docs)
    extend = SpikingMambaLM(args.model, batch_size=args.batch_size)
    lms = {"extend": extend,
           "step": StepScoringLM(extend.model, tokenizer=extend.tokenizer, batch_size=args.batch_size),
           "hflm": SpikingMambaLM(extend.model, tokenizer=extend.tokenizer, batch_size=args.batch_size,
                                  prefix_sharing=False)}
    lms = {name: lms[name] for name in args.paths.split(",")}
    answers = {}

    def run(name):
        def fn():
            answers[name] = lms[name].loglikelihood(requests, disable_tqdm=True)
        return fn

    seconds = interleaved_median({name: run(name) for name in lms}, repeats=args.repeats, warmup=0)
    rows = []
    base = answers.get("step")
    for name, s in seconds.items():
        if base is not None:
            diff = max(abs(a[0] - b[0]) for a, b in zip(answers[name], base, strict=True))
            flips = sum(a[1] != b[1] for a, b in zip(answers[name], base, strict=True))
            check = (f"{diff:.2e}", str(flips))
        else:
            check = ("-", "-")
        rows.append((name, f"{s:.2f}", f"{len(requests) / s:.0f}", f"{s / seconds[next(iter(seconds))]:.2f}x",
                     *check))
    print_table(f"{len(requests)} requests ({args.docs} documents per offline task), model {args.model}, "
                f"batch {args.batch_size}, {threads} threads, median of {args.repeats}",
                rows, ("path", "seconds", "requests/s", f"time / {next(iter(seconds))}",
                       "max |loglik - step|", "is_greedy != step"))


if __name__ == "__main__":
    main()
