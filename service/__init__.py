"""The HTTP service: FastAPI over :mod:`amortized`; no science lives here."""
