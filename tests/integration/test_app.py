"""The chat page through ``streamlit.testing.v1.AppTest``: chat with sources and history, refusal, feedback, upload +
re-index, delete, the password gate, per-session retrieval settings, adapters (listed disabled on the extractive
backend; switched and compared on a tiny random transformers model built here).

Every test points the page at a tiny index built at test time on the hash embedder (``KBQA_OVERRIDES``).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from rag.answer.prompt import REFUSAL
from rag.core.config import REPO_ROOT, load_config
from rag.embed.embedder import HashEmbedder
from rag.feedback import read_feedback
from rag.index.sync import sync_folder
from rag.webui import kb
from rag.webui.conversations import ConversationStore, owner_key
from tests.conftest import write_corpus

APP = str(REPO_ROOT / "app.py")
TIMEOUT_S = 60


@dataclass
class Site:
    """Where one test's page keeps its things."""

    root: Path
    knowledge: Path
    index: Path
    adapters: Path
    feedback: Path
    overrides: list[str]

    def app(self) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
        at.run()
        assert not at.exception, at.exception
        return at


def make_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, build: bool = True,
              extra: tuple[str, ...] = ()) -> Site:
    knowledge = write_corpus(tmp_path / "kb")
    index = tmp_path / "indexes" / "default"
    overrides = [f"knowledge_dir={knowledge}", f"index.dir={index}", "embed.source=hash", "llm.backend=extractive",
                 "load.workers=1", "load.timeout_s=60", "split.chunk_size=120", "split.chunk_overlap=20",
                 f"llm.adapters_dir={tmp_path / 'adapters'}", *extra]
    if build:
        sync_folder(knowledge, load_config(None, overrides), HashEmbedder())
    site = Site(tmp_path, knowledge, index, tmp_path / "adapters", tmp_path / "feedback" / "feedback.jsonl", overrides)
    monkeypatch.setenv(kb.ENV_OVERRIDES, " ".join(shlex.quote(o) for o in overrides))
    monkeypatch.setenv(kb.ENV_FEEDBACK, str(site.feedback))
    monkeypatch.setenv(kb.ENV_CONVERSATIONS, str(tmp_path / "conversations"))
    for name in (kb.ENV_CONFIG, kb.ENV_PASSWORD, kb.ENV_MAX_UPLOAD_MB, kb.ENV_INDEXES):
        monkeypatch.delenv(name, raising=False)
    return site


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    return make_site(tmp_path, monkeypatch)


def texts(block: object) -> str:
    """All markdown, captions and alerts under ``block`` as one string."""
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success"):
        parts += [str(element.value) for element in getattr(block, kind)]
    return "\n".join(parts)


def assistant_messages(at: AppTest) -> list[object]:
    return [m for m in at.chat_message if m.name == "assistant"]


def ask(at: AppTest, question: str) -> AppTest:
    at.chat_input(key="question").set_value(question).run()
    assert not at.exception, at.exception
    return at


def test_chat_answers_with_linked_highlighted_sources_and_keeps_history(site: Site) -> None:
    at = ask(site.app(), "年假需要提前几天申请？")
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    answer = texts(assistant_messages(at)[0])
    assert "年假需提前三个工作日在 OA 系统中申请。" in answer
    turn_id = at.session_state["turns"][0].id
    assert f"[\\[1\\]](#src-{turn_id}-1)" in answer  # the citation links to its source card
    assert f'id="src-{turn_id}-1"' in answer and "hr/年假.md" in answer
    assert "<mark>年假需提前三个工作日在 OA 系统中申请。</mark>" in answer  # the supporting sentence

    ask(at, "打印机的 IP 地址是多少？")
    assert [m.name for m in at.chat_message] == ["user", "assistant"] * 2
    assert "10.0.0.25" in texts(assistant_messages(at)[1])
    assert "年假" in texts(assistant_messages(at)[0])  # the first turn is still shown

    at.button(key="new_chat").click().run()
    assert len(at.chat_message) == 0 and at.session_state["turns"] == []


def test_english_switch(site: Site) -> None:
    at = site.app()
    assert at.title[0].value == "本地知识库问答"
    at.radio(key="lang").set_value("en").run()
    assert at.title[0].value == "Local knowledge QA"
    assert at.chat_input(key="question").placeholder == "Ask a question"
    ask(at, "How do I connect to the office VPN?")
    assert "WireGuard" in texts(assistant_messages(at)[0]) and "Sources" in texts(assistant_messages(at)[0])


