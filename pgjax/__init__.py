"""pgjax: policy-gradient reinforcement learning that runs entirely on the accelerator."""

__version__ = "0.1.0"
