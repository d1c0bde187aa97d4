"""The Streamlit chat page's parts; ``app.py`` is the entry point that puts them on the page.

    state.py        what every session shares (model, retrievers, queue, adapters) and what one session keeps
    sidebar.py      knowledge base, retrieval and model choices of this session
    chat.py         the chat view: streaming answers, source cards, feedback
    kb_page.py      the knowledge-base view: upload, documents, re-index and its report
    model_page.py   the model view: load state, GPU memory, LoRA adapters

Importing :mod:`rag.webui` itself loads nothing; the modules import Streamlit and are only for the page.
"""
