"""The compiler's command line: a thin layer over :mod:`amortized` (``python -m trainer --help``)."""
