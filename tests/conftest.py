import os
import sys

import torch
from hypothesis import HealthCheck, settings

# Helpers (reference.py, optimizer_table.py, paths.py) live next to the tests.
sys.path.insert(0, os.path.dirname(__file__))

# The machine is shared: one thread keeps runs predictable and small tensors fast.
torch.set_num_threads(1)

settings.register_profile(
    "adamkit",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "adamkit"))
