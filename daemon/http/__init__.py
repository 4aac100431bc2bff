"""The HTTP door: the dialects existing clients speak (OpenAI, Ollama, Anthropic,
llama-server's editor endpoints), each a thin translation onto the same
services the gRPC door calls (:mod:`edged.daemon.services`)."""
