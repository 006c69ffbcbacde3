"""A checkpoint folder's tokenizer and chat template, as transformers 5.23 loads and renders them, without it.

The tokenizer is `tokenizer.json` read by the `tokenizers` library, with the named special tokens of
`tokenizer_config.json` (or `special_tokens_map.json`); the chat template is rendered with jinja2 in the
sandboxed environment transformers builds (trim_blocks, lstrip_blocks, loopcontrols, `{% generation %}`,
`tojson`, `raise_exception`, `strftime_now`, guarded `dict` / `namespace`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.utils
import numpy as np
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

NAMED_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def read_json(path: Path) -> dict:
    """A JSON file's object, or {} when the file does not exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_string(value) -> str | None:
    """A special token as saved by transformers: a string or a serialised AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _default_template(templates) -> str | None:
    """The "default" entry of a template list [{name, template}] or dict, else the string itself."""
    if isinstance(templates, list):
        templates = {t["name"]: t["template"] for t in templates}
    return templates.get("default") if isinstance(templates, dict) else templates


def load_chat_template(folder: str | Path) -> str | None:
    """The processor's template: processor_config.json, then chat_template.json, then chat_template.jinja
    (the order transformers' processors use), falling back to the tokenizer's, in tokenizer_config.json."""
    folder = Path(folder)
    jinja_file = folder / "chat_template.jinja"
    for template in (
        read_json(folder / "processor_config.json").get("chat_template"),
        read_json(folder / "chat_template.json").get("chat_template"),
        jinja_file.read_text(encoding="utf-8") if jinja_file.is_file() else None,
        read_json(folder / "tokenizer_config.json").get("chat_template"),
    ):
        if template is not None:
            return _default_template(template)
    return None


def _special_tokens(config: dict, legacy_map: dict) -> dict[str, str]:
    """Named special tokens plus model-specific ones (`audio_token`, ...), as transformers collects them:
    special_tokens_map.json is read only when tokenizer_config.json has no `added_tokens_decoder`."""
    source = config if "added_tokens_decoder" in config else {**config, **legacy_map}
    tokens = {k: _token_string(source.get(k)) for k in NAMED_SPECIAL_TOKENS}
    tokens |= {
        k: _token_string(v)
        for k, v in source.items()
        if k.endswith("_token") and k not in tokens and isinstance(v, str | dict)
    }
    extra = source.get("extra_special_tokens")
    if isinstance(extra, dict):
        tokens |= {k: _token_string(v) for k, v in extra.items()}
    return {k: v for k, v in tokens.items() if v is not None}


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """A `tokenizers` backend, its special tokens by name and the chat template."""

    backend: tokenizers.Tokenizer
    special_tokens: dict[str, str]
    chat_template: str | None = None

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Tokenizer:
        """Load a folder's tokenizer.json, special tokens and chat template (`load_chat_template`)."""
        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise ValueError(f"{folder} has no tokenizer.json (only fast tokenizers are supported)")
        config = read_json(folder / "tokenizer_config.json")
        return cls(
            backend=tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")),
            special_tokens=_special_tokens(config, read_json(folder / "special_tokens_map.json")),
            chat_template=load_chat_template(folder),
        )

    def token_id(self, token: str) -> int:
        """Id of one token string; raises if the vocabulary does not have it."""
        index = self.backend.token_to_id(token)
        if index is None:
            raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
        return index

    def special_token(self, name: str) -> str:
        """A special token by name (`eos_token`, `audio_token`, ...); raises if the checkpoint has none."""
        if name not in self.special_tokens:
            raise ValueError(f"the tokenizer defines no {name} (has: {sorted(self.special_tokens)})")
        return self.special_tokens[name]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(
        self, texts: Sequence[str], *, padding_side: str = "left", add_special_tokens: bool = True
    ) -> dict[str, np.ndarray]:
        """Tokenise a batch and pad it to its longest row. -> input_ids, attention_mask (b s int64)."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return self.pad([e.ids for e in encodings], padding_side=padding_side)

    def pad(self, rows: Sequence[Sequence[int]], padding_side: str = "left") -> dict[str, np.ndarray]:
        """Pad id rows with the pad token on `padding_side`. -> input_ids, attention_mask (b s int64)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        length = max(len(r) for r in rows)
        if any(len(r) != length for r in rows) and "pad_token" not in self.special_tokens:
            raise ValueError(
                "rows have different lengths but the tokenizer has no pad_token to pad them with"
            )
        pad_id = self.token_id(self.special_tokens["pad_token"]) if "pad_token" in self.special_tokens else 0
        ids = np.full((len(rows), length), pad_id, np.int64)
        mask = np.zeros((len(rows), length), np.int64)
        for i, row in enumerate(rows):
            span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
            ids[i, span], mask[i, span] = row, 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in np.ravel(ids)], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in rows]

    def apply_chat_template(
        self, conversation, chat_template: str | None = None, **kwargs
    ) -> str | list[str]:
        """Render one conversation (-> str) or a batch of them (-> list[str]) with the checkpoint's template;
        keyword arguments (add_generation_prompt, continue_final_message, tools, ...) as in transformers."""
        conversations, batched = normalize_conversations(conversation)
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError(
                "the checkpoint has no chat template (chat_template.jinja / tokenizer_config.json)"
            )
        prompts = render_chat_template(template, conversations, **{**self.special_tokens, **kwargs})
        return prompts if batched else prompts[0]


def normalize_conversations(conversation) -> tuple[list[list[dict]], bool]:
    """Batch a single conversation and drop keys whose value is None. -> (conversations, was batched)."""
    if not isinstance(conversation, list | tuple) or not conversation:
        raise ValueError(
            "a conversation is a non-empty list of {'role', 'content'} messages (or a list of those)"
        )
    batched = isinstance(conversation[0], list | tuple)
    conversations = conversation if batched else [conversation]
    for chat in conversations:
        if not all(isinstance(m, Mapping) for m in chat):
            raise ValueError(f"chat messages must be dicts, got {chat!r}")
    return [[{k: v for k, v in m.items() if v is not None} for m in chat] for chat in conversations], batched


def _plain(value: Any) -> Any:
    """Template-visible copy of the inputs in plain JSON types; anything else becomes "<TypeName>"."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (str, int, float):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _alias_reasoning(chat: list[dict]) -> list[dict]:
    """Copy a message's reasoning (under any of its names) to `reasoning_content` and `thinking`."""
    out = []
    for message in chat:
        reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
        out.append(
            message
            if reasoning is None
            else {"thinking": reasoning, **message, "reasoning_content": reasoning}
        )
    return out


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` renders its body (assistant masks are not tracked here)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` without exposing the dict type to the template."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja's namespace, refusing underscore-prefixed attribute names."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot set underscore attributes ({name!r})"
            )


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.cache
def compile_chat_template(template: str) -> jinja2.Template:
    """The template compiled in the environment transformers renders chat templates in."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt),
        dict=_TemplateDict(),
        namespace=_TemplateNamespace,
    )
    return env.from_string(template)


def _tag_final_message(chat: list[dict], field: str, template: str) -> str:
    """Append the continuation tag to the final message's `field` (or its last text block). -> its text."""
    final = chat[-1].get(field)
    if final is None:
        raise ValueError(f'continue_final_message is set but the final message has no "{field}" to continue')
    fields = (
        [f for f in REASONING_FIELDS if chat[-1].get(f) == final] if field in REASONING_FIELDS else [field]
    )
    if not any(f in template for f in fields):
        raise ValueError(f'continue_final_message is set to "{field}" but the chat template never reads it')
    if not isinstance(final, list | tuple):
        for f in fields:
            chat[-1][f] = chat[-1][f] + CONTINUE_TAG
        return final
    block = next((b for b in reversed(final) if "text" in b), None)
    if block is None:
        raise ValueError("continue_final_message is set but the final message has no text to continue")
    text, block["text"] = block["text"], block["text"] + CONTINUE_TAG
    return text


def _cut_at_tag(rendered: str, final: str) -> str:
    """Drop everything from the continuation tag on (and trailing space the template trimmed)."""
    if final.strip() not in rendered or CONTINUE_TAG.strip() not in rendered:
        raise ValueError("continue_final_message is set but the template dropped part of the final message")
    at = rendered.rindex(CONTINUE_TAG.strip())
    return rendered[:at] if rendered[at : at + len(CONTINUE_TAG)] == CONTINUE_TAG else rendered[:at].rstrip()


def render_chat_template(
    template: str,
    conversations: list[list[dict]],
    *,
    add_generation_prompt: bool = False,
    continue_final_message: bool | str = False,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    **kwargs,
) -> list[str]:
    """Render each conversation as transformers' `render_jinja_template` does (tools as JSON schemas)."""
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot be used together")
    compiled = compile_chat_template(template)
    field = continue_final_message if isinstance(continue_final_message, str) else "content"
    rendered = []
    for chat in conversations:
        if not chat:
            raise ValueError("a conversation is empty")
        chat = _alias_reasoning(_plain(list(chat)))
        final = _tag_final_message(chat, field, template) if continue_final_message else None
        text = compiled.render(
            messages=chat,
            tools=_plain(tools),
            documents=_plain(documents),
            add_generation_prompt=add_generation_prompt,
            **_plain(kwargs),
        )
        rendered.append(_cut_at_tag(text, final) if continue_final_message else text)
    return rendered
