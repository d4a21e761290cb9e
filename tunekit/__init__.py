"""tunekit: export, tune, build and benchmark vision models per input resolution.

The Python API (tunekit/api.py): ``Job``, ``plan``, ``tune``, ``build``, ``bench``; loading
built artifacts (tunekit/runtime.py): ``load``, ``load_bundle``.
"""

__version__ = "0.1.0"

_API = {"Job": "api", "plan": "api", "tune": "api", "build": "api", "bench": "api",
        "load": "runtime", "load_bundle": "runtime", "ScaleModel": "scale"}


def __getattr__(name):
    # imported on first use, so `import tunekit` (and `tunekit --help`) does not import tvm or torch
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"tunekit.{_API[name]}"), name)
    raise AttributeError(f"module 'tunekit' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
