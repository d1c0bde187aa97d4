"""What answers on the chat page, as a person chose it in the model panel, kept across reloads and restarts.

A :class:`ModelChoice` is one of: the config's model (``configs/rag/default.yaml`` plus overrides; the default), a
local model folder, or an OpenAI-compatible endpoint (URL, model name, optional API key: Ollama, vLLM, a company
gateway, our own ``python -m rag.serve``). It is written to a small YAML file (:func:`user_config_path`), readable
by its owner only because it may hold the key. The key never appears in ``repr``, in logs, or in the page after
saving: the page only says that one is saved.

:func:`load_choice_model` loads what was chosen; when that fails (no server there, a folder that holds no model), the
page answers extractively and :func:`failure_kind` sorts the reason into a few kinds the page says in Chinese or
English, followed by the library's own detail. :func:`check_endpoint` is the panel's "测试连接" button: it really
calls the server (``GET /v1/models``, then a one-word chat completion) and reports what each step gave.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import yaml

from rag.answer.backend import LoadedModel, load_chat_model
from rag.core.config import LLMConfig
from rag.core.errors import ConfigError, RagError
from rag.core.types import Message
from rag.llm.base import GenerationConfig
from rag.models.ids import is_model_folder

if TYPE_CHECKING:
    from rag.llm.openai import OpenAIChatModel

logger = logging.getLogger(__name__)

KINDS = ("config", "local", "openai")  # the config's model | a local folder | an OpenAI-compatible endpoint
USER_CONFIG_NAME = "model.yaml"
CHECK_TIMEOUT_S = 20.0  # the connect button waits this long for each call (a cold model's first token can be slow)
_FIELDS = ("kind", "model", "base_url", "api_key")
_API_SUFFIXES = ("/chat/completions", "/completions", "/models")  # pasted full endpoint URLs: cut back to the root


@dataclass(frozen=True)
class ModelChoice:
    """What answers.

    Attributes:
        kind: ``config`` (the config's ``llm`` section), ``local`` (``model`` is a model folder) or ``openai``.
        model: the local folder, or the model's name on the OpenAI-compatible server.
        base_url: the server's API root, e.g. ``http://127.0.0.1:11434/v1`` (``openai`` only).
        api_key: sent as ``Authorization: Bearer``; "" sends none. Left out of ``repr`` so it never reaches a log.
    """

    kind: str = "config"
    model: str = ""
    base_url: str = ""
    api_key: str = field(default="", repr=False)

    def apply(self, cfg: LLMConfig) -> LLMConfig:
        """``cfg`` with this choice in it (the key is not part of :class:`LLMConfig`: it is passed on its own)."""
        if self.kind == "local":
            return dataclasses.replace(cfg, backend="hf", model=self.model, source="local", revision="")
        if self.kind == "openai":
            return dataclasses.replace(cfg, backend="openai", model=self.model, openai_base_url=self.base_url)
        return cfg

    def cache_key(self) -> tuple[str, str, str, str]:
        """What makes two choices load different models, for ``st.cache_resource``; the key only as a fingerprint."""
        import hashlib

        fingerprint = hashlib.sha256(self.api_key.encode("utf-8")).hexdigest()[:16] if self.api_key else ""
        return self.kind, self.model, self.base_url, fingerprint


def user_config_path(conversations_dir: str | Path, configured: str = "") -> Path:
    """Where the choice is saved: ``configured`` (``KBQA_USER_CONFIG``) when set, else ``model.yaml`` in the page's
    conversations folder, the page's own data folder (git-ignored), so a test or a second install keeps its own."""
    return Path(configured).expanduser() if configured else Path(conversations_dir) / USER_CONFIG_NAME


def normalise_base_url(url: str) -> str:
    """The API root of an OpenAI-compatible server as people paste it: ``http://host:11434`` -> ``.../v1``, a full
    ``.../v1/chat/completions`` -> ``.../v1``, no trailing slash.

    Raises:
        ConfigError: not an http(s) URL with a host.
    """
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint URL {text!r} must start with http:// or https:// and name a host, "
                          "e.g. http://127.0.0.1:11434/v1")
    path = parts.path.rstrip("/")
    for suffix in _API_SUFFIXES:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    if not path:
        path = "/v1"  # Ollama, vLLM, LM Studio and rag.serve all serve the OpenAI API under /v1
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def validate(choice: ModelChoice) -> ModelChoice:
    """``choice`` checked (and its URL normalised) before it is saved.

    Raises:
        ConfigError: an unknown kind, a folder that holds no model, an endpoint without URL or model name.
    """
    if choice.kind not in KINDS:
        raise ConfigError(f"model choice kind={choice.kind!r} is not one of {', '.join(KINDS)}")
    if choice.kind == "local":
        folder = Path(choice.model.strip()).expanduser()
        if not choice.model.strip() or not is_model_folder(folder):
            raise ConfigError(f"{str(folder)!r} is not a model folder (it needs a config.json); "
                              "give the folder that holds the model's config.json and weights")
        return ModelChoice("local", str(folder.resolve()))
    if choice.kind == "openai":
        if not choice.model.strip():
            raise ConfigError("the endpoint needs a model name; 测试连接 / Test connection lists the served ones")
        return ModelChoice("openai", choice.model.strip(), normalise_base_url(choice.base_url), choice.api_key.strip())
    return ModelChoice()


