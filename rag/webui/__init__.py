"""The Streamlit chat page's parts; ``app.py`` is the entry point that puts them on the page.

    state.py        what every session shares (model, retrievers, queue, adapters) and what one session keeps
    sidebar.py      knowledge base, retrieval and model choices of this session
    chat.py         the chat view: streaming answers, source cards, feedback
    kb_page.py      the knowledge-base view: upload, documents, re-index and its report
    model_page.py   the model view: load state, GPU memory, LoRA adapters
    conversations.py  saved conversations (SQLite, per owner; no Streamlit) and their Markdown / JSON export
    history.py      this session's owner key and open conversation (?u= / cookie, ?c=), the sidebar's list
    knowledge_bases.py  knowledge bases made from the page (name + folder + own index; no Streamlit)
    kb_manage.py    the knowledge-base view's create / rename / delete panel

Importing :mod:`rag.webui` itself loads nothing; the modules import Streamlit and are only for the page.
"""
