"""Shared test settings."""

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _clean_param_store():
    # Pyro's parameter store is process-wide; each test starts and ends empty.
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def _one_thread_per_test_process():
    # Test processes share two cores (pytest -n 2): one intra-op thread each avoids
    # oversubscription, which slows small tensor work many times over.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
