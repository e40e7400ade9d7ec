"""Files in and out, in one place: every read names the file when it fails, every write is atomic.

Reading (`read_text`, `read_json`, `read_yaml`, `load_torch`, `load_safetensors`): whatever can go
wrong with a file (missing, a folder, unreadable, not UTF-8, truncated, garbled, a pickle of
arbitrary objects) becomes a `FileError` that names the file and the problem. Nothing is unpickled
outside `torch.load(weights_only=True)`, so a file cannot make us run code.

Writing (`atomic_write`, `write_text_atomic`, `save_torch`, `atomic_save_dir`): the content goes to a
temporary sibling `.<name>.<random>.tmp` and is renamed into place, so a reader (or a run resumed
after a kill) sees the old version or the new one, never half of one. A failed write (e.g. disk
full) removes its temporary and leaves the previous version; the error says why
(`describe_os_error`: "no space left on device", "permission denied", ...).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from spikingmamba.errors import ConfigError, FileError, UserError

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENAMETOOLONG: "file name too long",
}


def describe_os_error(err: BaseException) -> str:
    """The reason of an OSError in plain words ("no space left on device"); also for the errors of
    libraries that only carry the OS message (safetensors, tokenizers)."""
    if isinstance(err, OSError) and err.errno in _REASONS:
        return _REASONS[err.errno]
    text = str(err)
    for code, reason in _REASONS.items():
        if os.strerror(code) in text:
            return reason
    return (err.strerror if isinstance(err, OSError) and err.strerror else text) or type(err).__name__


# --- reading ------------------------------------------------------------------------------------
@contextlib.contextmanager
def reading(path: str | Path, what: str = "file") -> Iterator[Path]:
    """Translate the OS errors of reading `path` into a FileError that names it."""
    path = Path(path)
    try:
        if path.is_dir():
            raise FileError(f"{what} {path} is a folder, not a file")
        yield path
    except FileNotFoundError:
        raise FileError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise FileError(f"{what} {path} is not UTF-8 text (byte {err.start}: {err.reason}); "
                        "save it as UTF-8") from None
    except OSError as err:
        raise FileError(f"cannot read {what} {path}: {describe_os_error(err)}") from None


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of `path`."""
    with reading(path, what) as p:
        return p.read_text(encoding="utf-8")


