"""qgait: small and fast gait recognition (training, QGait quantization, GaitKD distillation, int8 export)."""

__version__ = "0.1.0"
