"""xgate: privacy-preserving cross-agency data exchange gateway."""

__version__ = "0.1.0"