def test_refusal_says_so_and_shows_the_closest_passages(site: Site) -> None:
    at = site.app()
    at.slider(key="threshold").set_value(0.95).run()  # nothing in the index is that close
    ask(at, "量子色动力学的渐近自由是什么？")
    answer = texts(assistant_messages(at)[0])
    assert REFUSAL["zh"] in answer
    assert "最接近的段落" in answer and answer.count('class="kb-src"') == 3
    assert at.session_state["turns"][0].answer.refused


def test_retrieval_settings_apply_to_this_session_only(site: Site) -> None:
    at = site.app()
    at.slider(key="top_k").set_value(1).run()
    at.toggle(key="hybrid").set_value(False).run()
    ask(at, "磁盘空间不足怎么办？")
    assert len(at.session_state["turns"][0].answer.hits) == 1
    other = ask(site.app(), "磁盘空间不足怎么办？")  # a second session keeps the config's defaults
    assert len(other.session_state["turns"][0].answer.hits) == 5


def test_feedback_thumbs_and_correction_are_appended_for_training(site: Site) -> None:
    at = ask(site.app(), "年假需要提前几天申请？")
    turn_id = at.session_state["turns"][0].id
    at.feedback(key=f"fb-{turn_id}").set_value(0).run()  # thumbs down
    first = [json.loads(line) for line in site.feedback.read_text(encoding="utf-8").splitlines()]
    assert len(first) == 1 and first[0]["rating"] == "down" and first[0]["correction"] == ""
    assert set(first[0]) >= {"time", "question", "answer", "rating", "correction", "citations", "model", "adapter"}
    assert first[0]["citations"][0]["source"] == "hr/年假.md" and first[0]["question"] == "年假需要提前几天申请？"

    at.text_area(key=f"fixtext-{turn_id}").input("提前三个工作日，在 OA 系统中申请。")
    at.button[[b.label for b in at.button].index("提交纠正")].click().run()
    assert "纠正已保存" in texts(assistant_messages(at)[0])
    latest = read_feedback(site.feedback)
    assert len(latest) == 1 and latest[0]["correction"] == "提前三个工作日，在 OA 系统中申请。"
    assert latest[0]["model"] == "extractive" and latest[0]["adapter"] == ""


def open_kb(site: Site) -> AppTest:
    at = site.app()
    at.radio(key="view").set_value("kb").run()
    assert not at.exception, at.exception
    return at


def test_upload_is_saved_indexed_and_answered_from(site: Site) -> None:
    at = open_kb(site)
    assert [m.value for m in at.metric][:2] == ["4", "6"]  # files, chunks
    content = "# 出差报销\n\n出差结束后十个工作日内提交报销单，住宿标准为每晚五百元。\n".encode()
    at.file_uploader[0].set_value(("../../出差:报销?.md", content, "text/markdown")).run()
    at.button(key="upload_button").click().run()
    assert not at.exception, at.exception
    saved = site.knowledge / "出差_报销_.md"
    assert saved.read_bytes() == content  # inside the knowledge folder, under a sanitised name
    assert "已保存 出差_报销_.md" in texts(at)
    report = at.session_state["report"]
    assert [(f.source, f.status) for f in report.files if f.status != "unchanged"] == [("出差_报销_.md", "new")]
    assert at.dataframe[0].value.iloc[0].tolist()[:2] == ["出差_报销_.md", "新增"]  # changed files first
    assert at.metric[0].value == "5"

    at.radio(key="view").set_value("chat").run()
    ask(at, "出差的住宿标准是多少？")
    assert "五百元" in texts(assistant_messages(at)[0])
    assert at.session_state["turns"][0].answer.citations[0].chunk.source == "出差_报销_.md"
    assert "出差&#95;报销&#95;.md" in texts(assistant_messages(at)[0])  # in the source card, markdown-neutral


def test_upload_refuses_files_over_the_size_limit(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kb.ENV_MAX_UPLOAD_MB, "0.001")  # 1 KB (unsupported types never reach the page: the
    at = open_kb(site)                                 # uploader's type list refuses them, and so does kb.save_upload)
    assert ".pdf" in at.file_uploader[0].allowed_type and ".exe" not in at.file_uploader[0].allowed_type
    at.file_uploader[0].set_value([("大文件.txt", "字".encode() * 1000, "text/plain"),
                                   ("小文件.txt", "食堂的午餐时间是十一点半。".encode(), "text/plain")]).run()
    at.button(key="upload_button").click().run()
    message = texts(at)
    assert "大文件.txt 超过 0.001 MB 的上传上限，未保存。" in message and "已保存 小文件.txt" in message
    assert sorted(p.name for p in site.knowledge.iterdir()) == ["en", "hr", "小文件.txt", "运维"]


