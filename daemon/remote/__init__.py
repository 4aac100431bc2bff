"""Remote models: names in the store served by an OpenAI-compatible upstream
(vLLM, SGLang, llama-server, another edged). See :mod:`.worker` and :mod:`.upstream`."""
