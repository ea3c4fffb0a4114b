"""Specification of device names and of the devices this machine has."""
from types import SimpleNamespace

import psutil
import pytest
import torch

from distorch import devices
from distorch.devices import available_devices, canonical_device, device_total_memory, require_device
from distorch.errors import DeviceError, DistorchError


@pytest.fixture
def two_fake_gpus(monkeypatch):
    """Pretend torch sees two CUDA devices of 24 GB and 12 GB."""
    sizes = [24 * 10**9, 12 * 10**9]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=sizes[i]))
    return sizes


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("cuda", "cuda:0"),
        ("cuda:0", "cuda:0"),
        ("cuda:3", "cuda:3"),
        (" CUDA:1 ", "cuda:1"),
        ("cpu", "cpu"),
        ("cpu:0", "cpu"),
        ("mps", "mps"),
        ("xpu", "xpu:0"),
    ],
)
def test_canonical_device_names(name, canonical):
    assert canonical_device(name) == canonical


@pytest.mark.parametrize("name", ["gpu", "", "cuda:", "cuda:-1", "cuda:01", "cuda:1:2", "\ud800", "cuda 0"])
def test_names_torch_rejects_are_device_errors(name):
    with pytest.raises(DeviceError):
        canonical_device(name)


def test_single_instance_types_have_no_second_device():
    with pytest.raises(DeviceError, match="only one device"):
        canonical_device("cpu:1")


def test_indices_torch_would_wrap_are_rejected():
    with pytest.raises(DeviceError, match="above 127"):
        canonical_device("cuda:128")


def test_device_error_is_a_value_error_and_a_distorch_error():
    with pytest.raises(ValueError) as info:
        canonical_device("gpu")
    assert isinstance(info.value, DistorchError)


def test_available_devices_start_with_cpu():
    assert available_devices()[0] == "cpu"


def test_available_devices_list_every_visible_cuda_device(two_fake_gpus):
    assert available_devices()[:3] == ["cpu", "cuda:0", "cuda:1"]


def test_available_devices_skip_cuda_when_torch_has_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not any(d.startswith("cuda") for d in available_devices())


def test_broken_backend_counts_as_absent(monkeypatch):
    def broken():
        raise RuntimeError("driver too old")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    assert "cpu" in available_devices()


def test_require_device_returns_canonical_name_of_present_device(two_fake_gpus):
    assert require_device("cuda") == "cuda:0"


def test_require_device_names_absent_device_and_lists_available_ones():
    with pytest.raises(DeviceError) as info:
        require_device("cuda:1", available=["cpu", "cuda:0"])
    assert str(info.value) == "device 'cuda:1' is not present on this machine; available: cpu, cuda:0"
    assert info.value.device == "cuda:1"


def test_require_device_rejects_invalid_names_before_looking():
    with pytest.raises(DeviceError, match="gpu"):
        require_device("gpu", available=["cpu"])


def test_cpu_total_memory_is_system_ram():
    assert device_total_memory("cpu") == psutil.virtual_memory().total


def test_cuda_total_memory_comes_from_device_properties(two_fake_gpus):
    assert device_total_memory("cuda:1") == two_fake_gpus[1]


def test_total_memory_of_absent_device_is_a_device_error(monkeypatch):
    monkeypatch.setattr(devices, "available_devices", lambda: ["cpu"])
    with pytest.raises(DeviceError, match="not present"):
        device_total_memory("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device")
def test_real_cuda_device_is_listed_with_its_memory():
    assert "cuda:0" in available_devices()
    assert device_total_memory("cuda:0") == torch.cuda.get_device_properties(0).total_memory


def test_the_default_pin_cap_leaves_a_fifth_of_host_ram_unpinned():
    import psutil

    from distorch.devices import default_pin_cap

    assert default_pin_cap() == int(psutil.virtual_memory().total * 0.8)
