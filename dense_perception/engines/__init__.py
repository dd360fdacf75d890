"""Inference engines behind one protocol (base.Engine): torch, ONNX Runtime; ONNX export."""
