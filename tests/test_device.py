import pytest
import torch

from tinylm.device import pick_device, to_device
from tinylm.errors import UserError


def test_pick_device_decides_once_and_refuses_what_is_not_here():
    auto = pick_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    assert pick_device("cpu") == torch.device("cpu")
    for name in ("tpu", "gpu", "cuda:x", ""):
        with pytest.raises(UserError, match="Unknown device"):
            pick_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            pick_device("cuda:0")
    if not torch.backends.mps.is_available():
        with pytest.raises(UserError, match="MPS is not available"):
            pick_device("mps")


def test_batches_reach_the_device_unchanged():
    batch = {"input_ids": torch.arange(6).view(2, 3), "targets": torch.ones(2, 3).long()}
    moved = to_device(batch, pick_device("auto"))
    assert all(torch.equal(moved[k].cpu(), batch[k]) for k in batch)
