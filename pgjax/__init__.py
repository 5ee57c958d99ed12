"""pgjax: policy-gradient reinforcement learning run entirely on the accelerator."""

__version__ = "0.1.0"
