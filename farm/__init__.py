"""Engine Farm: a build-and-benchmark farm for deep-learning inference engines."""

__version__ = "0.1.0"
