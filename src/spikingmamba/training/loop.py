"""The training loop, shared by `pretrain`, `distill` and `rl`: they supply a `Task` and two `Examples`
splits (train, held-out), the loop does the rest.

One optimiser step:
    task.before_step(step)                      e.g. anneal the SGC weight
    for each of grad_accum micro-batches:        examples of the global batch for this process
        batch = train.batch(indices, device)     a task's own batch type (token rows, preference pairs)
        loss = task.loss(model, batch) / grad_accum;  loss.backward()   (DDP syncs on the last)
    losses averaged over processes; non-finite -> stop (the last checkpoint is left as it was)
    clip the gradient norm; AdamW step; scheduler step

The examples of a step are the next G positions of an endless stream of per-epoch permutations of
the training examples (G = batch_size x grad_accum x processes; `spikingmamba.data.order`); process
r reads its own slices of them, positions [p + (m*N + r)*b, p + (m*N + r + 1)*b) for micro-batch m.
The checkpoint records the stream position p, so a resumed run sees exactly the batches the
uninterrupted run would have, and N processes with batch b see the same global batch as one process
with batch N*b.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.distributed.tensor import DTensor
from torch import nn

from spikingmamba.data.order import BatchOrder, ShuffledOrder, row_order
from spikingmamba.errors import UserError
from spikingmamba.ops.cpu_adamw import CpuAdamW
from spikingmamba.model.loading import RUN_MODEL_DIR as MODEL_DIR
from spikingmamba.training.checkpoint import CHECKPOINT_DIR, full_state_dicts, load_checkpoint, save_checkpoint
from spikingmamba.training.config import TrainConfig
from spikingmamba.training.distributed import (DistEnv, all_gather_objects, all_reduce_sum, is_meta, materialize,
                                               unwrap, wrap_model)
from spikingmamba.training.metrics import MetricsLog, logged_eval
from spikingmamba.training.schedule import make_scheduler
from spikingmamba.utils.io import atomic_save_dir, read_json, write_text_atomic

RESULT_FILE = "result.json"


class NonFiniteLossError(UserError):
    """The loss or the gradient norm became NaN or infinite; training stopped."""


class Examples(Protocol):
    """A split as the loop sees it: `len` examples of (up to) `seq_len` tokens each (counted in the
    run's `tokens`), gathered into the task's batch type by `batch`."""

    @property
    def seq_len(self) -> int: ...

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor, device: torch.device) -> Any:
        """Examples `indices` as one batch on `device`, what `Task.loss` and `Task.eval_totals` take."""


class Task(Protocol):
    """What a kind of training supplies to the loop."""

    model: nn.Module            # the model to optimise (unwrapped); on the meta device under FSDP, see below
    eval_at_start: bool         # evaluate once before the first step
    # Under FSDP a task may build `model` on the meta device (no memory): the loop shards it, allocates
    # each process's shards on its device and fills them from the checkpoint (--resume) or from this
    # full state dict, given on process 0 only (None on the others), which is broadcast.
    initial_state: dict[str, torch.Tensor] | None

    def before_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called before optimiser step `step` (0-based); returns values to log (e.g. the SGC weight)."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss to minimise, named detached parts to log) for one micro-batch."""

    def eval_totals(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Additive sums over one held-out batch (summed over batches and processes by the loop)."""

    def eval_summary(self, totals: dict[str, float]) -> dict[str, Any]:
        """Metrics (perplexity, KL, ...) from the summed totals."""

    def save_model(self, out: Path, full_state: dict[str, torch.Tensor] | None) -> None:
        """Write the trained model folder (main process only). `full_state` is the gathered state
        dict when FSDP shards `model` (None otherwise: save `model` itself)."""


def _param_groups(model: nn.Module, weight_decay: float, lr: float, theta_lr_scale: float) -> list[dict]:
    """Decay matrices (Linear weights, trained embeddings); not norms, biases, conv, A_log, D, theta.
    The neurons' thresholds theta get their own group, at `theta_lr_scale` times the learning rate."""
    decay, no_decay, theta, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if name.endswith(".theta"):
            theta.append(p)
        elif p.dim() == 2 and not name.endswith("A_log"):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if theta:
        groups.append({"params": theta, "weight_decay": 0.0, "lr": lr * theta_lr_scale})
    return groups


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    groups = _param_groups(model, cfg.weight_decay, cfg.lr, cfg.theta_lr_scale)
    if not any(g["params"] for g in groups):
        raise UserError("nothing to train: every parameter of the model is frozen")
    # CpuAdamW: on CPU float32 parameters one compiled kernel call for every tensor (ops/cpu_adamw.py),
    # elsewhere torch's fused AdamW (one kernel per parameter tensor instead of ~8 elementwise ops each);
    # both equal to the per-tensor AdamW to float rounding (tests/test_training.py). FSDP's sharded
    # parameters (DTensor) keep the per-tensor AdamW, which its equality test with one process holds to.
    kwargs = dict(lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    if any(isinstance(p, DTensor) for g in groups for p in g["params"]):
        return torch.optim.AdamW(groups, foreach=False, **kwargs)
    return CpuAdamW(groups, fused=True, **kwargs)


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Checkpoint every block (transformers renamed gradient_checkpointing_enable to
    activation_checkpointing_enable in 5.x; the old name warns there)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync_context(wrapped: nn.Module, strategy: str, last_micro: bool):
    """Gradient sync only on the last micro-batch of a step."""
    if hasattr(wrapped, "no_sync") and not last_micro:
        return wrapped.no_sync()
    if strategy == "fsdp" and hasattr(wrapped, "set_requires_gradient_sync"):
        wrapped.set_requires_gradient_sync(last_micro)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, heldout: Examples, cfg: TrainConfig, env: DistEnv) -> dict:
    """Held-out metrics over the first `eval_rows` examples, sharded over processes, summed exactly."""
    n_rows = len(heldout) if cfg.eval_rows == 0 else min(cfg.eval_rows, len(heldout))
    mine = list(range(env.rank, n_rows, env.world_size))
    n_batches = math.ceil(len(mine) / cfg.batch_size)
    if env.distributed and cfg.distributed == "fsdp":  # every forward gathers weights with all processes:
        n_batches = math.ceil(math.ceil(n_rows / env.world_size) / cfg.batch_size)  # all run as many batches
    was_training = unwrap(model).training
    unwrap(model).eval()
    totals: dict[str, torch.Tensor] = {}
    try:
        for start in range(0, n_batches * cfg.batch_size, cfg.batch_size):
            rows = mine[start:start + cfg.batch_size]
            # a process out of rows takes part in the gathers with row 0, whose totals it drops
            batch = heldout.batch(torch.tensor(rows or [0], dtype=torch.long), env.device)
            with _autocast(cfg, env.device):
                part = task.eval_totals(model, batch)
            for key, value in part.items() if rows else ():
                totals[key] = totals.get(key, 0) + value.detach().double().cpu()
    finally:
        unwrap(model).train(was_training)
    # every process takes part in the reduction with the same keys and shapes, even one without rows
    shapes = {k: tuple(v.shape) for k, v in totals.items()}
    if env.distributed:
        for other in all_gather_objects(shapes, env):
            shapes.update(other)
    keys = sorted(shapes)
    flat = torch.cat([totals.get(k, torch.zeros(shapes[k], dtype=torch.float64)).reshape(-1) for k in keys]
                     + [torch.zeros(0, dtype=torch.float64)])
    flat = all_reduce_sum(flat, env)
    summed, i = {}, 0
    for k in keys:
        n = math.prod(shapes[k])
        summed[k] = flat[i:i + n].reshape(shapes[k]) if shapes[k] else float(flat[i])
        i += n
    return task.eval_summary(summed)


def _accumulate_gradients(task: Task, wrapped: nn.Module, train: Examples, order: BatchOrder | ShuffledOrder,
                          position: int, step: int, cfg: TrainConfig, env: DistEnv, params: list[torch.Tensor]):
    """Forward + backward over this process's micro-batches of step `step`; clip the gradient.

    `position` is the data stream's position at the start of the step.
    Returns (loss, named parts, gradient norm), the loss and parts averaged over all processes,
    so that every process sees the same values (and stops together on a non-finite one).
    """
    sums: dict[str, torch.Tensor] = {}
    for micro in range(cfg.grad_accum):
        start = position + (micro * env.world_size + env.rank) * cfg.batch_size
        batch = train.batch(order.take(start, cfg.batch_size), env.device)
        with _sync_context(wrapped, cfg.distributed, last_micro=micro == cfg.grad_accum - 1):
            with _autocast(cfg, env.device):
                loss, parts = task.loss(wrapped, batch)
            if cfg.debug_nan_at_step == step + 1:
                loss = loss * float("nan")
            (loss / cfg.grad_accum).backward()
        for key, value in {"loss": loss, **parts}.items():
            sums[key] = sums.get(key, 0) + value.detach().double().cpu() / cfg.grad_accum
    keys = sorted(sums)
    reduced = all_reduce_sum(torch.stack([sums[k] for k in keys]), env) / env.world_size
    values = dict(zip(keys, reduced.tolist(), strict=True))
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    return values.pop("loss"), values, grad_norm


def fit(task: Task, cfg: TrainConfig, train: Examples, heldout: Examples, env: DistEnv,
        out: Path, describe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `task.model` for `cfg.max_steps` steps (or up to `cfg.stop_at_step`); return the result
    (with `describe` merged in), written to `<out>/result.json` when the run is complete."""
    out = Path(out)
    sharded = env.distributed and cfg.distributed == "fsdp"
    on_meta = is_meta(task.model)
    if on_meta and not sharded:
        raise UserError("a model built on the meta device is trained only with distributed fsdp under torchrun")
    model = task.model if on_meta else task.model.to(env.device)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    global_batch = cfg.batch_size * cfg.grad_accum * env.world_size
    if len(train) < global_batch:
        raise UserError(f"the train split has {len(train)} sequences of {train.seq_len} tokens, fewer than one "
                        f"step's global batch ({cfg.batch_size} x {cfg.grad_accum} accumulation x "
                        f"{env.world_size} process(es) = {global_batch}): add text, or lower seq_len/batch_size")
    wrapped = wrap_model(model, env, cfg.distributed)
    if on_meta:  # this process's shards only; filled from the checkpoint, or from process 0's initial state
        materialize(model, env, None if cfg.resume else task.initial_state)
        task.initial_state = None  # process 0's full copy is no longer needed
    trained = wrapped if sharded else model
    optimizer = make_optimizer(trained, cfg)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    step, tokens_seen, elapsed_before = 0, 0, 0.0
    position = 0  # of the data stream: rows read so far by all processes together
    if cfg.resume:
        meta = load_checkpoint(out, wrapped, optimizer, scheduler, env, sharded, cfg.sharded_checkpoint)
        step, tokens_seen, elapsed_before = meta["step"], meta["tokens"], meta["elapsed_s"]
        position = _resume_position(meta, len(train), step * global_batch)
        if step >= cfg.max_steps and (out / RESULT_FILE).is_file():  # nothing left to do
            return read_json(out / RESULT_FILE, "result file")
    log = MetricsLog(out, enabled=env.is_main, resume_step=step if cfg.resume else None)
    order = row_order(train, cfg.seed)
    end_step = cfg.stop_at_step or cfg.max_steps
    tokens_per_step = global_batch * train.seq_len
    first_eval = None

    def run_eval() -> dict:
        started = time.perf_counter()
        metrics = evaluate(task, wrapped if sharded else model, heldout, cfg, env)
        log.write({"kind": "eval", "step": step, **metrics, "eval_s": round(time.perf_counter() - started, 3)})
        return metrics

    def checkpoint() -> None:
        save_checkpoint(out, wrapped, optimizer, scheduler,
                        {"step": step, "tokens": tokens_seen, "elapsed_s": elapsed_before + run_time(),
                         "data": {"position": position, "rows": len(train)}, "global_batch": global_batch},
                        env, sharded, cfg.sharded_checkpoint)

    bar = _progress(cfg, env, step, end_step)
    started = time.perf_counter()
    run_time = lambda: time.perf_counter() - started  # noqa: E731
    window_start, window_tokens = started, 0
    last_eval = None
    if cfg.resume:  # the evaluations the first part made (at the start; at the end if it got there)
        first_eval = logged_eval(out, 0) if task.eval_at_start else None
        last_eval = logged_eval(out, step) if step >= cfg.max_steps else None
    model.train()
    try:
        if task.eval_at_start and not cfg.resume:
            first_eval = last_eval = run_eval()
            _show_eval(bar, step, first_eval)
            window_start = time.perf_counter()
        if step >= cfg.max_steps and all_gather_objects(last_eval is None, env)[0]:
            last_eval = run_eval()  # resumed after the last step, before its evaluation was logged
        while step < end_step:
            extra = task.before_step(step, cfg.max_steps)
            loss_value, parts, grad_norm = _accumulate_gradients(task, wrapped, train, order, position, step, cfg,
                                                                 env, params)
            lr_used = optimizer.param_groups[0]["lr"]
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                what = "loss" if not math.isfinite(loss_value) else "gradient norm"
                raise NonFiniteLossError(_non_finite_message(what, loss_value, grad_norm, step + 1, out))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            position += global_batch
            tokens_seen += tokens_per_step
            window_tokens += tokens_per_step
            now = time.perf_counter()
            record = {"kind": "train", "step": step, "loss": loss_value, **parts, "lr": lr_used,
                      "grad_norm": grad_norm, **extra,
                      "tokens": tokens_seen, "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                      "elapsed_s": elapsed_before + now - started}
            if step % cfg.log_every == 0 or step == end_step:
                log.write(record)
                window_start, window_tokens = time.perf_counter(), 0
            _show_train(bar, record)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps:
                last_eval = run_eval()
                _show_eval(bar, step, last_eval)
                window_start, window_tokens = time.perf_counter(), 0
            if (cfg.save_every and step % cfg.save_every == 0) or step == end_step:
                checkpoint()
    finally:
        if bar is not None:
            bar.close()
        log.close()

    result = {"out": str(out), "step": step, "max_steps": cfg.max_steps, "finished": step >= cfg.max_steps,
              "tokens": tokens_seen, "processes": env.world_size,
              "elapsed_s": round(elapsed_before + run_time(), 2),
              "tokens_per_s": round(tokens_seen / max(elapsed_before + run_time(), 1e-9), 1),
              "first_eval": first_eval, "final_eval": last_eval if step >= cfg.max_steps else None,
              "checkpoint": str(out / CHECKPOINT_DIR), "model": str(out / MODEL_DIR), **(describe or {})}
    if step >= cfg.max_steps:
        full_state = None
        if sharded:
            full_state = full_state_dicts(wrapped, optimizer, sharded)[0]  # collective
        if env.is_main:
            # the model folder appears whole or not at all; result.json (written last) marks the run done
            atomic_save_dir(out / MODEL_DIR, lambda folder: task.save_model(folder, full_state))
            write_text_atomic(out / RESULT_FILE, json.dumps(result, indent=2))
    return result


def _resume_position(meta: dict[str, Any], n_rows: int, by_step: int) -> int:
    """The data position recorded in a checkpoint (checkpoints without one were at `by_step`)."""
    data = meta.get("data", {"position": by_step, "rows": n_rows})
    if data["rows"] != n_rows:
        raise UserError(f"--resume: the checkpoint was written reading {data['rows']} training rows, the data now "
                        f"gives {n_rows}: resume with the data the run started with")
    return data["position"]


def _non_finite_message(what: str, loss: float, grad_norm: float, step: int, out: Path) -> str:
    ckpt = out / CHECKPOINT_DIR / "trainer.json"
    last = (f"the last good checkpoint (step {json.loads(ckpt.read_text())['step']}) is intact in "
            f"{ckpt.parent}" if ckpt.is_file() else "no checkpoint had been written yet")
    return (f"non-finite {what} at step {step} (loss {loss}, gradient norm {grad_norm}); training stopped "
            f"before the update, and {last}. Start over with --overwrite and a lower lr, more "
            "warmup_steps or a grad_clip (--resume keeps the recipe, which would reach the same step again)")


# --- progress display -------------------------------------------------------------------------
def _progress(cfg: TrainConfig, env: DistEnv, step: int, end_step: int):
    if not (cfg.progress and env.is_main):
        return None
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=end_step, initial=step, unit="step", dynamic_ncols=True,
                mininterval=0.5 if interactive else 30.0, file=sys.stderr)


def _fmt(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _show_train(bar, record: dict) -> None:
    if bar is None:
        return
    shown = {"loss": record["loss"]}
    for key in ("kl", "ce", "hidden", "rate", "sgc"):
        if key in record:
            shown[key] = record[key]
    shown["tok/s"] = round(record["tokens_per_s"])
    bar.set_postfix({k: _fmt(v) for k, v in shown.items()}, refresh=False)
    bar.update(1)


def _show_eval(bar, step: int, metrics: dict) -> None:
    if bar is None:
        return
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    bar.write(f"eval @ step {step}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in scalars.items()))
