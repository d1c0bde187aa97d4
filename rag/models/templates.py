"""Chat templates shared by serving and training, so both turn one conversation into the same token ids.

An adapter trained on ids that differ from the ids it is served with (a missing newline, another end token) seems to
"do nothing". Here each template is written once, as the Jinja text a Hugging Face tokenizer stores in
``chat_template``, and both paths go through it:

- serving: ``encode(tokenizer, messages, add_generation_prompt=True)``;
- training: ``encode_for_training(tokenizer, messages)`` -> ``(ids, labels)``. For every assistant turn ``i``,
  ``ids`` starts with exactly ``encode(messages[:i], add_generation_prompt=True)`` (checked, not assumed) and the
  labels train the tokens after that prompt: the turn's text and the token that ends it. Everything else is -100.

How an assistant turn ends:

- ``chatml`` (Qwen2/2.5) ends it with ``<|im_end|>``, ``llama3`` with ``<|eot_id|>``; that token is trained. The
  newline ChatML writes after ``<|im_end|>`` is not (generation stops before it).
- ``chatglm3`` and ``glm4`` write no end token: a turn ends where the next role token (``<|user|>``,
  ``<|observation|>``) starts, and after the last turn the eos token (``</s>`` / ``<|endoftext|>``) is appended. The
  trained tokens are the newline after ``<|assistant|>`` (ChatGLM3's empty metadata line), the text, and that next
  token. This is what ChatGLM3's finetune_demo does (its labels are the loss mask shifted by one, plus eos), and all
  of these tokens are stop tokens at serving time.

Message contents are encoded with ``sanitize_control_tokens``: a retrieved document that contains ``<|user|>``
becomes text, never a role switch. ``chatml`` is plain ChatML: it adds no default system prompt (Qwen2.5's own
template does; pass a system message). A decoded chatglm3/glm4 answer starts with the metadata line's newline: strip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rag.core.errors import ConfigError, RagError
from rag.core.types import Message

IGNORE_INDEX = -100  # label of a token that is not trained (torch's CrossEntropyLoss ignore_index)

# ChatGLM3 encodes "{metadata}\n" and the content with two separate sentencepiece calls, each with its dummy-prefix
# space. The template writes that second prefix as an explicit " " before non-empty content; the converted ChatGLM3
# tokenizer (rag.llm.glm.convert) turns it into the same "▁" and so reproduces ChatGLM3's ids token for token.
CHATGLM3_JINJA = (
    "[gMASK]sop"
    "{% for message in messages %}"
    r"{{ '<|' + message['role'] + '|>' + (message['metadata'] if message['metadata'] is defined else '') + '\n' }}"
    "{% if message['content'] %}{{ ' ' + message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHATML_JINJA = (
    "{% for message in messages %}"
    r"{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GLM4_JINJA = (
    "[gMASK]<sop>"
    "{% for message in messages %}"
    r"{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
LLAMA3_JINJA = (
    "<|begin_of_text|>"
    "{% for message in messages %}"
    r"{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format.

    Attributes:
        name: registry name (``chatglm3``, ``chatml``, ``glm4``, ``llama3``).
        jinja: the template as Hugging Face ``chat_template`` text; set it on a tokenizer to serve through
            ``apply_chat_template`` (vLLM, TGI) with the same ids.
        special_tokens: the added tokens the template writes; a tokenizer for it must have them all.
        stop_tokens: generation stops at any of these.
        end_of_turn: the token that closes an assistant turn, or None when a turn ends at the next role token (and
            at ``eos_token``, appended, after the last turn).
        eos_token: the tokenizer's end-of-text token for this family.
    """

    name: str
    jinja: str
    special_tokens: tuple[str, ...]
    stop_tokens: tuple[str, ...]
    end_of_turn: str | None
    eos_token: str

    def required_tokens(self) -> tuple[str, ...]:
        extra = (self.end_of_turn,) if self.end_of_turn else (self.eos_token,)
        return tuple(dict.fromkeys(self.special_tokens + extra))

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise ConfigError if ``tokenizer`` lacks a token this template writes (it would be split into pieces)."""
        missing = [token for token in self.required_tokens() if _token_id(tokenizer, token) is None]
        if missing:
            raise ConfigError(
                f"the tokenizer has no {missing} token(s) that the {self.name!r} chat template writes; use the "
                f"template that matches the model (detect_template(tokenizer) guesses it) or a tokenizer of that family"
            )

    def encode(self, tokenizer: Any, messages: Sequence[Message | Mapping[str, Any]],
               add_generation_prompt: bool) -> list[int]:
        """Token ids of ``messages``; with ``add_generation_prompt`` they end where the assistant's answer starts."""
        self.check_tokenizer(tokenizer)
        return self._encode(tokenizer, messages, add_generation_prompt)

    def _encode(self, tokenizer: Any, messages: Sequence[Message | Mapping[str, Any]],
                add_generation_prompt: bool) -> list[int]:
        ids = tokenizer.apply_chat_template(
            [_as_dict(m) for m in messages], chat_template=self.jinja, add_generation_prompt=add_generation_prompt,
            tokenize=True, return_dict=False, sanitize_control_tokens=True,
        )
        return [int(i) for i in ids]

    def encode_for_training(self, tokenizer: Any,
                            messages: Sequence[Message | Mapping[str, Any]]) -> tuple[list[int], list[int]]:
        """``(ids, labels)`` of a conversation; labels are -100 except each assistant turn's text and end token.

        Raises:
            RagError: the prompt before an assistant turn tokenises differently alone than inside the conversation
                (text at the boundary merged into one token), so serving could never reproduce these ids.
        """
        ids = self.encode(tokenizer, messages, add_generation_prompt=False)
        roles = [_as_dict(m)["role"] for m in messages]
        if self.end_of_turn is None and roles and roles[-1] == "assistant":
            ids.append(tokenizer.convert_tokens_to_ids(self.eos_token))
        labels = [IGNORE_INDEX] * len(ids)
        end_id = _token_id(tokenizer, self.end_of_turn) if self.end_of_turn else None
        for turn, role in enumerate(roles):
            if role != "assistant":
                continue
            start = self._prefix_length(tokenizer, messages[:turn], True, ids, turn)
            end = self._prefix_length(tokenizer, messages[: turn + 1], False, ids, turn)
            if end_id is None:
                stop = end + 1  # the next role token, or the appended eos
            elif end_id in ids[start:end]:
                stop = ids.index(end_id, start, end) + 1
            else:
                raise RagError(f"{self.name} template: assistant turn {turn} has no {self.end_of_turn} token")
            labels[start:stop] = ids[start:stop]
        return ids, labels

    def _prefix_length(self, tokenizer: Any, prefix: Sequence[Message | Mapping[str, Any]], generation: bool,
                       ids: list[int], turn: int) -> int:
        prefix_ids = self._encode(tokenizer, prefix, add_generation_prompt=generation)
        if ids[: len(prefix_ids)] != prefix_ids:
            raise RagError(
                f"{self.name} template: the conversation up to assistant turn {turn} tokenises differently alone than "
                "inside the whole conversation, so training ids would not match serving ids; this happens when a "
                "message starts or ends with whitespace that merges with the template's own (strip the messages)"
            )
        return len(prefix_ids)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Ids that end generation: the template's stop tokens the tokenizer has, then its eos if not among them."""
        ids = [i for i in (_token_id(tokenizer, token) for token in self.stop_tokens) if i is not None]
        if tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
        if not ids:
            raise ConfigError(f"the tokenizer has none of the {self.name!r} stop tokens {list(self.stop_tokens)}")
        return list(dict.fromkeys(ids))


