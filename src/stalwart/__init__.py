"""stalwart: a crash-resilient supervisor for machine-learning training jobs."""

__version__ = "0.1.0"
