"""rlq: clothes-changing person re-identification on real-world, low-quality images."""

__version__ = "0.1.0"

# The Python API (rlq.api), loaded on first use so that `import rlq` stays light (no torch).
_API = ("FeatureExtractor", "ImageInputError", "SearchResult", "search")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from rlq import api

        return getattr(api, name)
    raise AttributeError(f"module 'rlq' has no attribute {name!r}")
