"""syncd: a watch-folder upload daemon."""

__version__ = "0.1.0"
