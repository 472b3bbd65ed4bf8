"""rlq: clothes-changing person re-identification on real-world, low-quality images."""

__version__ = "0.1.0"
