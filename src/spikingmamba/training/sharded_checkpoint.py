"""Sharded training state: every process writes and reads only its own shard of the model and
optimiser state (`torch.distributed.checkpoint`, DCP), for FSDP runs (`--sharded-checkpoint`).

    <checkpoint>/shards/.metadata        which slice of which tensor lies where (written by process 0)
    <checkpoint>/shards/__<rank>_0.distcp  process <rank>'s slices of the model and AdamW tensors

The state is the FSDP model's and optimiser's *sharded* state dicts
(`torch.distributed.checkpoint.state_dict.get_state_dict`): DTensors that DCP saves by their global
offsets, so a run with another number of processes reads back exactly the values that were saved,
each process just the slices of its own shards (resharding on load). Nothing is gathered on one
process, and no process holds more than its shard.

Nothing is unpickled outside `weights_only`: DCP's reader would `pickle.load` the `.metadata` file and
`torch.load(weights_only=False)` non-tensor entries (the optimiser's param_groups); `SafeReader` reads
the metadata through an unpickler that builds only DCP's own metadata classes (and torch sizes,
dtypes and layouts), `SafePlanner` loads non-tensor entries with `weights_only=True`. A folder that
holds anything else is a `FileError`.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from spikingmamba.errors import FileError

SHARDS_DIR = "shards"


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """{"model": ..., "optimizer": ...}: this process's shards (DTensors), as DCP saves and loads them.
    Collective under FSDP; with an optimiser that has not stepped yet, its state is created (zeros)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def save_shards(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: every process writes its shard into `folder/shards` (process 0 adds the metadata).
    A failure on any process raises on every process (DCP gathers them)."""
    try:
        dcp.save(sharded_state(model, optimizer), storage_writer=FileSystemWriter(Path(folder) / SHARDS_DIR),
                 no_dist=_single_process())
    except CheckpointException as err:
        raise _cause(err) from None  # e.g. the OSError of a full disk, which the caller names


def load_shards(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: fill this process's shards of `model` and `optimizer` from `folder/shards`, whatever
    the number of processes that wrote it."""
    state = sharded_state(model, optimizer)
    try:
        dcp.load(state, storage_reader=SafeReader(Path(folder) / SHARDS_DIR), planner=SafePlanner(),
                 no_dist=_single_process())
    except (Exception, CheckpointException) as err:
        cause = _cause(err)
        if isinstance(cause, FileError):
            raise cause from None
        if isinstance(cause, FileNotFoundError):
            raise FileError(f"checkpoint {folder} is incomplete: {cause.filename} is missing; it cannot be resumed "
                            "from") from None
        raise FileError(f"the sharded checkpoint in {folder} does not fit this run's model or optimiser, or is "
                        f"damaged ({type(cause).__name__}: {' '.join(str(cause).split())[:200]})") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def _cause(err: BaseException) -> BaseException:
    """The first process's own error inside DCP's `CheckpointException` (which gathers them all)."""
    if isinstance(err, CheckpointException) and err.failures:
        return next(iter(err.failures.values()))[0]
    return err


def _single_process() -> bool:
    """No process group: one process writes (or reads) every shard, the same format (DCP's warning
    that it assumes so is silenced: it is what we ask for)."""
    single = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    if single:
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
    return single


# --- reading without running code -------------------------------------------------------------------
def _metadata_classes() -> dict[tuple[str, str], Any]:
    from torch.distributed.checkpoint import filesystem

    allowed = {(cls.__module__, cls.__name__): cls for cls in (
        dcp_metadata.Metadata, dcp_metadata.MetadataIndex, dcp_metadata.StorageMeta,
        dcp_metadata.TensorStorageMetadata, dcp_metadata.BytesStorageMetadata, dcp_metadata.ChunkStorageMetadata,
        dcp_metadata.TensorProperties, dcp_metadata._MEM_FORMAT_ENCODING, filesystem._StorageInfo,
        torch.Size, pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath)}
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout  # a layout by its name
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes and nothing else (Python's "restricting globals" recipe)."""

    allowed = _metadata_classes()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")
        return found


class SafeReader(FileSystemReader):
    """`FileSystemReader` whose metadata file can only hold metadata (see the module docstring)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except FileNotFoundError:
            raise FileError(f"checkpoint metadata {path} is missing; the sharded checkpoint cannot be resumed "
                            "from") from None
        except pickle.UnpicklingError as err:
            raise FileError(f"refused to load checkpoint metadata {path}: {err}; it was not written by "
                            "spikingmamba or has been altered") from None
        except Exception:
            raise FileError(f"checkpoint metadata {path} is damaged (truncated or garbled)") from None
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise FileError(f"checkpoint metadata {path} is damaged: it does not hold DCP metadata")
        if metadata.storage_meta is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """`DefaultLoadPlanner` that reads non-tensor entries with `torch.load(weights_only=True)` (the
    rest of its `load_bytes`, where the value goes, as in torch)."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        fqn = read_item.dest_index.fqn
        try:
            loaded = torch.load(value, weights_only=True)
        except Exception:
            raise FileError(f"refused to load checkpoint entry {fqn!r}: it is not a plain value (loading it "
                            "could run code) or it is damaged") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], loaded)
        else:
            self.state_dict[fqn] = loaded
