"""Loading a sharded checkpoint never runs code from the directory, and every file in it is accounted for.

Each attack plants a ``__reduce__`` that would write a marker file, then re-hashes the manifest as an attacker
who can write the directory would: the load must refuse with a CheckpointError and the marker must not exist.
The checkpoints are written and loaded in one process (DCP without a process group), which runs the same reader
as an FSDP run's ``fit(ckpt_path=directory)``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

import prec
from prec.checkpoint.sharded import export_full_checkpoint, load_sharded, save_sharded
from prec.checkpoint.sharded_manifest import MANIFEST, write_manifest
from prec.errors import CheckpointError

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


class Payload:
    """Pickles as a call that writes ``marker``: what an attacker plants."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def model_and_optimizer(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model, optimizer = model_and_optimizer()
    path = tmp_path / "sharded"
    save_sharded(path, model, [optimizer], {"loops": {"global_step": 3, "epoch": 0, "batches_seen": 0}})
    return path


def rehash(path: Path) -> None:
    """Rewrite the manifest over whatever the directory now holds, as an attacker would."""
    (path / MANIFEST).unlink()
    write_manifest(path, 1)


def loads() -> list[Callable[[Path], Any]]:
    def fresh_load(path: Path) -> Any:
        model, optimizer = model_and_optimizer(seed=1)
        return load_sharded(path, model, [optimizer])

    def export(path: Path) -> Any:
        return export_full_checkpoint(path, path.parent / "full.ckpt")

    return [fresh_load, export]


@pytest.fixture(params=[0, 1], ids=["load_sharded", "export_full_checkpoint"])
def load(request: pytest.FixtureRequest) -> Callable[[Path], Any]:
    return loads()[request.param]


def test_an_untouched_directory_loads_and_exports(saved: Path) -> None:
    model, optimizer = model_and_optimizer(seed=1)
    state = load_sharded(saved, model, [optimizer])
    expected, _ = model_and_optimizer()
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert state["loops"]["global_step"] == 3 and optimizer.param_groups[0]["lr"] == 0.01
    export_full_checkpoint(saved, saved.parent / "full.ckpt")
    full = torch.load(saved.parent / "full.ckpt", weights_only=True)
    assert torch.equal(full["state_dict"]["0.weight"], expected.state_dict()["0.weight"])
    assert full["loops"]["global_step"] == 3 and full["optimizer_states"][0]["param_groups"][0]["lr"] == 0.01


def test_a_payload_in_metadata_does_not_run(saved: Path, load: Callable[[Path], Any], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with (saved / ".metadata").open("rb") as file:
        metadata = pickle.load(file)  # noqa: S301 - our own file, just written
    metadata.planner_data = {"model.0.weight": Payload(marker)}
    (saved / ".metadata").write_bytes(pickle.dumps(metadata))
    rehash(saved)
    with pytest.raises(CheckpointError, match=r"\.metadata is not DCP metadata prec can read safely.*builtins\.exec"):
        load(saved)
    assert not marker.exists()


def test_a_payload_in_a_byte_item_does_not_run(saved: Path, load: Callable[[Path], Any], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    model, optimizer = model_and_optimizer()
    payload = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, [optimizer])}
    payload["optim"]["param_groups"][0]["lr"] = Payload(marker)  # DCP stores non-tensors as pickled byte items
    for file in saved.glob("*.distcp"):
        file.unlink()
    (saved / ".metadata").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(payload, checkpoint_id=str(saved))
    rehash(saved)
    with pytest.raises(CheckpointError, match=r"the stored value 'optim\.param_groups\.0\.lr' is refused"):
        load(saved)
    assert not marker.exists()


def test_a_payload_in_an_extras_file_does_not_run(saved: Path, load: Callable[[Path], Any], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"loops": Payload(marker)}, saved / "extras" / "rank0.pt")
    rehash(saved)
    with pytest.raises(CheckpointError, match=r"extras/rank0\.pt is refused"):
        load(saved)
    assert not marker.exists()


