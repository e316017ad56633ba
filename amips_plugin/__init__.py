"""amips: amortized maximum-inner-product search (Olausson et al.) as a plugin for Qdrant."""

__version__ = "0.1.0"
