"""ada: unsupervised synthetic image attribution by alignment and disentanglement (a reconstruction)."""

__version__ = "0.1.0"
