"""OpenVINO GenAI backend (GGUF or OpenVINO IR, on Intel CPU, GPU and NPU)."""
