"""adamkit: exact, fast and honest Adam, AdamW and AMSGrad for PyTorch."""

from .optimizers import Adam, AdamW, AMSGrad

__all__ = ["Adam", "AdamW", "AMSGrad"]
__version__ = "0.1.0"
