"""confagg: confidence-aware aggregation of sampled math solutions."""

__version__ = "0.1.0"
