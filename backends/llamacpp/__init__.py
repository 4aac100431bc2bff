"""llama.cpp backend (llama-cpp-python, low-level API)."""
