"""Zero-shot evaluation with lm-evaluation-harness: our model as an lm-eval backend, offline copies
of the standard benchmarks, in-domain tasks generated from held-out text, teacher agreement.

    from spikingmamba.evaluation import evaluate, format_table
    report = evaluate("runs/student", "offline", teacher="runs/teacher", out_dir="runs/eval")
    print(format_table(report))

The lm-eval backend (`SpikingMambaLM`, registered as `spikingmamba`) lives in `lm_backend`; it is
imported on first use because lm-eval takes a couple of seconds to import.
"""

from spikingmamba.evaluation.indomain import make_indomain_tasks
from spikingmamba.evaluation.runner import evaluate, teacher_agreement
from spikingmamba.evaluation.table import format_table
from spikingmamba.evaluation.tasks_catalog import TASK_SETS, available_names, resolve_tasks

__all__ = ["SpikingMambaLM", "TASK_SETS", "available_names", "evaluate", "format_table", "make_indomain_tasks",
           "resolve_tasks", "teacher_agreement"]


def __getattr__(name: str):
    if name == "SpikingMambaLM":
        from spikingmamba.evaluation.lm_backend import SpikingMambaLM

        return SpikingMambaLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
