"""Chat model backends behind one protocol: transformers + peft (local), OpenAI-compatible servers, extractive."""

from rag.llm.base import ChatModel, GenerationConfig, ModelInfo

__all__ = ["ChatModel", "GenerationConfig", "ModelInfo"]
