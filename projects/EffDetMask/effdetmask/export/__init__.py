"""ONNX export of the full model, an onnxruntime predictor with the same outputs, and static
int8 quantization of the exported graph."""

from .onnx import EffDetMaskOnnxWrapper, OnnxPredictor, export_onnx, session_options
from .quantize import calibration_images, int8_path_for, quantize_onnx_int8

__all__ = ["EffDetMaskOnnxWrapper", "OnnxPredictor", "export_onnx", "session_options",
           "calibration_images", "int8_path_for", "quantize_onnx_int8"]
