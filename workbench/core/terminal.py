"""Printing strings that came from outside (class names, labels, paths) exactly as they are.

Such strings can hold anything a file name or a labels file can: `[bold]` or `[/]` (rich's
markup, which would style the text or stop the command with a MarkupError), `:cat:` (an
emoji code), escape sequences that move the terminal's cursor or clear its screen, and
Unicode direction overrides that show a name reversed. The CLI prints through `PlainConsole`,
which turns all of that off, and display code wraps outside strings in `plain()`, so even a
console that does interpret markup shows them literally.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.text import Text

# C0 and C1 control characters except tab and newline, DEL, and the Unicode bidirectional
# embedding, override and isolate marks: each can make a terminal show other text than the
# string holds.
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: object) -> str:
    """`text` with every character that would act on the terminal written as an escape
    (`\\x1b`, `\\u202e`): what is printed is what the string holds, readable."""
    return _HIDDEN.sub(_escaped, str(text))


def plain(text: object, style: str = "") -> Text:
    """A rich `Text` of `text` as it is: never parsed as markup or emoji codes."""
    return Text(visible(text), style=style)


class PlainConsole(Console):
    """A rich console on which no string is ever markup, an emoji code or a control sequence.

    Markup, emoji codes and highlighting are off for every string it renders (table cells
    and titles included), whatever a caller asks for, and control characters are escaped.
    Styles given as arguments (`style="yellow"`) still apply.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(markup=False, emoji=False, highlight=False)
        super().__init__(**kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        kwargs.update(markup=False, emoji=False, highlight=False)
        return super().render_str(visible(text), **kwargs)