def load_choice(path: str | Path) -> ModelChoice:
    """The saved choice; the config's model when nothing was saved.

    Raises:
        ConfigError: the file is not valid YAML, not a mapping, or has unknown keys or a bad value (names the file
            and the fix).
    """
    path = Path(path)
    if not path.is_file():
        return ModelChoice()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())  # YAML's messages span lines; one line here
        raise ConfigError(f"cannot read the model choice in {path} ({detail}); fix or delete the file") from None
    if data is None:
        return ModelChoice()
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with keys {', '.join(_FIELDS)}; fix or delete the file")
    unknown = sorted(str(k) for k in set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {path}; valid: {', '.join(_FIELDS)}")
    values = {k: "" if data[k] is None else str(data[k]) for k in _FIELDS if k in data}
    try:
        return validate(ModelChoice(**values))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_choice(path: str | Path, choice: ModelChoice) -> ModelChoice:
    """Check ``choice`` and write it to ``path`` atomically, readable by its owner only (it may hold the API key).

    Returns:
        the choice as saved (URL normalised, folder resolved).

    Raises:
        ConfigError: see :func:`validate`.
    """
    checked = validate(choice)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: getattr(checked, k) for k in _FIELDS if getattr(checked, k)}
    text = "# what answers on the chat page (its model panel writes this file; the API key stays on this machine)\n"
    text += yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    logger.info("model choice saved to %s: %s", path, checked)  # repr leaves out the key
    return checked


# --- loading and connecting -----------------------------------------------------------------------------------------


def _endpoint_model(cfg: LLMConfig, choice: ModelChoice, timeout_s: float | None,
                    retries: int | None = None) -> OpenAIChatModel:
    from rag.llm.openai import RETRIES, OpenAIChatModel

    return OpenAIChatModel(choice.base_url, choice.model, api_key=choice.api_key or None,
                           context_window=cfg.context_window, gen=GenerationConfig.from_llm(cfg),
                           timeout_s=timeout_s, retries=RETRIES if retries is None else retries)


def served_models(cfg: LLMConfig, choice: ModelChoice, timeout_s: float = CHECK_TIMEOUT_S) -> list[str]:
    """The names the endpoint lists (``GET /models``, waiting at most ``timeout_s``); [] for a server without that
    route (it can still chat).

    Raises:
        RagError: the server cannot be reached, refuses the key, or answers with an error.
    """
    probe = _endpoint_model(cfg, choice, timeout_s, 1)
    try:
        return probe.list_models()
    except RagError as exc:
        if "http 404" in str(exc).lower():
            return []
        raise
    finally:
        probe.close()


