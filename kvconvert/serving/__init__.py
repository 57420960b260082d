"""Chat sessions and the OpenAI-compatible server, on the runtime."""
