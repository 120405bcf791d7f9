"""An OpenAI-compatible inference engine whose queueing behaves like an LLM server's."""
