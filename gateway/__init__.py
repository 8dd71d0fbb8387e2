"""covergw: the edge gateway for smart manhole covers."""

__version__ = "0.1.0"
