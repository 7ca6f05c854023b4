"""Reading a DCP directory without running code from it.

``torch.distributed.checkpoint``'s own reader unpickles ``.metadata`` with :func:`pickle.load` and its planner
loads each byte item with ``torch.load(..., weights_only=False)``: a planted ``__reduce__`` in either runs at load.
:class:`SafeReader` replaces both: ``.metadata`` goes through :class:`_MetadataUnpickler`, which builds only the
classes DCP writes there (its dataclasses, ``torch.Size``, dtypes and layouts, paths), and every byte item through
``torch.load(..., weights_only=True)``. It also checks what the metadata points at: every storage entry names a
``.distcp`` file the manifest lists (no path outside the directory), within that file's size, and no declared
tensor is larger than all the shard files together (a forged size cannot make the loader allocate terabytes).
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import warnings
from collections.abc import Callable, Collection
from concurrent.futures import Future
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath
from typing import Any, TypeVar

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem
from typing_extensions import override

from prec.errors import CheckpointError

__all__ = ["SafeReader", "raise_checkpoint_error", "read_whole"]

_Result = TypeVar("_Result")
_DCP = "torch.distributed.checkpoint"
#: Every global a ``.metadata`` of torch's file-system writer holds; anything else is refused.
_ALLOWED: dict[tuple[str, str], Any] = {
    (f"{_DCP}.metadata", cls.__name__): cls
    for cls in (
        Metadata,
        TensorStorageMetadata,
        BytesStorageMetadata,
        ChunkStorageMetadata,
        TensorProperties,
        MetadataIndex,
        StorageMeta,
    )
}
_ALLOWED[(f"{_DCP}.filesystem", "_StorageInfo")] = _StorageInfo
_ALLOWED[("torch", "Size")] = torch.Size
_ALLOWED.update({("pathlib", cls.__name__): cls for cls in (PosixPath, WindowsPath, PurePosixPath, PureWindowsPath)})
_ALLOWED[("collections", "OrderedDict")] = collections.OrderedDict
if hasattr(dcp_metadata, "_MEM_FORMAT_ENCODING"):  # TensorProperties' memory-format enum (torch >= 2.2)
    _ALLOWED[(f"{_DCP}.metadata", "_MEM_FORMAT_ENCODING")] = dcp_metadata._MEM_FORMAT_ENCODING


def _layout(name: str) -> torch.layout:
    """``torch.serialization._get_layout``'s job, for the layouts torch has (by ``str(layout)``)."""
    layouts = {str(value): value for value in vars(torch).values() if isinstance(value, torch.layout)}
    if name not in layouts:
        raise pickle.UnpicklingError(f"unknown tensor layout {name!r}")
    return layouts[name]


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only what DCP's ``.metadata`` holds; any other global is an ``UnpicklingError``."""

    @override
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) == ("torch.serialization", "_get_layout"):
            return _layout
        raise pickle.UnpicklingError(f"{module}.{name} is not a class DCP writes in its metadata")