TEMPLATES: dict[str, ChatTemplate] = {
    template.name: template
    for template in (
        ChatTemplate(
            "chatglm3", CHATGLM3_JINJA,
            special_tokens=("[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
            stop_tokens=("</s>", "<|user|>", "<|observation|>"), end_of_turn=None, eos_token="</s>",
        ),
        ChatTemplate(
            "chatml", CHATML_JINJA, special_tokens=("<|im_start|>", "<|im_end|>"),
            stop_tokens=("<|im_end|>", "<|endoftext|>"), end_of_turn="<|im_end|>", eos_token="<|endoftext|>",
        ),
        ChatTemplate(
            "glm4", GLM4_JINJA,
            special_tokens=("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
            stop_tokens=("<|endoftext|>", "<|user|>", "<|observation|>"), end_of_turn=None,
            eos_token="<|endoftext|>",
        ),
        ChatTemplate(
            "llama3", LLAMA3_JINJA,
            special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            stop_tokens=("<|eot_id|>", "<|end_of_text|>"), end_of_turn="<|eot_id|>", eos_token="<|end_of_text|>",
        ),
    )
}


def get_template(name: str) -> ChatTemplate:
    """The registered template called ``name``; ConfigError listing the valid names otherwise."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ConfigError(
            f"unknown chat template {name!r}; valid templates: {', '.join(sorted(TEMPLATES))}"
        ) from None


def detect_template(tokenizer_or_config: Any) -> str | None:
    """Guess the template name from a tokenizer's special tokens, or a model config's ``model_type``.

    A tokenizer is the better witness: ChatGLM2 and ChatGLM3 share ``model_type`` "chatglm", and a converted ChatGLM3
    and GLM-4 share "glm" (told apart by vocabulary size: 65,024 against 151,552). Returns None when unsure.
    """
    obj = tokenizer_or_config
    if hasattr(obj, "get_vocab"):
        for template in TEMPLATES.values():
            if getattr(obj, "chat_template", None) == template.jinja:
                return template.name
        vocab = obj.get_vocab()
        if "<|im_start|>" in vocab:
            return "chatml"
        if "<|start_header_id|>" in vocab:
            return "llama3"
        if "<|assistant|>" in vocab and "<sop>" in vocab:
            return "glm4"
        if "<|assistant|>" in vocab and "sop" in vocab and "[gMASK]" in vocab:
            return "chatglm3"
        return None
    get = obj.get if isinstance(obj, Mapping) else lambda key, default=None: getattr(obj, key, default)
    model_type = str(get("model_type", "") or "")
    vocab_size = int(get("vocab_size", 0) or get("padded_vocab_size", 0) or 0)
    if model_type == "chatglm":
        return "chatglm3"
    if model_type == "glm":
        return "chatglm3" if 0 < vocab_size < 100_000 else "glm4"
    if model_type.startswith("glm4"):
        return "glm4"
    if model_type.startswith("qwen2"):
        return "chatml"
    if model_type == "llama" and vocab_size >= 128_000:
        return "llama3"
    return None


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` as one token, or None if the tokenizer does not have it (without building get_vocab())."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(token_id)


def _as_dict(message: Message | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(message, Message):
        return {"role": message.role, "content": message.content}
    return dict(message)
