"""tunekit: export, tune, build and benchmark vision models per input resolution."""

__version__ = "0.1.0"


def __getattr__(name):
    # tunekit.load / tunekit.load_bundle without importing tvm when the package is imported
    if name in ("load", "load_bundle"):
        from tunekit import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'tunekit' has no attribute {name!r}")
