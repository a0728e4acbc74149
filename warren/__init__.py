"""warren: a local LLM server for GGUF models, one worker process per model."""

__version__ = "0.1.0"
