"""Every model family's chat template, each written by :func:`chat_template` from its :class:`ChatFormat`.

A chat template renders a conversation the way the family's own code writes its prompt. They all share one turn
loop: per role a text before and after the message's content, the assistant's words and end-of-turn token inside
``{% generation %}`` (so that ``return_assistant_tokens_mask=True``, TRL's assistant-only loss, marks exactly what
the model must learn), an error for a role the family has not got, and the generation prompt. A family is a handful
of strings; one with its own rules for the whole conversation (Cobra: one image, first, whatever block order)
adds them as a preamble.

Image and video blocks become one placeholder each (``<image>`` / ``<video>`` unless the family names others); the
processor expands each into the visual tokens of its layout.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CHAT_TEMPLATE",
    "CHATML",
    "COBRA_CHAT_TEMPLATE",
    "IMAGE_TOKEN",
    "LONGLLAVA",
    "LONGLLAVA_CHAT_TEMPLATE",
    "QWEN2VL",
    "QWEN2VL_CHAT_TEMPLATE",
    "VAMBA",
    "VAMBA_CHAT_TEMPLATE",
    "VAMBA_IMAGE_TOKEN",
    "VAMBA_VIDEO_TOKEN",
    "VIDEO_TOKEN",
    "ChatFormat",
    "chat_template",
    "cobra_chat_format",
    "cobra_chat_template",
    "jinja_literal",
    "render_content_macro",
]

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
# Qwen2-VL's pads: the processor's 'qwen2vl' layout writes <|vision_start|>, one pad per visual token, <|vision_end|>.
VAMBA_IMAGE_TOKEN = "<|image_pad|>"
VAMBA_VIDEO_TOKEN = "<|video_pad|>"

# The message's content rendered by the macro below (every family with content blocks).
_RENDERED_CONTENT = "render_content(message['content'])"


def render_content_macro(image: str = IMAGE_TOKEN, video: str = VIDEO_TOKEN) -> str:
    """Jinja macro `render_content(content)`: a message's content, a string or a list of blocks, where each image or
    video block becomes `image` / `video` (one placeholder each by default, which the processor later expands)."""
    return (
        r"""{%- macro render_content(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is mapping -%}
        {{- raise_exception('Message content must be a string or a list of content blocks.') -}}
    {%- elif content is not none -%}
        {%- for block in content -%}
            {%- if block is not mapping -%}
                {{- raise_exception('Content blocks must be dicts with a "type" key.') -}}
            {%- elif block['type'] == 'text' -%}
                {{- block['text'] -}}
            {%- elif block['type'] == 'image' -%}
                {{- '"""
        + image
        + r"""' -}}
            {%- elif block['type'] == 'video' -%}
                {{- '"""
        + video
        + r"""' -}}
            {%- else -%}
                {{- raise_exception('Unsupported content block type: ' ~ block['type']) -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
"""
    )


def jinja_literal(text: str) -> str:
    """`text` as a Jinja string literal (Jinja reads backslash escapes as Python does)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


@dataclass(frozen=True)
class ChatFormat:
    """How one family writes a conversation. Texts are plain strings; `content`, `assistant_content`, `preamble` and
    `turn_setup` are Jinja.

    A user turn is ``user[0] + content + user[1]`` (preceded by `user_separator` unless it is the first message), a
    system turn ``system[0] + content + system[1]`` (``system=None``: the family has no system role), an assistant
    turn ``assistant[0]``, then ``assistant_content + assistant[1]`` inside ``{% generation %}``, then
    ``assistant[2]``. With ``add_generation_prompt`` the template ends in `generation_prompt` (None: the family's
    user turn already ends with the assistant's cue).
    """

    comment: str  # the template's first line, saying what it is
    user: tuple[str, str]
    assistant: tuple[str, str, str]
    system: tuple[str, str] | None
    generation_prompt: str | None
    preamble: str = ""  # Jinja written before the turns: the content macro, a default system prompt, checks
    content: str = _RENDERED_CONTENT  # a message's content, as a Jinja expression
    assistant_content: str | None = None  # the assistant's content (default: `content`)
    turn_setup: str = ""  # Jinja at the top of every turn (e.g. collecting the text of its blocks)
    user_separator: str = ""


def _expression(*parts: str) -> str:
    return " + ".join(part for part in parts if part)


def _text(text: str) -> str:
    return jinja_literal(text) if text else ""


def chat_template(chat_format: ChatFormat) -> str:
    """The Jinja chat template of `chat_format`."""
    f = chat_format
    user_open = _text(f.user[0])
    if f.user_separator:
        user_open = _expression(f"({jinja_literal(f.user_separator)} if loop.index0 > 0 else '')", user_open)
    roles = "system, user or assistant" if f.system is not None else "user or assistant"
    lines = ["{#- " + f.comment + " -#}\n" + f.preamble + "{%- for message in messages -%}"]
    if f.turn_setup:
        lines.append(f.turn_setup.rstrip("\n"))
    lines += [
        "    {%- if message['role'] == 'user' -%}",
        "        {{- " + _expression(user_open, f.content, _text(f.user[1])) + " -}}",
        "    {%- elif message['role'] == 'assistant' -%}",
    ]
    if f.assistant[0]:
        lines.append("        {{- " + _text(f.assistant[0]) + " -}}")
    lines += [
        "        {%- generation -%}",
        "            {{- " + _expression(f.assistant_content or f.content, _text(f.assistant[1])) + " -}}",
        "        {%- endgeneration -%}",
    ]
    if f.assistant[2]:
        lines.append("        {{- " + _text(f.assistant[2]) + " -}}")
    if f.system is not None:
        lines += [
            "    {%- elif message['role'] == 'system' -%}",
            "        {{- " + _expression(_text(f.system[0]), f.content, _text(f.system[1])) + " -}}",
        ]
    lines += [
        "    {%- else -%}",
        "        {{- raise_exception('Unsupported role: ' ~ message['role'] ~ ' (use " + roles + ").') -}}",
        "    {%- endif -%}",
        "{%- endfor -%}",
    ]
    if f.generation_prompt is not None:
        lines += [
            "{%- if add_generation_prompt -%}",
            "    {{- " + _text(f.generation_prompt) + " -}}",
            "{%- endif -%}",
        ]
    return "\n".join(lines) + "\n"


# -- ChatML (the tiny tokenizer's template, the llava layout's) and Qwen2-VL / Vamba (ChatML with Qwen's default
# system prompt)


def _chatml(comment: str, image: str = IMAGE_TOKEN, video: str = VIDEO_TOKEN, default_system: str | None = None
            ) -> ChatFormat:
    preamble = render_content_macro(image=image, video=video)
    if default_system is not None:
        system_turn = jinja_literal(f"<|im_start|>system\n{default_system}<|im_end|>\n")
        preamble += (
            "{%- if messages and messages[0]['role'] != 'system' -%}\n"
            f"    {{{{- {system_turn} -}}}}\n"
            "{%- endif -%}\n"
        )
    return ChatFormat(
        comment=comment,
        preamble=preamble,
        user=("<|im_start|>user\n", "<|im_end|>\n"),
        assistant=("<|im_start|>assistant\n", "<|im_end|>", "\n"),
        system=("<|im_start|>system\n", "<|im_end|>\n"),
        generation_prompt="<|im_start|>assistant\n",
    )


QWEN_SYSTEM_PROMPT = "You are a helpful assistant."
CHATML = _chatml("ChatML with image/video content blocks; {% generation %} marks what the assistant says.")
QWEN2VL = _chatml(
    "Qwen ChatML with image/video content blocks; {% generation %} marks what the assistant says.",
    default_system=QWEN_SYSTEM_PROMPT,
)
# Vamba (Qwen2-VL ChatML with Qwen's default system prompt): an image block becomes one <|image_pad|>, a video block
# one <|video_pad|>; without the pads this is the reference's prompt exactly (its visual tokens are not in the text).
VAMBA = _chatml(
    "Qwen2-VL ChatML (Vamba); the processor writes <|vision_start|>, the pads and <|vision_end|>.",
    image=VAMBA_IMAGE_TOKEN, video=VAMBA_VIDEO_TOKEN, default_system=QWEN_SYSTEM_PROMPT,
)

# -- LongLLaVA's chat format, the one template for every LongLLaVA processor (converted checkpoints and
# `chat_template="longllava"`): each turn opens with <|startoftext|> and a role tag, the assistant's turn ends with
# <|endoftext|>. As in LongLLaVA's chat code an image block is followed by a newline and a video block is not (its
# question follows `</vid>` directly); the processor's layout writes the <img>/<vid> markers around each
# placeholder. The reference has no system role: a system message is written as a plain preamble line.
LONGLLAVA = ChatFormat(
    comment="LongLLaVA (Jamba) chat format; the processor writes the <img>/<vid> markers.",
    preamble=render_content_macro(image=r"<image>\n", video=r"<video>"),
    user=("<|startoftext|><|User|>\n", "\n"),
    assistant=("<|startoftext|><|Assistant|>\n", "<|endoftext|>", ""),
    system=("", "\n"),
    generation_prompt="<|startoftext|><|Assistant|>\n",
)

# -- Cobra's prompt builders (`llm_backbone_id` ending in "zephyr": Zephyr's chat format; other Mamba LMs: "In: /
# Out:"). Cobra prepends the image's patch features to the whole sequence (there is no BOS), so the placeholder goes
# first, whatever block order the messages use. Each turn's text is stripped with "<image>" removed, as the prompt
# builders do; roles alternate user / assistant, starting with the user; there is no system prompt.
_COBRA_CHECKS = r"""{%- set ns = namespace(images=0, text='') -%}
{%- for message in messages -%}
    {%- if message['role'] not in ['user', 'assistant'] -%}
        {{- raise_exception('Cobra has no ' ~ message['role'] ~ ' role: its prompt builder takes user and '
                            ~ 'assistant turns only.') -}}
    {%- endif -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('Cobra conversations alternate user / assistant turns, starting with the user.') -}}
    {%- endif -%}
    {%- if message['content'] is not string and message['content'] is not none -%}
        {%- for block in message['content'] -%}
            {%- if block['type'] == 'image' -%}{%- set ns.images = ns.images + 1 -%}
            {%- elif block['type'] == 'video' -%}{{- raise_exception('Cobra takes images, not videos.') -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endfor -%}
{%- if ns.images > 1 -%}{{- raise_exception('Cobra takes at most one image per conversation.') -}}{%- endif -%}
{{- '<image>' if ns.images == 1 else '' -}}
"""
# A turn's text: its text blocks joined, "<image>" removed, stripped.
_COBRA_TURN_TEXT = r"""    {%- set ns.text = '' -%}
    {%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}
    {%- elif message['content'] is not none -%}
        {%- for block in message['content'] -%}
            {%- if block['type'] == 'text' -%}{%- set ns.text = ns.text + block['text'] -%}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- set text = ns.text | replace('<image>', '') | trim -%}
"""


def cobra_chat_format(llm_backbone_id: str = "mamba-2.8b-zephyr") -> ChatFormat:
    """Cobra's prompt builder for `llm_backbone_id`: the user turn ends with the assistant's cue, an empty answer
    is written as one space, every answer ends with GPT-NeoX's <|endoftext|>."""
    style = "zephyr" if llm_backbone_id.endswith("zephyr") else "mamba"
    user = ("<|user|>\n", "<|endoftext|>\n<|assistant|>\n") if style == "zephyr" else ("In: ", "\nOut: ")
    return ChatFormat(
        comment=f"Cobra ({style} prompt builder).",
        preamble=_COBRA_CHECKS,
        turn_setup=_COBRA_TURN_TEXT,
        content="text",
        assistant_content="(text if text != '' else ' ')",
        user=user,
        user_separator="\n",
        assistant=("", "<|endoftext|>", ""),
        system=None,
        generation_prompt=None,
    )


def cobra_chat_template(llm_backbone_id: str = "mamba-2.8b-zephyr") -> str:
    """The chat template that renders what Cobra's prompt builder for `llm_backbone_id` writes."""
    return chat_template(cobra_chat_format(llm_backbone_id))


CHAT_TEMPLATE = chat_template(CHATML)
QWEN2VL_CHAT_TEMPLATE = chat_template(QWEN2VL)
VAMBA_CHAT_TEMPLATE = chat_template(VAMBA)
LONGLLAVA_CHAT_TEMPLATE = chat_template(LONGLLAVA)
# Cobra-3B's template (Zephyr chat format with GPT-NeoX's end-of-text token).
COBRA_CHAT_TEMPLATE = cobra_chat_template()
