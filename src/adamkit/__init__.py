"""adamkit: exact, fast and honest Adam, AdamW and AMSGrad for PyTorch."""

from .optimizers import Adam, AdamW, AMSGrad
from .state_dicts import to_torch_state_dict

__all__ = ["Adam", "AdamW", "AMSGrad", "to_torch_state_dict"]
__version__ = "0.1.0"
