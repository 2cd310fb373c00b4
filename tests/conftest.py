import os

import pytest
import torch

# Two cores on CI; tests are small, one thread avoids oversubscription with pytest's own work.
torch.set_num_threads(int(os.environ.get("FWPKM_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield
