"""The chat page's words (Chinese first, English second) and the few text transforms it needs to show answers safely.

Every visible string of ``app.py`` is a key of :data:`TEXT`; both languages hold the same keys (a test checks).
Document text and model output are data: :func:`html_text` escapes them before they go into the page's HTML, so a
passage can never inject markup, a link or a formula.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator

LANGUAGES = {"zh": "中文", "en": "English"}

TEXT: dict[str, dict[str, str]] = {
    "zh": {
        "page_title": "知识库问答",
        "title": "本地知识库问答",
        "subtitle": "根据知识库中的文档回答问题，每个回答都标注出处。",
        "lang_label": "语言 / Language",
        "view_label": "页面",
        "view_chat": ":material/chat: 对话",
        "view_kb": ":material/folder_open: 知识库",
        "view_model": ":material/memory: 模型",
        "new_chat": "新对话",
        "sb_history": "对话记录",
        "history_empty": "还没有保存的对话。提问后对话会自动保存，刷新页面或重启后仍在。",
        "history_actions": "当前对话：重命名 · 导出 · 删除",
        "history_title": "标题",
        "history_rename": "重命名",
        "history_delete": "删除此对话",
        "history_save_failed": "回答未能保存到对话记录：{error}",
        "sb_kb": "知识库",
        "index_label": "索引",
        "index_counts": "{files} 个文件 · {chunks} 个文本块",
        "embedder_caption": "向量模型：{embedder}",
        "no_index": "还没有索引：知识库文件夹 `{folder}` 尚未建立索引。",
        "no_index_other": "索引 `{index}` 打不开：{error}",
        "build_now": "立即建立索引",
        "sb_retrieval": "检索设置",
        "sb_retrieval_note": "仅对本会话生效",
        "top_k": "返回段落数 top-k",
        "hybrid": "混合检索（向量 + 关键词）",
        "hybrid_help": "关闭后只用向量检索；向量检索与 BM25 关键词检索的结果用倒数排名融合合并。",
        "hybrid_unavailable": "此索引没有向量，只能用关键词检索（BM25）。",
        "threshold": "相似度阈值",
        "threshold_help": "最相关段落的向量余弦相似度低于此值时拒绝回答；0 表示关闭。",
        "sb_model": "模型",
        "adapter_label": "LoRA 适配器",
        "base_option": "（基础模型，不用适配器）",
        "compare": "对比模式：基础模型 vs 适配器",
        "compare_help": "同一个问题、同一批检索结果，左右并排显示基础模型和所选适配器的回答。",
        "compare_needs_adapter": "选择一个可用的适配器后才能对比。",
        "ask_placeholder": "输入你的问题",
        "ask_disabled": "请先建立索引",
        "queued": "正在排队：你前面还有 {ahead} 个请求，轮到你时会自动开始回答。",
        "gate_timeout": "当前排队的人太多，请稍后再问。",
        "answer_failed": "回答失败：{error}",
        "sources": "来源",
        "closest": "知识库中没有足够的依据。下面是最接近的段落，供参考：",
        "unverified": "未核实",
        "all_hits": "全部检索结果（{n}）",
        "score": "得分",
        "page": "第 {page} 页",
        "also_in": "同一内容也见于 {files}",
        "answered_by": "回答：{model}",
        "base_label": "基础模型",
        "tuned_label": "适配器：{adapter}",
        "feedback_up": "已记录，谢谢！",
        "feedback_where": "反馈保存在 `{path}`（UTF-8 JSONL，每行一条，可直接用编辑器打开；`finetune/` 用它生成训练数据）",
        "feedback_down": "已记录。可以写下正确的回答，帮助改进模型：",
        "correction_label": "正确的回答（可选）",
        "correction_placeholder": "写下你认为正确的回答……",
        "correction_submit": "提交纠正",
        "correction_saved": "纠正已保存，谢谢！",
        "fallback_banner": "未加载语言模型，当前为抽取式回答（直接摘录原文句子并标注出处）。可在“模型”页选择本地模型、下载模型或连接 OpenAI 兼容服务。",
        "welcome": "你好！直接在下方输入问题。回答中的 [1]、[2] 可以点击，跳转到对应的原文出处。",
        "kb_title": "知识库管理",
        "kb_folder": "知识库文件夹：`{folder}` · 索引：`{index}`",
        "kb_other_index": "索引 `{index}` 不是由知识库文件夹 `{folder}` 建立的，页面不会修改它。"
                          "更新它请在命令行运行：`python ingest.py 文件夹 --index {index}`",
        "files_metric": "文件",
        "chunks_metric": "文本块",
        "failed_metric": "失败",
        "embedder_metric": "向量模型",
        "upload_title": "上传文档",
        "upload_label": "选择文件（可多选）",
        "upload_help": "单个文件不超过 {mb} MB。支持：{types}",
        "uploader_button": "选择文件",
        "kb_manage": "新建 · 重命名 · 删除知识库",
        "kb_new_name": "知识库名称",
        "kb_new_folder": "文档文件夹（可选）",
        "kb_new_folder_help": "相对于 {root} 的文件夹，必须在它之内；不填则用知识库名称。文件夹不存在时会新建。",
        "kb_new_folder_placeholder": "默认与名称相同",
        "kb_create": "新建知识库",
        "kb_created": "已新建知识库“{name}”，文档文件夹：{folder}。在下方上传文档即可建立索引。",
        "kb_configured_note": "当前是配置文件中的默认知识库，不能在页面上重命名或删除。",
        "kb_current": "当前知识库：{name}",
        "kb_rename": "重命名",
        "kb_renamed": "已重命名为“{name}”",
        "kb_delete_confirm": "确认删除此知识库的索引（文档文件夹保留）",
        "kb_delete": "删除知识库",
        "kb_deleted": "已删除知识库“{name}”的索引；文档文件夹未删除。",
        "uploader_limit": "单个文件不超过 {mb} MB · {types}",
        "replace_same": "覆盖同名文件（否则另存为“名称 (2)”）",
        "upload_button": "保存并重新索引",
        "reindex_title": "重新索引",
        "reindex_help": "扫描知识库文件夹：新增和修改的文件重新解析，已删除文件的内容移出索引，未改动的文件跳过。",
        "reindex_button": "重新索引",
        "progress_hash": "检查文件 {done}/{total}",
        "progress_parse": "解析文件 {done}/{total}",
        "progress_embed": "向量化文本块 {done}/{total}",
        "progress_done": "完成",
        "report_title": "索引报告",
        "report_summary": "新增 {new} · 更新 {updated} · 未变 {unchanged} · 失败 {failed} · 删除 {deleted}，"
                          "共 {chunks} 个新文本块，用时 {seconds} 秒",
        "col_file": "文件",
        "col_status": "状态",
        "col_chunks": "文本块",
        "col_pages": "页数",
        "col_seconds": "秒",
        "col_error": "原因",
        "status_new": "新增",
        "status_updated": "已更新",
        "status_unchanged": "未变",
        "status_failed": "失败",
        "status_skipped": "已跳过（不支持的类型）",
        "status_deleted": "已删除",
        "status_kept": "保留",
        "status_ok": "已索引",
        "docs_title": "已索引的文档",
        "no_docs": "索引中还没有文档。",
        "delete_label": "删除文档",
        "delete_confirm": "确认删除此文件（同时从知识库文件夹中删除）",
        "delete_button": "删除并重新索引",
        "deleted": "已删除 {source}",
        "upload_too_large": "{name} 超过 {mb} MB 的上传上限，未保存。",
        "upload_unsupported": "{name} 的文件类型无法建立索引，未保存。支持：{types}",
        "upload_empty": "{name} 是空文件，未保存。",
        "upload_bad_name": "{name} 的文件名不可用，请改名后再上传。",
        "upload_outside": "{name} 会被保存到知识库文件夹之外，已拒绝。",
        "upload_not_saved": "未保存：{error}",
        "saved_new": "已保存 {name}",
        "saved_replaced": "已覆盖 {name}",
        "saved_renamed": "同名文件已存在，另存为 {name}",
        "saved_unchanged": "{name} 与已有文件相同，无需保存",
        "index_busy": "重新索引失败：{error}",
        "model_title": "模型",
        "backend": "后端",
        "model_id": "模型",
        "revision": "版本",
        "device": "设备",
        "dtype": "精度",
        "template": "对话模板",
        "context_window": "上下文长度",
        "origin": "来源",
        "loaded_adapters": "已加载的适配器",
        "load_state": "加载状态",
        "state_loaded": ":material/check_circle: 已加载",
        "state_extractive": ":material/info: 抽取式回答（配置为 extractive）",
        "state_fallback": ":material/warning: 语言模型不可用，已回退到抽取式回答",
        "fallback_reason": "原因：{reason}",
        "install_title": "如何安装 ChatGLM3-6B",
        "install_sources": "来源任选其一：ModelScope（国内推荐）`--source modelscope`、Hugging Face `--source huggingface`，"
                           "或已下载好的本地文件夹。也可以在下方直接选择、下载或连接模型，无需重启。",
        "gpu_title": "GPU 显存",
        "gpu_none": "没有可用的 GPU（在 CPU 上运行）。",
        "gpu_line": "{name}：已用 {used:.1f} GiB / 共 {total:.1f} GiB（本进程 {mine:.1f} GiB）",
        "adapters_title": "LoRA 适配器（`{folder}`）",
        "adapters_none": "`{folder}` 下还没有适配器。用 `finetune/` 训练后，适配器会出现在这里。",
        "adapters_unavailable": "适配器功能不可用：{error}",
        "choose_title": "选择回答所用的模型",
        "choice_now": "当前选择：{what}（保存在 `{path}`）",
        "kind_label": "模型来源",
        "kind_config": "配置中的模型",
        "kind_local": "本地模型文件夹",
        "kind_download": "下载模型",
        "kind_openai": "OpenAI 兼容服务",
        "config_caption": "配置（`configs/rag/default.yaml` 与 KBQA_OVERRIDES）中的模型：`{model}`（llm.backend={backend}）。",
        "use_config": "使用配置中的模型",
        "local_label": "模型文件夹（含 config.json 与权重）",
        "use_local": "使用此文件夹",
        "openai_url": "服务地址（URL）",
        "openai_url_help": "例如 Ollama 的 http://127.0.0.1:11434/v1、vLLM 的 http://主机:8000/v1，或本项目的 python -m rag.serve。",
        "openai_model": "模型名称",
        "openai_model_help": "留空时，“测试连接”会使用服务列出的第一个模型。",
        "openai_key": "API 密钥（可选）",
        "openai_key_saved": "已保存一个密钥（不再显示）；留空则保留，输入新密钥则替换。",
        "openai_key_forget": "删除已保存的密钥",
        "connect": "测试连接",
        "save_use": "保存并使用",
        "connect_ok": "连接成功（{seconds:.1f} 秒）：{url} 提供 {count} 个模型：{models}。试答：“{reply}”",
        "connect_failed": "连接失败：{why}",
        "saved_choice": "已保存并切换到：{what}。",
        "save_failed": "未保存：{why}",
        "choice_failed": "所选模型不可用，已改用抽取式回答。{why}",
        "choice_file_bad": "保存的模型选择无法读取，已使用配置中的模型：{error}",
        "reconnect": "重新连接",
        "fail_line": "{kind}。详情：{detail}",
        "fail_unreachable": "无法连接到服务（地址有误或服务未启动）",
        "fail_key_refused": "服务拒绝了 API 密钥",
        "fail_no_such_model": "服务上没有这个模型名称",
        "fail_timeout": "服务在限定时间内没有回应",
        "fail_not_a_model": "该文件夹不是模型文件夹",
        "fail_offline": "本机设置为离线（HF_HUB_OFFLINE / KBQA_OFFLINE），不能下载",
        "fail_model_missing": "本机找不到该模型",
        "fail_other": "加载失败",
        "what_config": "配置中的模型 {model}",
        "what_local": "本地文件夹 {model}",
        "what_openai": "{url} 上的 {model}",
        "download_id": "模型 ID 或简称",
        "download_id_help": "例如 chatglm3-6b，或 ModelScope / Hugging Face 上的 组织/名称。",
        "download_source": "下载来源",
        "source_auto": "自动（先 ModelScope，再 Hugging Face）",
        "source_modelscope": "ModelScope",
        "source_huggingface": "Hugging Face",
        "modelscope_missing": "本机未安装 modelscope：“自动”会直接从 Hugging Face 下载。需要国内源时先执行 `pip install modelscope`。",
        "download_start": "开始下载",
        "download_cancel": "取消下载",
        "download_running": "正在后台下载 {model}：已下载 {done}{total}。可以离开此页，下载不会中断。",
        "download_of": " / 约 {total}",
        "download_refresh": "刷新进度",
        "download_done": "下载完成：`{folder}`",
        "download_failed": "下载失败。{why}。已下载的部分会保留，再次开始即从断点继续。",
        "download_cancelled": "已取消下载；已下载的 {done} 保留在 `{folder}`，再次开始即从断点继续。",
        "download_refused": "未开始下载：{why}",
        "use_download": "使用下载的模型",
        "download_embedder": "这是向量模型，不能用来回答：在配置中设置 `{setting}` 并重建索引。",
        "adapter_usable": ":material/check_circle: 可用",
        "adapter_unusable": ":material/block: 不可用",
        "adapter_needs_llm": "抽取式回答不使用适配器；加载语言模型后才能使用。",
        "adapter_use": "使用此适配器",
        "adapter_in_use": "正在使用",
        "meta_base": "基础模型",
        "meta_template": "模板",
        "meta_dataset": "数据集",
        "meta_metrics": "指标",
        "meta_created": "创建时间",
        "meta_lora": "LoRA",
        "password_title": ":material/lock: 请输入访问密码",
        "password_label": "密码",
        "password_button": "进入",
        "password_wrong": "密码不正确。",
        "password_locked": "密码错误次数过多，请 {minutes} 分钟后再试。",
        "exposed_warning": "页面监听在 `{address}` 上且没有设置密码，局域网内的任何人都能访问。"
                           "设置 KBQA_PASSWORD 或只监听 127.0.0.1。",
        "config_error": "配置有误：{error}",
        "loading_model": "正在加载语言模型（第一次启动可能需要下载，请稍候）……",
        "loading_index": "正在打开索引……",
        "none": "无",
    },
    "en": {
        "page_title": "Knowledge QA",
        "title": "Local knowledge QA",
        "subtitle": "Answers from the documents in your knowledge base, every answer with its sources.",
        "lang_label": "语言 / Language",
        "view_label": "Page",
        "view_chat": ":material/chat: Chat",
        "view_kb": ":material/folder_open: Knowledge base",
        "view_model": ":material/memory: Model",
        "new_chat": "New conversation",
        "sb_history": "Conversations",
        "history_empty": "No saved conversations yet. Conversations are saved as you ask and survive a reload or restart.",
        "history_actions": "This conversation: rename · export · delete",
        "history_title": "Title",
        "history_rename": "Rename",
        "history_delete": "Delete this conversation",
        "history_save_failed": "The answer could not be saved to the conversation history: {error}",
        "sb_kb": "Knowledge base",
        "index_label": "Index",
        "index_counts": "{files} files · {chunks} chunks",
        "embedder_caption": "Embedder: {embedder}",
        "no_index": "No index yet: the knowledge folder `{folder}` has not been indexed.",
        "no_index_other": "Index `{index}` cannot be opened: {error}",
        "build_now": "Build the index now",
        "sb_retrieval": "Retrieval",
        "sb_retrieval_note": "Applies to this session only",
        "top_k": "Passages (top-k)",
        "hybrid": "Hybrid search (vectors + keywords)",
        "hybrid_help": "Off: vector search only. On: vector and BM25 keyword rankings merged by reciprocal-rank fusion.",
        "hybrid_unavailable": "This index has no vectors: keyword search (BM25) only.",
        "threshold": "Similarity threshold",
        "threshold_help": "Refuse when the best passage's vector cosine similarity is below this; 0 = off.",
        "sb_model": "Model",
        "adapter_label": "LoRA adapter",
        "base_option": "(base model, no adapter)",
        "compare": "Compare: base model vs adapter",
        "compare_help": "One question, the same retrieved passages, answered by the base model and the chosen adapter "
                        "side by side.",
        "compare_needs_adapter": "Choose a usable adapter to compare.",
        "ask_placeholder": "Ask a question",
        "ask_disabled": "Build the index first",
        "queued": "In line: {ahead} request(s) ahead of you. Your answer starts automatically.",
        "gate_timeout": "Too many people are asking right now; please try again in a moment.",
        "answer_failed": "Could not answer: {error}",
        "sources": "Sources",
        "closest": "The knowledge base has no support for an answer. The closest passages, for reference:",
        "unverified": "unverified",
        "all_hits": "All retrieved passages ({n})",
        "score": "score",
        "page": "page {page}",
        "also_in": "also in {files}",
        "answered_by": "Answered by {model}",
        "base_label": "Base model",
        "tuned_label": "Adapter: {adapter}",
        "feedback_up": "Thanks, noted!",
        "feedback_where": "Feedback is saved in `{path}` (UTF-8 JSONL, one record a line, readable in any editor; "
                          "`finetune/` turns it into training data)",
        "feedback_down": "Noted. You can write the right answer to help improve the model:",
        "correction_label": "The right answer (optional)",
        "correction_placeholder": "Write the answer you expected…",
        "correction_submit": "Send correction",
        "correction_saved": "Correction saved, thank you!",
        "fallback_banner": "No language model loaded: answers are extractive (quoted sentences with their sources). "
                           "Choose a local model, download one or connect an OpenAI-compatible endpoint on the Model page.",
        "welcome": "Hi! Type a question below. Click a [1] or [2] in an answer to jump to its source passage.",
        "kb_title": "Knowledge base",
        "kb_folder": "Knowledge folder: `{folder}` · index: `{index}`",
        "kb_other_index": "Index `{index}` was not built from the knowledge folder `{folder}`; this page does not "
                          "change it. To update it run: `python ingest.py FOLDER --index {index}`",
        "files_metric": "Files",
        "chunks_metric": "Chunks",
        "failed_metric": "Failed",
        "embedder_metric": "Embedder",
        "upload_title": "Upload documents",
        "upload_label": "Choose files (several at once is fine)",
        "upload_help": "Up to {mb} MB per file. Supported: {types}",
        "uploader_button": "Upload",
        "kb_manage": "Create · rename · delete knowledge bases",
        "kb_new_name": "Knowledge base name",
        "kb_new_folder": "Documents folder (optional)",
        "kb_new_folder_help": "A folder inside {root} (relative to it); empty = the name. Created if missing.",
        "kb_new_folder_placeholder": "same as the name",
        "kb_create": "Create knowledge base",
        "kb_created": "Created knowledge base “{name}”, documents folder {folder}. Upload documents below to index them.",
        "kb_configured_note": "This is the configured knowledge base; it cannot be renamed or deleted from the page.",
        "kb_current": "This knowledge base: {name}",
        "kb_rename": "Rename",
        "kb_renamed": "Renamed to “{name}”",
        "kb_delete_confirm": "Delete this knowledge base's index (its documents folder stays)",
        "kb_delete": "Delete knowledge base",
        "kb_deleted": "Deleted the index of “{name}”; its documents folder stays.",
        "uploader_limit": "{mb} MB per file · {types}",
        "replace_same": "Replace files with the same name (else saved as \"name (2)\")",
        "upload_button": "Save and re-index",
        "reindex_title": "Re-index",
        "reindex_help": "Scan the knowledge folder: new and changed files are parsed again, deleted files leave the "
                        "index, unchanged files are skipped.",
        "reindex_button": "Re-index",
        "progress_hash": "Checking files {done}/{total}",
        "progress_parse": "Parsing files {done}/{total}",
        "progress_embed": "Embedding chunks {done}/{total}",
        "progress_done": "Done",
        "report_title": "Index report",
        "report_summary": "{new} new · {updated} updated · {unchanged} unchanged · {failed} failed · {deleted} "
                          "deleted; {chunks} new chunks in {seconds} s",
        "col_file": "File",
        "col_status": "Status",
        "col_chunks": "Chunks",
        "col_pages": "Pages",
        "col_seconds": "Seconds",
        "col_error": "Reason",
        "status_new": "new",
        "status_updated": "updated",
        "status_unchanged": "unchanged",
        "status_failed": "failed",
        "status_skipped": "skipped (unsupported type)",
        "status_deleted": "deleted",
        "status_kept": "kept",
        "status_ok": "indexed",
        "docs_title": "Indexed documents",
        "no_docs": "The index holds no documents yet.",
        "delete_label": "Delete a document",
        "delete_confirm": "Yes, delete this file (from the knowledge folder too)",
        "delete_button": "Delete and re-index",
        "deleted": "Deleted {source}",
        "upload_too_large": "{name} is over the {mb} MB upload limit; not saved.",
        "upload_unsupported": "{name}: this file type cannot be indexed; not saved. Supported: {types}",
        "upload_empty": "{name} is empty; not saved.",
        "upload_bad_name": "{name} has no usable file name; rename it and upload again.",
        "upload_outside": "{name} would be saved outside the knowledge folder; refused.",
        "upload_not_saved": "Not saved: {error}",
        "saved_new": "Saved {name}",
        "saved_replaced": "Replaced {name}",
        "saved_renamed": "A different file had that name; saved as {name}",
        "saved_unchanged": "{name} is identical to the file already there",
        "index_busy": "Re-index failed: {error}",
        "model_title": "Model",
        "backend": "Backend",
        "model_id": "Model",
        "revision": "Revision",
        "device": "Device",
        "dtype": "Precision",
        "template": "Chat template",
        "context_window": "Context window",
        "origin": "Loaded from",
        "loaded_adapters": "Loaded adapters",
        "load_state": "State",
        "state_loaded": ":material/check_circle: loaded",
        "state_extractive": ":material/info: extractive answers (configured as extractive)",
        "state_fallback": ":material/warning: language model unavailable: fell back to extractive answers",
        "fallback_reason": "Reason: {reason}",
        "install_title": "How to install ChatGLM3-6B",
        "install_sources": "Pick one source: ModelScope (fastest in China) `--source modelscope`, Hugging Face "
                           "`--source huggingface`, or a folder you already have. Or choose, download or connect a model below: "
                           "no restart needed.",
        "gpu_title": "GPU memory",
        "gpu_none": "No GPU available (running on the CPU).",
        "gpu_line": "{name}: {used:.1f} GiB used of {total:.1f} GiB ({mine:.1f} GiB by this process)",
        "adapters_title": "LoRA adapters (`{folder}`)",
        "adapters_none": "No adapters in `{folder}` yet. Adapters trained with `finetune/` appear here.",
        "adapters_unavailable": "Adapters are unavailable: {error}",
        "choose_title": "Choose what answers",
        "choice_now": "Chosen: {what} (saved in `{path}`)",
        "kind_label": "Model source",
        "kind_config": "The config's model",
        "kind_local": "A local model folder",
        "kind_download": "Download a model",
        "kind_openai": "OpenAI-compatible endpoint",
        "config_caption": "The model in the config (`configs/rag/default.yaml` and KBQA_OVERRIDES): `{model}` (llm.backend={backend}).",
        "use_config": "Use the config's model",
        "local_label": "Model folder (with config.json and the weights)",
        "use_local": "Use this folder",
        "openai_url": "Endpoint URL",
        "openai_url_help": "For example Ollama's http://127.0.0.1:11434/v1, vLLM's http://host:8000/v1, or this project's python -m rag.serve.",
        "openai_model": "Model name",
        "openai_model_help": "Left empty, Test connection uses the first model the server lists.",
        "openai_key": "API key (optional)",
        "openai_key_saved": "A key is saved (not shown again); leave this empty to keep it, type a new one to replace it.",
        "openai_key_forget": "Forget the saved key",
        "connect": "Test connection",
        "save_use": "Save and use",
        "connect_ok": "Connected in {seconds:.1f} s: {url} serves {count} model(s): {models}. Test reply: \"{reply}\"",
        "connect_failed": "Connection failed: {why}",
        "saved_choice": "Saved; now answering with {what}.",
        "save_failed": "Not saved: {why}",
        "choice_failed": "The chosen model is unavailable: answering extractively. {why}",
        "choice_file_bad": "The saved model choice cannot be read; using the config's model: {error}",
        "reconnect": "Try again",
        "fail_line": "{kind}. Details: {detail}",
        "fail_unreachable": "The server cannot be reached (wrong address, or it is not running)",
        "fail_key_refused": "The server refused the API key",
        "fail_no_such_model": "The server has no model by that name",
        "fail_timeout": "The server did not answer in time",
        "fail_not_a_model": "That folder holds no model",
        "fail_offline": "This machine is set offline (HF_HUB_OFFLINE / KBQA_OFFLINE): nothing can be downloaded",
        "fail_model_missing": "The model is not on this machine",
        "fail_other": "Loading failed",
        "what_config": "the config's model {model}",
        "what_local": "the local folder {model}",
        "what_openai": "{model} at {url}",
        "download_id": "Model id or short name",
        "download_id_help": "For example chatglm3-6b, or org/name on ModelScope or Hugging Face.",
        "download_source": "Download from",
        "source_auto": "Automatic (ModelScope, then Hugging Face)",
        "source_modelscope": "ModelScope",
        "source_huggingface": "Hugging Face",
        "modelscope_missing": "modelscope is not installed here: Automatic downloads from Hugging Face. For the China mirror run `pip install modelscope` first.",
        "download_start": "Start download",
        "download_cancel": "Cancel download",
        "download_running": "Downloading {model} in the background: {done}{total} so far. You can leave this page; the download goes on.",
        "download_of": " of about {total}",
        "download_refresh": "Refresh progress",
        "download_done": "Downloaded: `{folder}`",
        "download_failed": "Download failed. {why}. What was downloaded is kept; starting again resumes it.",
        "download_cancelled": "Download cancelled; the {done} downloaded so far stay in `{folder}`, and starting again resumes it.",
        "download_refused": "Not started: {why}",
        "use_download": "Use the downloaded model",
        "download_embedder": "This is an embedding model, which cannot answer: set `{setting}` in the config and re-index.",
        "adapter_usable": ":material/check_circle: usable",
        "adapter_unusable": ":material/block: unusable",
        "adapter_needs_llm": "Extractive answers do not use adapters; load a language model to use one.",
        "adapter_use": "Use this adapter",
        "adapter_in_use": "In use",
        "meta_base": "Base model",
        "meta_template": "Template",
        "meta_dataset": "Dataset",
        "meta_metrics": "Metrics",
        "meta_created": "Created",
        "meta_lora": "LoRA",
        "password_title": ":material/lock: Password required",
        "password_label": "Password",
        "password_button": "Enter",
        "password_wrong": "Wrong password.",
        "password_locked": "Too many wrong passwords from this address; try again in {minutes} min.",
        "exposed_warning": "The page listens on `{address}` with no password: anyone on the network can use it. "
                           "Set KBQA_PASSWORD or listen on 127.0.0.1 only.",
        "config_error": "Configuration error: {error}",
        "loading_model": "Loading the language model (the first start may download it; please wait)…",
        "loading_index": "Opening the index…",
        "none": "none",
    },
}


def tr(lang: str, key: str, **values: object) -> str:
    """The text ``key`` in ``lang`` (``zh`` when unknown), formatted with ``values``."""
    text = TEXT.get(lang, TEXT["zh"])[key]
    return text.format(**values) if values else text


# One pass over the text: HTML's special characters, and those that Streamlit's markdown would turn into formatting,
# links, images or LaTeX even inside our HTML blocks, become entities. One pass, so the "#" of an entity made for
# one character is never escaped again (a passage's "'" showed as a literal "&#x27;" when this was two passes).
_INERT_HTML = str.maketrans({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    "*": "&#42;", "_": "&#95;", "`": "&#96;", "$": "&#36;", "[": "&#91;", "]": "&#93;", "~": "&#126;",
    "#": "&#35;", "\\": "&#92;", "|": "&#124;", "!": "&#33;",
})


_BLANK_LINES = re.compile(r"\n[^\S\n]*(?:\n[^\S\n]*)+")


def html_text(text: str) -> str:
    """``text`` as inert HTML: escaped, markdown-neutral, line breaks kept as ``<br>`` (blank lines dropped)."""
    text = _BLANK_LINES.sub("\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.translate(_INERT_HTML).replace("\n", "<br>")


# Every ASCII punctuation character may be backslash-escaped in CommonMark; these are the ones that could make the
# browser fetch something or run markup: images and links ("![", "[", "]"), autolinks and raw HTML ("<", ">"),
# LaTeX ("$"), and the backslash itself: else a model's "\\![x](url)" would turn each escape of ours into a literal
# backslash and leave the image working. (Inside code spans the escapes show; safety first.)
_ANSWER_ESCAPES = str.maketrans({char: "\\" + char for char in "\\![]<>$"})


def markdown_literal(text: str) -> str:
    """``text`` (a file name, an error) for ``st.success`` / ``st.error`` and other markdown: no image, link, raw
    HTML or formula (:func:`answer_markdown`), one line (a name with a newline cannot start a heading or a list)."""
    return " ".join(answer_markdown(text).splitlines())


def answer_markdown(text: str) -> str:
    """A model's answer (or a streamed piece of it) as markdown that keeps emphasis, lists and code but renders no
    image, link, raw HTML or formula: the characters that start them are backslash-escaped one by one, so the pieces
    of a stream can be escaped separately. A link stays readable as ``[text](url)``, with its URL visible."""
    return text.translate(_ANSWER_ESCAPES)


def escape_stream(pieces: Iterable[str]) -> Iterator[str]:
    """:func:`answer_markdown` over a stream of answer pieces (for ``st.write_stream``)."""
    for piece in pieces:
        yield answer_markdown(piece) if isinstance(piece, str) else piece


def find_quote(text: str, quote: str) -> tuple[int, int] | None:
    """(start, end) of ``quote`` in ``text``, matching runs of whitespace loosely; None when absent."""
    quote = quote.strip()
    if not quote:
        return None
    at = text.find(quote)
    if at >= 0:
        return at, at + len(quote)
    pattern = r"\s*".join(re.escape(part) for part in quote.split())
    match = re.search(pattern, text)
    return (match.start(), match.end()) if match else None


def passage_html(text: str, quote: str = "") -> str:
    """A passage as inert HTML with its supporting sentence ``quote`` wrapped in ``<mark>``."""
    text = _BLANK_LINES.sub("\n", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    span = find_quote(text, quote)
    if span is None:
        return html_text(text)
    start, end = span
    return f"{html_text(text[:start])}<mark>{html_text(text[start:end])}</mark>{html_text(text[end:])}"


_ESCAPED_CITATION = re.compile(r"\\\[(\d{1,3})\\\]")


def link_citations(text: str, anchor_prefix: str, numbers: set[int] | None = None) -> str:
    """Markdown of an answer (made inert by :func:`answer_markdown`: no image, link, HTML or formula of its own)
    whose ``[n]`` markers link to ``#{anchor_prefix}-{n}`` (only ``numbers``, if given)."""
    text = answer_markdown(text)

    def link(match: re.Match[str]) -> str:
        number = int(match.group(1))
        if numbers is not None and number not in numbers:
            return match.group(0)
        return f"[\\[{number}\\]](#{anchor_prefix}-{number})"

    return _ESCAPED_CITATION.sub(link, text)


