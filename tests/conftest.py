import os

import pytest
import torch

# Triton decides at decoration time whether a @triton.jit function (its own standard library included) is
# interpreted. Without a GPU the kernel tests run under TRITON_INTERPRET=1, so triton must first be imported
# with it set: otherwise an earlier test that imports triton indirectly (transformers does) leaves compiled-mode
# library functions that interpreted kernels cannot call. The variable is restored, so dispatch still sees the
# environment the test sets.
if not torch.cuda.is_available():
    _old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
        from fwpkm_rag.kernels import triton_ops  # noqa: F401
    except ImportError:
        pass
    finally:
        if _old is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = _old

# Two cores on CI; tests are small, one thread avoids oversubscription with pytest's own work.
torch.set_num_threads(int(os.environ.get("FWPKM_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for a test module (2 CPUs, no dashboard, started here, shut down after): stores find it
    running and leave it. Ray is imported only by the tests that ask for it (the distributed extra)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
