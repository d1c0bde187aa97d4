"""Chat model backends behind one protocol (:mod:`rag.llm.base`): transformers + peft (:mod:`rag.llm.hf`), ChatGLM3
conversion (:mod:`rag.llm.glm`), the CUDA-graph decoder (:mod:`rag.llm.fastgen`), OpenAI-compatible servers."""