def source_card(anchor: str, number: int | None, where: str, body_html: str, badge: str = "") -> str:
    """One source passage as an HTML card (``where`` is plain text: escaped here; ``body_html`` is already safe)."""
    label = f'<span class="kb-n">[{number}]</span>' if number is not None else ""
    flag = f' <span class="kb-badge">{html_text(badge)}</span>' if badge else ""
    return (f'<div class="kb-src" id="{html.escape(anchor)}"><div class="kb-src-head">{label}{html_text(where)}'
            f'{flag}</div><div class="kb-src-body">{body_html}</div></div>')


# Streamlit cannot send response headers, so the page's Content-Security-Policy comes as a <meta> element that a
# script puts into <head> on the first run (browsers apply such a policy from then on). It only narrows what may be
# fetched without a click: images and media from this server (or data:/blob:), no plugins, no foreign <base> or form
# target; scripts, styles and the websocket stay as Streamlit needs them.
CSP = "img-src 'self' data: blob:; media-src 'self' data: blob:; object-src 'none'; base-uri 'self'; form-action 'self'"
CSP_SCRIPT = f"""<script>
if (!document.head.querySelector('meta[http-equiv="Content-Security-Policy"]')) {{
  const meta = document.createElement("meta");
  meta.httpEquiv = "Content-Security-Policy";
  meta.content = "{CSP}";
  document.head.prepend(meta);
}}
</script>"""

