"""lmact: evaluate language models as policies in interactive tasks."""

__version__ = "0.1.0"
