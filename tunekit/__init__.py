"""tunekit: export, tune, build and benchmark vision models per input resolution."""

__version__ = "0.1.0"
