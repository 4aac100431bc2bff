"""ONNX Runtime GenAI backend."""