def test_delete_document_takes_its_chunks_out_of_the_index(site: Site) -> None:
    at = open_kb(site)
    at.selectbox(key="delete_choice").set_value("运维/打印机.txt").run()
    at.checkbox(key="delete_confirm-0").check().run()
    at.button(key="delete_button").click().run()
    assert not at.exception, at.exception
    assert not (site.knowledge / "运维" / "打印机.txt").exists()
    assert "已删除 运维/打印机.txt" in texts(at)
    assert "运维/打印机.txt" not in [d.source for d in kb.list_documents(site.index)]
    at.radio(key="view").set_value("chat").run()
    ask(at, "打印机驱动怎么安装？")
    assert "打印机.txt" not in texts(assistant_messages(at)[0])


def test_missing_index_is_built_from_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_site(tmp_path, monkeypatch, build=False)
    at = site.app()
    assert "还没有索引" in texts(at) and at.chat_input(key="question").disabled
    at.button[[b.label for b in at.button].index("立即建立索引")].click().run()
    assert not at.exception, at.exception
    assert len(kb.list_documents(site.index)) == 4
    ask(at, "年假有几天？")
    assert "五天" in texts(assistant_messages(at)[0])


def test_another_index_can_be_chosen_but_is_not_changed(site: Site) -> None:
    other = site.root / "indexes" / "other"
    folder = write_corpus(site.root / "other-kb", {"a.md": "# 食堂\n\n食堂的午餐时间是十一点半到一点。\n"})
    sync_folder(folder, load_config(None, [*site.overrides, f"index.dir={other}"]), HashEmbedder())
    at = site.app()
    at.selectbox(key="index_dir").set_value(str(other)).run()
    ask(at, "食堂几点开饭？")
    assert "十一点半" in texts(assistant_messages(at)[0])
    at.radio(key="view").set_value("kb").run()
    assert "页面不会修改它" in texts(at) and len(at.file_uploader) == 0


def test_password_gate(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kb.ENV_PASSWORD, "s3cret-口令")
    at = site.app()
    assert len(at.chat_input) == 0 and "请输入访问密码" in at.title[0].value
    at.text_input[0].input("wrong")
    at.button[0].click().run()
    assert "密码不正确" in texts(at) and len(at.chat_input) == 0
    at.text_input[0].input("s3cret-口令")
    at.button[0].click().run()
    assert len(at.chat_input) == 1


