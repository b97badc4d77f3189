"""Shared fixtures: one tiny model and one small synthetic dataset per test session, built locally."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (vLLM); this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from r3v_ray.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
    from r3v_ray.tasks import get_task

    out = tmp_path_factory.mktemp("synthetic-data")
    get_task("synthetic").write_dataset(out, num_train=24, num_test=12, seed=0)
    return str(out)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray per test module (num_cpus=2), torn down by the module that started it."""
    import ray

    # address="local": always a fresh instance, never a cluster someone else started with `ray start`
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def forget_cluster_address(gcs_port: int) -> None:
    """Remove /tmp/ray/ray_current_cluster if it names the (now ended) cluster on `gcs_port`.

    `ray start` records its address there and only `ray stop` removes it; tests end their head node by signal, so
    they remove it themselves. Left behind, every later `address="auto"` lookup (Ray Train's placement-group
    cleaner does one in each local run) waits on the dead cluster and prints a timeout traceback.
    """
    from ray._common.utils import get_ray_address_file

    path = get_ray_address_file(None)
    try:
        with open(path) as f:
            ours = f.read().strip().endswith(f":{gcs_port}")
        if ours:
            os.remove(path)
    except OSError:
        pass
