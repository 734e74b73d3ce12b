"""Chat rendering for local models in which message text can never become a control token.

``tokenizer.apply_chat_template(..., tokenize=True)`` renders the conversation to one string and tokenizes it with
special tokens parsed, so a user prompt or a model answer that contains ``<|im_end|>\\n<|im_start|>user`` is read as
a real end of turn and a real new turn: text could forge turns in the critic's or the labeler's context.

:func:`encode_chat` renders the template with a placeholder in place of each message's text, tokenizes the
template's own pieces as usual (special tokens parsed) and each message's text with ``split_special_tokens=True``
(special-token strings become the ordinary tokens of their characters). The template is also rendered with the real
text, and the result must be the template pieces joined with the text (verbatim or stripped, as templates that trim
do); then the token ids equal what the template would give for text without special-token strings.
"""

from __future__ import annotations

import re
from typing import Any

from cai.backends.base import Conversation

_MARK = "\ue000cai-message-{}\ue001"
_MARK_RE = re.compile("\ue000cai-message-(\\d+)\ue001")


class ChatEncoder:
    """Encodes conversations with one tokenizer; counts conversations whose template could not be aligned."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        added = {str(t): i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        for t in getattr(tokenizer, "all_special_tokens", []):
            if t not in added:
                i = tokenizer.convert_tokens_to_ids(t)
                if isinstance(i, int) and i >= 0:
                    added[t] = i
        self._special_ids = added
        alts = "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) or "(?!x)x"
        self._special_re = re.compile(f"({alts})")
        #: Conversations whose rendered template did not match the placeholder rendering (encoded verbatim anyway).
        self.unaligned = 0

    def _render(self, conv: Conversation, prefill: bool) -> str:
        return self.tok.apply_chat_template(
            conv, add_generation_prompt=not prefill, continue_final_message=prefill, tokenize=False
        )

    def pieces(self, conv: Conversation) -> list[tuple[str, bool]]:
        """The rendered conversation as ``(text, is_message_text)`` pieces, in order."""
        prefill = bool(conv) and conv[-1]["role"] == "assistant"
        marked = [dict(m, content=_MARK.format(i)) for i, m in enumerate(conv)]
        split = _MARK_RE.split(self._render(marked, prefill))
        template, order = split[0::2], [int(i) for i in split[1::2]]
        real = self._render(conv, prefill)
        for variant in (lambda t: t, str.strip):
            texts = [variant(conv[i]["content"]) for i in order]
            if "".join(t + x for t, x in zip(template, texts + [""])) == real:
                break
        else:
            self.unaligned += 1
            texts = [conv[i]["content"] for i in order]
        out: list[tuple[str, bool]] = []
        for t, x in zip(template, texts + [None]):
            if t:
                out.append((t, False))
            if x:
                out.append((x, True))
        return out

    def encode(self, conv: Conversation, extra_text: str = "") -> list[int]:
        """Token ids of the rendered conversation; ``extra_text`` (also plain text) is appended to the last piece.

        The template's special tokens are cut out of the template pieces; the text between them (template text and
        message text together) is tokenized in one go with ``split_special_tokens=True``. That is exactly how the
        tokenizer treats a rendered string, except that special-token strings inside message text stay text.
        With ``extra_text``, it and the last message's text are tokenized together, so merges at their boundary are
        the ones the model would produce when writing that continuation.
        """
        parts = self.pieces(conv)
        if extra_text:
            parts.append((extra_text, True))
        ids: list[int] = []
        buf: list[str] = []

        def flush() -> None:
            if buf:
                ids.extend(self.encode_text("".join(buf)))
                buf.clear()

        for text, plain in parts:
            if plain:
                buf.append(text)
                continue
            for k, seg in enumerate(self._special_re.split(text)):
                if k % 2:
                    flush()
                    ids.append(self._special_ids[seg])
                elif seg:
                    buf.append(seg)
        flush()
        return ids

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text (special-token strings stay text)."""
        return list(self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