def test_conversations_are_restored_per_browser_and_bound_to_the_password(site: Site,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    browser = "browser-key-0123456789"

    def login(password: str, conversation: str = "") -> AppTest:
        monkeypatch.setenv(kb.ENV_PASSWORD, password)
        at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
        at.query_params["u"] = browser
        if conversation:
            at.query_params["c"] = conversation
        at.run()
        at.text_input[0].input(password)
        at.button[0].click().run()
        assert not at.exception, at.exception
        return at

    ask(login("pw-one"), "年假需要提前几天申请？")
    store = ConversationStore(site.root / "conversations")
    assert store.recent(browser) == []  # with a password the browser's key alone owns nothing
    saved = store.recent(owner_key(browser, "pw-one"))
    assert [(c.title, c.turns) for c in saved] == [("年假需要提前几天申请？", 1)]

    reloaded = login("pw-one", saved[0].id)  # a reload: a new session, the same URL
    assert [m.name for m in reloaded.chat_message] == ["user", "assistant"]
    assert "年假需提前三个工作日" in texts(assistant_messages(reloaded)[0])

    other = login("pw-two", saved[0].id)  # the same browser and URL with another password sees nothing
    assert len(other.chat_message) == 0 and "还没有保存的对话" in texts(other.sidebar)


def test_password_guessing_is_locked_out_per_address_across_sessions(site: Site,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each wrong password from a new session (a new tab, a script) counts for the address (issue 17 #12)."""
    from rag.webui import state
    from rag.webui.login import LoginThrottle

    throttle = LoginThrottle(max_failures=3)
    monkeypatch.setattr(state, "get_login_throttle", lambda: throttle)
    monkeypatch.setattr(state, "WRONG_PASSWORD_DELAY_S", 0.0)
    monkeypatch.setenv(kb.ENV_PASSWORD, "s3cret-口令")
    for attempt in range(3):
        at = site.app()
        at.text_input[0].input(f"guess-{attempt}")
        at.button[0].click().run()
    assert "密码错误次数过多，请 5 分钟后再试。" in texts(at)
    at = site.app()  # a fresh session with the right password: still refused while locked out
    assert len(at.text_input) == 0 and "密码错误次数过多，请 5 分钟后再试。" in texts(at)
    assert len(at.chat_input) == 0


def write_adapter(folder: Path, base_model: str) -> None:
    """An adapter folder with the files the registry checks (weights are not read on the extractive backend)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                            "target_modules": ["q_proj", "v_proj"]}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    (folder / "rag_adapter.json").write_text(json.dumps({"name": folder.name, "base_model": base_model,
                                                         "template": "chatglm3", "dataset": "data/law.jsonl",
                                                         "metrics": {"rouge-l": 0.41}, "format_version": 1}))


def test_extractive_backend_lists_adapters_disabled_and_says_how_to_install(site: Site) -> None:
    write_adapter(site.adapters / "law-qa", "THUDM/chatglm3-6b")
    at = site.app()
    assert at.selectbox(key="adapter").disabled and at.selectbox(key="adapter").options == ["（基础模型，不用适配器）"]
    assert at.toggle(key="compare").disabled
    at.radio(key="view").set_value("model").run()
    page = texts(at)
    assert "python -m rag.models download chatglm3-6b（先 ModelScope；未安装 modelscope 时自动改用 Hugging Face）" in page
    assert "law-qa" in page and "THUDM/chatglm3-6b" in page and "rouge-l 0.41" in page
    assert "抽取式回答不使用适配器" in page
    assert at.button(key="use-law-qa").disabled


def test_an_adapter_written_while_the_page_runs_is_listed_on_the_next_run(site: Site) -> None:
    at = site.app()
    at.radio(key="view").set_value("model").run()
    assert "law-qa" not in texts(at) and not [b for b in at.button if b.key == "rescan"]
    write_adapter(site.adapters / "law-qa", "THUDM/chatglm3-6b")  # finetune finished meanwhile
    at.run()
    assert "law-qa" in texts(at) and "rouge-l 0.41" in texts(at)


def test_the_model_panel_connects_saves_and_answers_through_an_endpoint(site: Site) -> None:
    from tests.fake_openai import FakeOpenAI

    server = FakeOpenAI(models=("qwen-mini",), api_key="sk-page-key")
    try:
        at = site.app()
        at.radio(key="view").set_value("model").run()
        at.radio(key="model_kind").set_value("openai").run()
        at.text_input(key="openai_url").set_value(f"http://127.0.0.1:{server.port}")
        at.text_input(key="openai_key").set_value("sk-page-key")
        at.button(key="connect").click().run()
        assert "连接成功" in texts(at) and "qwen-mini" in texts(at), texts(at)
        assert at.text_input(key="openai_model").value == "qwen-mini"  # filled from the server's list
        at.button(key="save_endpoint").click().run()
        assert not at.exception, at.exception
        page = texts(at)
        assert "已保存并切换到" in page and "**后端**: openai" in page, page
        assert at.text_input(key="openai_key").value == ""  # the key left the page
        assert "sk-page-key" not in page and "已保存一个密钥" in page
        saved = (site.root / "conversations" / "model.yaml").read_text(encoding="utf-8")
        assert "kind: openai" in saved and f"base_url: {server.url}" in saved

        at.radio(key="view").set_value("chat").run()
        ask(at, "打印机的 IP 地址是多少？")
        answer = texts(assistant_messages(at)[-1])
        assert "以上由 qwen-mini 回答" in answer and "10.0.0.25" in answer, answer
        assert server.chats()[-1].authorization == "Bearer sk-page-key"

        again = site.app()  # another session (a reload, a restart) answers with the saved choice
        again.radio(key="view").set_value("model").run()
        assert "**后端**: openai" in texts(again) and again.radio(key="model_kind").value == "openai"

        other = FakeOpenAI(models=("qwen-mini",))  # another server typed in: the saved key is not sent there
        try:
            again.text_input(key="openai_url").set_value(other.url)
            again.button(key="connect").click().run()
            assert "连接成功" in texts(again)
            assert {seen.authorization for seen in other.seen} == {""}
            again.text_input(key="openai_url").set_value(server.url)  # back to the saved server: its key is used
            again.button(key="connect").click().run()
            assert "连接成功" in texts(again) and server.seen[-1].authorization == "Bearer sk-page-key"
        finally:
            other.close()
    finally:
        server.close()



def test_a_folder_without_a_model_is_refused_and_the_choice_kept(site: Site) -> None:
    at = site.app()
    at.radio(key="view").set_value("model").run()
    at.radio(key="model_kind").set_value("local").run()
    at.text_input(key="local_folder").set_value(str(site.knowledge))
    at.button(key="use_local").click().run()
    assert "未保存：" in texts(at) and "is not a model folder (it needs a config.json)" in texts(at)
    assert not (site.root / "conversations" / "model.yaml").exists()
    assert "**后端**: extractive" in texts(at)


def test_a_chosen_endpoint_that_is_down_falls_back_and_says_why(site: Site) -> None:
    from rag.webui.model_choice import ModelChoice, save_choice
    from tests.unit.test_model_choice import closed_port_url

    save_choice(site.root / "conversations" / "model.yaml", ModelChoice("openai", "m", closed_port_url()))
    at = site.app()
    assert "无法连接到服务（地址有误或服务未启动）" in texts(at)  # the chat's banner names the reason
    ask(at, "打印机的 IP 地址是多少？")
    assert "[1]" in texts(assistant_messages(at)[-1])  # answered extractively, with citations
    at.radio(key="view").set_value("model").run()
    assert "所选模型不可用，已改用抽取式回答。无法连接到服务" in texts(at)
    assert [b for b in at.button if b.key == "reconnect"]


# --- a real (tiny, random) transformers model with LoRA adapters ----------------------------------------------------


def build_tiny_llm(folder: Path) -> tuple[Path, Path]:
    """A random GLM with the chatglm3 template (context raised to 4096) and ``adapters/`` holding ``demo`` (trained
    on it) and ``other-base`` (metadata naming another base model)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rag.models.adapters import write_metadata
    from tests import tinymodels

    model_dir = tinymodels.build_tiny_causal_lm(folder, "glm", "chatglm3")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config["max_position_embeddings"] = 4096  # room for the numbered passages; the weights do not care
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    adapters = folder / "adapters"
    for name, base in (("demo", str(model_dir)), ("other-base", "THUDM/chatglm3-6b")):
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir)), lora).save_pretrained(adapters / name)
        write_metadata(adapters / name, base_model=base, template="chatglm3", dataset="data/demo.jsonl",
                       metrics={"rouge-l": 0.42})
    return model_dir, adapters


