"""workbench: on-device transfer learning for Coral Edge TPU and TensorFlow Lite."""

__version__ = "0.1.0"
