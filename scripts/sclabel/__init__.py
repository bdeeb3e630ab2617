"""sclabel: train, benchmark and explain neural cell-type annotators for single-cell RNA-seq."""

__version__ = "0.1.0"