def read_json(path: str | Path, what: str = "file", expect: type | None = dict) -> Any:
    """The parsed JSON of `path`, checked to be an `expect` (an object by default; None: anything)."""
    text = read_text(path, what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        problem = "is empty" if not text.strip() else f"is not valid JSON ({err.msg} at line {err.lineno})"
        raise FileError(f"{what} {path} {problem}; it may be truncated or damaged") from None
    if expect is not None and not isinstance(value, expect):
        kinds = {dict: "an object {...}", list: "a list [...]"}
        raise FileError(f"{what} {path}: expected {kinds.get(expect, expect.__name__)} at the top level, "
                        f"got {type(value).__name__}")
    return value


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """The top-level mapping of a YAML file (empty file: {}); `what` names the file in errors.
    Only plain YAML is read (`safe_load`: no Python objects)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    try:
        values = yaml.safe_load(read_text(path, what))
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{what} {path}: expected a mapping of names to values at the top level")
    return values


def load_torch(path: str | Path, what: str = "file") -> Any:
    """`torch.load(weights_only=True)` on the CPU: tensors and plain values only. A file that holds
    other Python objects is refused (loading it could run code), a damaged one named as such."""
    import torch

    with reading(path, what) as p:
        try:
            with warnings.catch_warnings():  # torch warns about the pickle protocol of a file it then refuses
                warnings.simplefilter("ignore", UserWarning)
                return torch.load(p, map_location="cpu", weights_only=True)
        except OSError:
            raise
        except pickle.UnpicklingError as err:
            if "unsupported global" in str(err).lower():
                raise FileError(f"refused to load {what} {p}: it holds Python objects other than tensors and "
                                "plain values, so loading it could run code; it was not written by spikingmamba "
                                "or has been altered. Delete it, or restore a copy you trust") from None
            raise FileError(f"refused to load {what} {p}: it is damaged, or is a pickle that is not a plain "
                            "torch file of tensors and values (only those are ever loaded); delete it, or "
                            "restore a copy you trust") from None
        except Exception:  # torch raises RuntimeError / EOFError / ValueError / ... for damaged files
            raise FileError(f"{what} {p} is damaged (truncated or garbled): it is not a torch file") from None


def load_safetensors(path: str | Path, what: str = "weights file") -> dict:
    """The tensors of a .safetensors file on the CPU."""
    from safetensors.torch import load_file

    with reading(path, what) as p:
        try:
            return load_file(str(p))
        except OSError:
            raise
        except Exception as err:  # SafetensorError: bad header, file shorter than its header says, ...
            raise FileError(f"{what} {p} is damaged (truncated or garbled): {err}") from None


# --- writing ------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # temporaries are private (0600 / 0700); what is renamed into place gets the usual mode


def _temporary_name(target: Path) -> str:
    return f".{target.name}."


def _write_failed(target: Path, err: BaseException) -> FileError:
    return FileError(f"could not write {target}: {describe_os_error(err)}; the previous version (if any) "
                     "was left as it was")


def _is_os_failure(err: BaseException) -> bool:
    """An OSError, or a library's error that wraps one (safetensors, torch's writer)."""
    return isinstance(err, OSError) or "os error" in str(err).lower() or any(
        os.strerror(code) in str(err) for code in _REASONS)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(file)` on a temporary sibling of `path` opened for binary writing, then rename it
    into place. Readers (and concurrent writers, e.g. several processes filling a cache) never see
    half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_name(path), suffix=".tmp")
    except OSError as err:
        raise _write_failed(path, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, Exception) and _is_os_failure(err):
            raise _write_failed(path, err) from None
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_torch(obj: Any, path: str | Path) -> Path:
    """`torch.save` through a Python file object (so that a full disk raises an OSError), atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def _previous(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_dir(target: str | Path) -> Path:
    """Undo a crash between the two renames of `atomic_save_dir`: put the previous version back."""
    target = Path(target)
    if not target.exists() and _previous(target).is_dir():
        with contextlib.suppress(FileNotFoundError):  # another process recovered it first
            os.replace(_previous(target), target)
    return target


def remove_leftovers(target: str | Path) -> list[Path]:
    """After a crash: recover `target` (see `recover_dir`), then delete the temporaries a killed
    `atomic_save_dir` / `atomic_write` of it left behind (`.<name>.<random>.tmp`, `.<name>.old`).
    Only for a caller that owns the folder (e.g. a run holding its output lock). Returns them."""
    target = recover_dir(target)
    if not target.parent.is_dir():
        return []
    stale = [p for p in target.parent.iterdir() if p.name.startswith(_temporary_name(target))]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def atomic_save_dir(target: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp_dir)`, then swap tmp_dir in for `target`.

    A failure inside `write` leaves `target` untouched. Replacing a folder takes two renames
    (target -> .target.old, tmp -> target); a crash between them leaves the previous version in
    .target.old, which `recover_dir` (called here and by readers) puts back.
    """
    target = recover_dir(target)
    tmp = temporary_dir(target)
    try:
        write(tmp)
        replace_dir(tmp, target)
    except BaseException as err:
        raise discard_temporary(tmp, target, err) from None
    return target


def temporary_dir(target: str | Path) -> Path:
    """A new private temporary sibling folder of `target`, to be `replace_dir`-ed into place (or
    `discard_temporary`-ed); what `atomic_save_dir` does in steps, for writers that fill it together
    (every process of a sharded checkpoint writes its part)."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=_temporary_name(target), suffix=".tmp", dir=target.parent))
    except OSError as err:
        raise _write_failed(target, err) from None


def replace_dir(tmp: Path, target: str | Path) -> None:
    """Swap the finished temporary folder `tmp` in for `target` (two renames; see `atomic_save_dir`)."""
    target = Path(target)
    os.chmod(tmp, 0o777 & ~_UMASK)
    if target.exists():
        old = _previous(target)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def discard_temporary(tmp: Path, target: str | Path, err: BaseException) -> BaseException:
    """Delete the temporary folder of a failed save of `target`; the error to raise (a write failure
    of the OS becomes a `FileError` naming `target`)."""
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(err, Exception) and not isinstance(err, UserError) and _is_os_failure(err):
        return _write_failed(Path(target), err)
    return err


# --- output folders -----------------------------------------------------------------------------
def prepare_output_dir(out: str | Path, overwrite: bool, artefacts: tuple[str, ...] = ()) -> Path:
    """Create `out`; refuse a non-empty one unless `overwrite`, which first deletes the `artefacts`
    (names inside `out`) that an earlier run of the same command wrote, so none of them is left stale."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds files; pass --overwrite to replace them")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in artefacts:
            remove_path(out / name)
    except OSError as err:
        raise FileError(f"cannot prepare output folder {out}: {describe_os_error(err)}") from None
    return out


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree; nothing if absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def save_model(model, out: Path, tokenizer=None, source: str | None = None) -> None:
    """save_pretrained (safetensors + config) plus the tokenizer, written file by file into `out`."""
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    elif source is not None and Path(source).is_dir():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, Path(out) / name)
