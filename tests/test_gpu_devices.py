"""Each GPU task runs on the GPU Spark assigned to it: checked on CPUs with a faked two-GPU node."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline import ddp


class FakeTask:
    """What TaskContext.resources() gives a task that holds GPU `address` (or no GPU at all)."""

    def __init__(self, address=None):
        self.address = address

    def resources(self):
        return {} if self.address is None else {"gpu": SimpleNamespace(name="gpu", addresses=[self.address])}


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_each_inference_task_takes_the_gpu_spark_assigned(two_gpus, monkeypatch):
    assert [ddp.task_device(FakeTask(a)) for a in ("0", "1", "1", "0")] == [
        torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 1), torch.device("cuda", 0)]
    assert ddp.task_device(FakeTask()) == torch.device("cuda", 0)  # CUDA, but Spark assigned none
    # the running task's context, as Spark's Python worker sets it
    pyspark = pytest.importorskip("pyspark")
    monkeypatch.setattr(pyspark.TaskContext, "get", classmethod(lambda cls: FakeTask("1")))
    assert ddp.task_device() == torch.device("cuda", 1)


def test_gpu_addresses_are_positions_when_cuda_visible_devices_narrows_them(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the discovery script then reports "0" and "1"
    assert ddp.task_device(FakeTask("1")) == torch.device("cuda", 1)
    assert ddp.task_device(FakeTask("0")) == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="Spark assigned GPU '5'"):
        ddp.task_device(FakeTask("5"))


def test_without_cuda_tasks_run_on_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert ddp.task_device(FakeTask("1")) == torch.device("cpu")


def test_training_ranks_take_their_local_rank(two_gpus, monkeypatch):
    # under TorchDistributor each rank sees only its task's GPUs; LOCAL_RANK indexes them
    for local_rank in (0, 1):
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        assert ddp.rank_device(True) == torch.device("cuda", local_rank)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RuntimeError, match="LOCAL_RANK 2 sees 2 GPU"):
        ddp.rank_device(True)
    assert ddp.rank_device(False) == torch.device("cpu")


def test_upscale_tasks_load_the_generator_on_their_own_gpu(two_gpus, monkeypatch, tmp_path):
    """A reused Python worker runs tasks Spark gave different GPUs: the model follows the task."""
    pyspark = pytest.importorskip("pyspark")
    from pipeline.gan import sr
    from pipeline.gan.models import SRResNet
    from pipeline.gan.upscale import make_predict_fn

    loaded = []

    def load_generator(folder, device):
        loaded.append(device)
        return SRResNet(blocks=1, ch=8).eval()  # on the CPU: the test only follows the device choice

    monkeypatch.setattr(sr, "load_generator", load_generator)
    predict = make_predict_fn(str(tmp_path), True, 1, 0, 2, "fp32")
    image = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    row = (np.array(32), np.array(40), np.array(3), np.array(image[:, :, ::-1].tobytes(), dtype=object))  # 1-row batch
    for address in ("1", "0", "1"):
        monkeypatch.setattr(pyspark.TaskContext, "get", classmethod(lambda cls, a=address: FakeTask(a)))
        out = predict(*row)
        assert list(out["height"]) == [32] and list(out["width"]) == [40] and out["psnr_sr"][0] > 10
    assert loaded == [torch.device("cuda", 1), torch.device("cuda", 0)]  # once per GPU, then reused
