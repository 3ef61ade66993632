"""ONNX export of the full model and an onnxruntime predictor with the same outputs."""

from .onnx import EffDetMaskOnnxWrapper, OnnxPredictor, export_onnx

__all__ = ["EffDetMaskOnnxWrapper", "OnnxPredictor", "export_onnx"]