@pytest.mark.parametrize("planted", ["extras/rank1.pt", "__1_0.distcp", "notes/readme.txt", "payload.pt"])
def test_a_file_the_manifest_does_not_list_is_refused(
    saved: Path, load: Callable[[Path], Any], tmp_path: Path, planted: str
) -> None:
    marker = tmp_path / "ran"
    (saved / planted).parent.mkdir(exist_ok=True)
    torch.save({"x": Payload(marker)}, saved / planted)
    with pytest.raises(
        CheckpointError, match=rf"holds {planted.split('/')[0]}.*which its prec_sharded\.json does not list"
    ):
        load(saved)
    assert not marker.exists()


def test_a_listed_file_that_is_missing_is_named(saved: Path, load: Callable[[Path], Any]) -> None:
    (saved / "extras" / "rank0.pt").unlink()
    with pytest.raises(CheckpointError, match=r"is incomplete: extras/rank0\.pt is missing"):
        load(saved)


def test_a_symbolic_link_is_refused(saved: Path, load: Callable[[Path], Any], tmp_path: Path) -> None:
    outside = tmp_path / "outside.pt"
    shutil.move(saved / "extras" / "rank0.pt", outside)
    (saved / "extras" / "rank0.pt").symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"holds extras/rank0\.pt"):
        load(saved)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"\x80\x04K\x01."], ids=["empty", "text", "int"])
def test_a_malformed_metadata_is_a_checkpoint_error(saved: Path, load: Callable[[Path], Any], content: bytes) -> None:
    (saved / ".metadata").write_bytes(content)
    rehash(saved)
    with pytest.raises(CheckpointError, match=r"\.metadata"):
        load(saved)


def test_metadata_pointing_outside_the_directory_is_refused(saved: Path, load: Callable[[Path], Any]) -> None:
    with (saved / ".metadata").open("rb") as file:
        metadata = pickle.load(file)  # noqa: S301 - our own file, just written
    for info in metadata.storage_data.values():
        info.relative_path = "../elsewhere.distcp"
    shutil.copy(next(saved.glob("*.distcp")), saved.parent / "elsewhere.distcp")
    (saved / ".metadata").write_bytes(pickle.dumps(metadata))
    rehash(saved)
    with pytest.raises(CheckpointError, match=r"stored in '\.\./elsewhere\.distcp', not a shard file the manifest"):
        load(saved)


def test_a_manifest_listing_a_path_outside_is_refused(saved: Path, load: Callable[[Path], Any]) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["files"]["../sharded.old/x"] = "0"
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"lists '\.\./sharded\.old/x', which is not a file inside it"):
        load(saved)


def test_a_checkpoint_of_the_older_sha256_format_still_loads(saved: Path, load: Callable[[Path], Any]) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    files = {name: hashlib.sha256((saved / name).read_bytes()).hexdigest() for name in manifest["files"]}
    (saved / MANIFEST).write_text(json.dumps({"format": 1, "world_size": 1, "files": files}))
    load(saved)
    files[".metadata"] = "0" * 64
    (saved / MANIFEST).write_text(json.dumps({"format": 1, "world_size": 1, "files": files}))
    with pytest.raises(CheckpointError, match=r"\.metadata does not match its sha256"):
        load(saved)


class Tiny(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_sharded_directory_in_a_single_process_fit_says_to_export_it(tmp_path: Path) -> None:
    module = Tiny()
    path = tmp_path / "fsdp.ckpt"
    save_sharded(path, module, [torch.optim.SGD(module.parameters(), lr=0.1)], {})
    x = torch.randn(8, 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False)
    with pytest.raises(CheckpointError, match=r"sharded checkpoint directory.*export_full_checkpoint"):
        trainer.fit(Tiny(), loader, ckpt_path=path)