def tiny_llm_overrides(model_dir: Path, adapters: Path) -> tuple[str, ...]:
    return ("llm.backend=hf", f"llm.model={model_dir}", "llm.source=local", "llm.max_new_tokens=8",
            f"llm.adapters_dir={adapters}", "answer.context_tokens=400", "answer.history_tokens=100")


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("peft")
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


def test_adapter_switch_and_compare_mode_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         tiny_llm: tuple[Path, Path]) -> None:
    site = make_site(tmp_path, monkeypatch, extra=tiny_llm_overrides(*tiny_llm))
    at = site.app()
    adapter = at.selectbox(key="adapter")
    assert adapter.options == ["（基础模型，不用适配器）", "demo"]  # other-base is not offered
    assert at.toggle(key="compare").disabled

    at.radio(key="view").set_value("model").run()
    page = texts(at)
    assert "已加载" in page and "chatglm3" in page and "demo" in page
    assert "trained on base model THUDM/chatglm3-6b, but the loaded model is" in page  # shown disabled, with why
    assert at.button(key="use-other-base").disabled and not at.button(key="use-demo").disabled
    at.button(key="use-demo").click().run()  # switch from the model page
    assert at.selectbox(key="adapter").value == "demo" and at.button(key="use-demo").label == "正在使用"

    at.radio(key="view").set_value("chat").run()
    ask(at, "年假需要提前几天申请？")
    turn = at.session_state["turns"][0]
    assert turn.adapter == "demo" and turn.answer.model.endswith("+ demo") and turn.base is None

    at.toggle(key="compare").set_value(True).run()
    ask(at, "打印机驱动怎么安装？")
    turn = at.session_state["turns"][1]
    assert turn.base is not None and not turn.base.model.endswith("demo") and turn.answer.model.endswith("+ demo")
    assert [h.chunk.id for h in turn.base.hits] == [h.chunk.id for h in turn.answer.hits]  # the same context
    message = assistant_messages(at)[1]
    assert "**基础模型**" in texts(message) and "**适配器：demo**" in texts(message)
    assert len(message.columns) == 2

