import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# A warm FX graph / AOTAutograd cache would skip the partitioner entirely; the
# cache test turns caches back on in a private folder.
torch._inductor.config.force_disable_caches = True
# A developer's calibrated rates (rematpass calibrate) would change the plans the tests expect.
os.environ["REMAT_RATES_FILE"] = os.path.join(os.path.dirname(__file__), "no-rates-file.json")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    import rematpass

    rematpass.clear_reports()
    yield
    torch._dynamo.reset()