def uploader_css(lang: str, mb: str, types: str) -> str:
    """Streamlit draws its file uploader's button and size line in English; this restyles them in ``lang``'s words.

    The original words are kept in the page (zero-sized) and the translation is drawn by CSS ``::after``.
    """
    if lang == "en":
        return ""
    words = {"button": tr(lang, "uploader_button"), "limit": tr(lang, "uploader_limit", mb=mb, types=types)}
    css = {key: value.replace("\\", "").replace('"', "'") for key, value in words.items()}
    dropzone = '[data-testid="stFileUploaderDropzone"]'
    return (f"<style>{dropzone} button [data-testid=\"stMarkdownContainer\"] p {{font-size: 0;}}"
            f"{dropzone} button [data-testid=\"stMarkdownContainer\"] p::after "
            f"{{content: \"{css['button']}\"; font-size: .875rem;}}"
            f"[data-testid=\"stFileUploaderDropzoneInstructions\"] span {{font-size: 0;}}"
            f"[data-testid=\"stFileUploaderDropzoneInstructions\"] span::after "
            f"{{content: \"{css['limit']}\"; font-size: .8rem;}}</style>")


# Scroll each source card's passage so that its highlighted sentence is in view (a card's body is a short scroll box;
# the sentence is often far down). Runs in the page: cards drawn later (streaming, reruns) are handled as they appear.
SCROLL_TO_MARKS_JS = """<script>
(() => {
  if (window.kbqaMarks) return;
  window.kbqaMarks = true;
  const reveal = () => document.querySelectorAll('.kb-src-body').forEach((body) => {
    const mark = body.querySelector('mark');
    if (!mark || body.dataset.kbqaRevealed) return;
    body.dataset.kbqaRevealed = '1';
    const offset = mark.getBoundingClientRect().top - body.getBoundingClientRect().top + body.scrollTop;
    body.scrollTop = Math.max(0, offset - body.clientHeight / 4);
  });
  new MutationObserver(reveal).observe(document.body, {childList: true, subtree: true});
  reveal();
})();
</script>"""


CSS = """
<style>
.kb-src {border: 1px solid rgba(128, 128, 128, .35); border-radius: .5rem; padding: .45rem .7rem; margin: .4rem 0;
         font-size: .88rem; scroll-margin-top: 4.5rem;}
.kb-src:target {border-color: #f59e0b; box-shadow: 0 0 0 2px rgba(245, 158, 11, .35);}
.kb-src-head {font-weight: 600; margin-bottom: .25rem; overflow-wrap: anywhere;}
.kb-src-head .kb-n {color: #d97706; margin-right: .4rem;}
.kb-badge {font-weight: 400; font-size: .75rem; padding: 0 .35rem; border-radius: .3rem;
           background: rgba(239, 68, 68, .15); color: #b91c1c;}
.kb-src-body {max-height: 11rem; overflow-y: auto; line-height: 1.65; opacity: .92; overflow-wrap: anywhere;}
.kb-src mark {background: rgba(250, 204, 21, .5); color: inherit; padding: 0 .1rem; border-radius: .2rem;}
.kb-meta {font-size: .8rem; opacity: .7;}
[class*="st-key-conv-"] button, [class*="st-key-conv-"] button div {justify-content: flex-start; text-align: left;}
</style>
"""
