"""Streamlit page (preview): search the knowledge base. The full chat page arrives with the answering pipeline.

    streamlit run app.py
"""

from __future__ import annotations

import streamlit as st

from rag.config import load_config
from rag.errors import RagError

TEXT = {
    "zh": {
        "title": "本地知识库问答", "ask": "输入问题，例如：如何更新知识库？", "no_index": "还没有索引。请先运行：",
        "nothing": "知识库中没有找到相关内容。", "source": "来源", "page": "页", "lang": "语言",
        "index": "索引", "chunks": "文本块", "embedder": "向量模型", "mode": "检索方式", "top_k": "返回条数",
    },
    "en": {
        "title": "Local knowledge QA", "ask": "Ask a question, e.g. how do I update the knowledge base?",
        "no_index": "No index yet. Build one first:", "nothing": "Nothing relevant was found in the knowledge base.",
        "source": "Source", "page": "page", "lang": "Language", "index": "Index", "chunks": "chunks",
        "embedder": "Embedder", "mode": "Retrieval", "top_k": "Results",
    },
}


@st.cache_resource(show_spinner=False)
def get_retriever(index_dir: str):  # type: ignore[no-untyped-def]
    from rag.index import KnowledgeIndex
    from rag.retrieve import Retriever

    cfg = load_config()
    return Retriever(KnowledgeIndex.open(index_dir, cfg), cfg.retrieve)


def main() -> None:
    st.set_page_config(page_title="知识库问答", page_icon="📚")
    lang = st.sidebar.radio("语言 / Language", ["zh", "en"], format_func=lambda x: "中文" if x == "zh" else "English")
    t = TEXT[lang]
    st.title(t["title"])
    cfg = load_config()
    try:
        retriever = get_retriever(cfg.index.dir)
    except RagError:
        st.warning(t["no_index"])
        st.code(f"python ingest.py {cfg.knowledge_dir}")
        return
    stats = retriever.index.stats()
    st.sidebar.markdown(f"**{t['index']}**: `{stats['directory']}`  \n{stats.get('chunks', 0)} {t['chunks']}  \n"
                        f"**{t['embedder']}**: {stats['embedder']}")
    mode = st.sidebar.selectbox(t["mode"], ["hybrid", "dense", "bm25"])
    top_k = st.sidebar.slider(t["top_k"], 1, 20, cfg.retrieve.top_k)
    question = st.chat_input(t["ask"])
    if not question:
        return
    with st.chat_message("user"):
        st.write(question)
    with st.chat_message("assistant"):
        hits = retriever.search(question, top_k=top_k, mode=mode)
        if not hits:
            st.write(t["nothing"])
        for rank, hit in enumerate(hits, 1):
            chunk = hit.chunk
            where = chunk.source + (f"，{t['page']} {chunk.page}" if chunk.page else "")
            st.markdown(f"**[{rank}]** {t['source']}: `{where}` · {hit.score:.3f}")
            st.caption(" > ".join(chunk.heading))
            st.text(chunk.text)


main()