class SafeReader(FileSystemReader):
    """DCP's file-system reader that never unpickles anything but the classes it writes.

    ``files`` are the directory's files the manifest lists (relative names); storage entries must point into them.
    """

    def __init__(self, path: str | Path, files: Collection[str]) -> None:
        super().__init__(path)
        self.directory = Path(path)
        self.files = {name for name in files if name.endswith(".distcp") and "/" not in name and "\\" not in name}

    @override
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """Unpickle ``.metadata`` with the allow-list, then check what it points at."""
        rank = kwargs.get("rank")
        path = Path(self._get_metadata_path(rank))
        try:
            with path.open("rb") as file:
                metadata = _MetadataUnpickler(file).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as error:
            raise CheckpointError(
                f"sharded checkpoint {self.directory}: {path.name} is not DCP metadata prec can read safely"
                f" ({type(error).__name__}: {error}); it was not written by torch.distributed.checkpoint, or was"
                " edited."
            ) from error
        except OSError as error:
            raise CheckpointError(f"sharded checkpoint {self.directory}: cannot read {path.name}: {error}") from error
        self._check(path.name, metadata)
        if not isinstance(metadata.storage_meta, StorageMeta):
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    @override
    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """DCP's reading, with each byte item loaded ``weights_only=True`` first (:class:`_WeightsOnlyBytes`)."""
        return super().read_data(plan, _WeightsOnlyBytes(planner, self.directory))  # type: ignore[arg-type]

    def _check(self, name: str, metadata: Any) -> None:
        def bad(what: str) -> CheckpointError:
            return CheckpointError(f"sharded checkpoint {self.directory}: {name} is malformed: {what}.")

        if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
            raise bad(f"it holds a {type(metadata).__name__}, not DCP's Metadata")
        storage = metadata.storage_data
        if not isinstance(storage, dict):
            raise bad("it has no storage table")
        sizes = {file: (self.directory / file).stat().st_size for file in self.files}
        for index, info in storage.items():
            if not isinstance(index, MetadataIndex) or not isinstance(info, _StorageInfo):
                raise bad(f"a storage entry of type {type(info).__name__}")
            if info.relative_path not in sizes:
                raise bad(f"{index.fqn} is stored in {info.relative_path!r}, not a shard file the manifest lists")
            offset, length = info.offset, info.length
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, length)):
                raise bad(f"{index.fqn} has the byte range {offset!r}+{length!r}")
            if offset + length > sizes[info.relative_path]:
                raise bad(f"{index.fqn} lies past the end of {info.relative_path}")
            if info.transform_descriptors:
                raise bad(f"{index.fqn} needs stream transforms {list(info.transform_descriptors)}, which prec refuses")
        budget = sum(sizes.values())
        for key, item in metadata.state_dict_metadata.items():
            if isinstance(item, BytesStorageMetadata):
                continue
            if not isinstance(item, TensorStorageMetadata) or not isinstance(item.properties, TensorProperties):
                raise bad(f"{key!r} is described by a {type(item).__name__}")
            dtype, size = item.properties.dtype, item.size
            if not isinstance(dtype, torch.dtype) or not isinstance(size, torch.Size):
                raise bad(f"{key!r} has dtype {dtype!r} and size {size!r}")
            if math.prod(size) * dtype.itemsize > budget:
                raise bad(f"{key!r} declares {tuple(size)} {dtype}, more than all its shard files hold")


class _WeightsOnlyBytes:
    """A planner seen through a filter: a byte item is unpickled ``weights_only=True`` before the planner sees it.

    DCP's planners load byte items with ``weights_only=False``; this loads them with the allow-list, then hands
    the planner a re-serialised copy of what loaded (only allowed types), so whatever planner DCP uses gets the
    value and no payload of the file is ever run."""

    def __init__(self, planner: LoadPlanner, directory: Path) -> None:
        self._planner = planner
        self._directory = directory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._planner, name)

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch raises many types for a refused or damaged pickle
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(
                f"sharded checkpoint {self._directory}: the stored value {read_item.dest_index.fqn!r} is refused:"
                f" {reason}"
            ) from error
        clean = io.BytesIO()
        torch.save(loaded, clean)
        clean.seek(0)
        self._planner.load_bytes(read_item, clean)


def raise_checkpoint_error(action: Callable[[], _Result], directory: Path) -> _Result:
    """Run a DCP ``action``; the CheckpointError a reader raised comes out as itself, not wrapped in DCP's
    ``CheckpointException`` (a BaseException that names every rank)."""
    try:
        return action()
    except CheckpointException as wrapped:
        for failure in wrapped.failures.values():
            error = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(error, CheckpointError):
                raise CheckpointError(str(error)) from wrapped
        raise CheckpointError(f"sharded checkpoint {directory} cannot be loaded: {wrapped}") from wrapped


class _WholeState(_EmptyStateDictLoadPlanner):
    """DCP's planner that rebuilds the whole saved state from the metadata (as ``dcp_to_torch_save`` does), kept
    here for the caller instead of being written to a file and loaded back."""

    @override
    def set_up_planner(self, state_dict: Any, metadata: Metadata | None = None, is_coordinator: bool = False) -> None:
        super().set_up_planner(state_dict, metadata, is_coordinator)
        self.whole = state_dict


def read_whole(source: Path, files: Collection[str]) -> dict[str, Any]:
    """Every saved state of the DCP checkpoint at ``source``, full tensors on the CPU, in this process alone."""
    planner = _WholeState()
    reader = SafeReader(source, files)
    with warnings.catch_warnings():  # "torch.distributed is disabled ... load in a single process": intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        raise_checkpoint_error(lambda: dcp.load({}, storage_reader=reader, planner=planner, no_dist=True), source)
    return dict(planner.whole)