def load_choice_model(cfg: LLMConfig, choice: ModelChoice) -> LoadedModel:
    """The model ``choice`` names on top of ``cfg``; when it cannot be had, the extractive backend and the reason.

    An endpoint is asked for its model list once here (with the connect button's short timeout, not the answer's
    long one), so a server that is not there shows as the reason at once, not as an error on the first question; a
    model name it does not serve is a reason too.
    """
    from rag.answer.extractive import ExtractiveModel

    llm = choice.apply(cfg)
    try:
        if choice.kind == "openai":
            served = served_models(llm, choice)
            if served and choice.model not in served:
                raise RagError(f"the server at {choice.base_url} does not serve a model {choice.model!r} "
                               f"(it serves {', '.join(served[:10])})")
            return LoadedModel(_endpoint_model(llm, choice, None))
        return load_chat_model(llm)
    except (RagError, ImportError, OSError) as exc:
        return LoadedModel(ExtractiveModel(), fallback_reason=str(exc))


FAILURE_KINDS = ("unreachable", "key_refused", "no_such_model", "timeout", "not_a_model", "offline", "model_missing",
                 "other")


def explain_failure(lang: str, reason: str) -> str:
    """A load or connect failure in the reader's language (its kind), then the detail in the library's own words."""
    from rag.webui.text import markdown_literal, tr

    return tr(lang, "fail_line", kind=tr(lang, f"fail_{failure_kind(reason)}"), detail=markdown_literal(reason))


def failure_kind(reason: str) -> str:
    """Sort a load or connect failure (the project's own English messages) into one of :data:`FAILURE_KINDS`,
    which the page says in the reader's language before the detail."""
    text = reason.lower()
    if "cannot reach" in text:
        return "unreachable"
    if "http 401" in text or "http 403" in text:
        return "key_refused"
    if "does not serve a model" in text or "http 404" in text:
        return "no_such_model"
    if "sent nothing for" in text:
        return "timeout"
    if "not a model folder" in text:
        return "not_a_model"
    if "offline (" in text:
        return "offline"
    if "not found:" in text or "cannot download" in text:
        return "model_missing"
    return "other"


@dataclass(frozen=True)
class EndpointCheck:
    """What the connect button found.

    Attributes:
        ok: both calls worked (or the list worked and no model name was given to try).
        base_url: the API root that was called (normalised).
        models: the names ``GET /models`` listed.
        reply: the start of the one-word chat completion's answer ("" when not tried).
        seconds: how long the two calls took.
        error: why not, "" when ok.
    """

    ok: bool
    base_url: str
    models: tuple[str, ...] = ()
    reply: str = ""
    seconds: float = 0.0
    error: str = ""


def check_endpoint(base_url: str, model: str, api_key: str = "", timeout_s: float = CHECK_TIMEOUT_S) -> EndpointCheck:
    """Call the server as the page will: ``GET {root}/models``, then a chat completion of at most 8 tokens with
    ``model`` (the first listed model when ``model`` is empty). Never raises for what the server does."""
    started = time.perf_counter()
    try:
        root = normalise_base_url(base_url)
    except ConfigError as exc:
        return EndpointCheck(False, base_url.strip(), error=str(exc))
    probe = ModelChoice("openai", model.strip() or "?", root, api_key.strip())
    client = _endpoint_model(LLMConfig(max_new_tokens=8, temperature=0.0), probe, timeout_s, 0)
    models: tuple[str, ...] = ()
    try:
        try:
            models = tuple(client.list_models())
        except RagError as exc:
            if "http 404" not in str(exc).lower():  # a server without /models can still chat
                raise
        name = model.strip() or (models[0] if models else "")
        if not name:
            return EndpointCheck(False, root, models, seconds=time.perf_counter() - started,
                                 error=f"the server at {root} lists no models; type the model name")
        client.model = name
        pieces = []
        for piece in client.stream([Message("user", "ping")]):
            pieces.append(piece)
            if sum(map(len, pieces)) >= 80:
                break
        return EndpointCheck(True, root, models, "".join(pieces)[:80], time.perf_counter() - started)
    except RagError as exc:
        return EndpointCheck(False, root, models, seconds=time.perf_counter() - started, error=str(exc))
    finally:
        client.close()
