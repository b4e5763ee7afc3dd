"""Names people give cameras, zones, lines and rules: what they may hold, and their one spelling.

A name is taken in Unicode NFC (so `e` + U+0301 and `é` are one name) and, after that, holds only
letters and digits (categories L*, N*), combining marks (M*) that follow a letter or digit, and
space . _ : - ; it is 1–64 characters long and neither starts nor ends with a space. Anything
that renders as nothing or as something else is refused: format characters (ZWJ, ZWNJ, bidi
controls, soft hyphen), controls, spaces other than U+0020, symbols (emoji), and the letters and
marks Unicode marks as default-ignorable (Hangul fillers, variation selectors, U+034F). A refusal
names the character as U+XXXX, never raw: the raw one is what a reader could not see.
"""

from __future__ import annotations

import unicodedata

MAX_NAME = 64
_PUNCTUATION = frozenset(" ._:-")

# Letters and marks in Unicode's Default_Ignorable_Code_Point: drawn as nothing, so "gate" and
# "gate" + one of them look the same. (The other default-ignorables are Cf or unassigned: refused anyway.)
_IGNORABLE = (
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x115F, 0x1160),  # HANGUL CHOSEONG / JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ / AA
    (0x180B, 0x180D),  # MONGOLIAN FREE VARIATION SELECTORS ONE..THREE
    (0x180F, 0x180F),  # MONGOLIAN FREE VARIATION SELECTOR FOUR
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTORS 1..16
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xE0100, 0xE01EF),  # VARIATION SELECTORS 17..256
)


def _shown(ch: str) -> str:
    """U+200D (ZERO WIDTH JOINER): how a refused character is named in words."""
    label = unicodedata.name(ch, None)
    return f"U+{ord(ch):04X}" + (f" ({label})" if label else "")


def _ignorable(ch: str) -> bool:
    return any(low <= ord(ch) <= high for low, high in _IGNORABLE)


def _refusal(ch: str, before: str | None) -> str | None:
    """Why `ch` may not stand after `before` (None: at the start), or None when it may."""
    if ch in _PUNCTUATION:
        return None
    kind = unicodedata.category(ch)
    if _ignorable(ch) or kind[0] not in "LNM":
        return f"{_shown(ch)} is not allowed: a name holds letters, digits and ' ._:-' only"
    if kind[0] == "M" and (before is None or unicodedata.category(before)[0] not in "LNM"):
        return f"{_shown(ch)} is a combining mark that follows no letter or digit"
    return None


def checked_name(raw: str) -> str:
    """`raw` in NFC when it is a valid name; otherwise ValueError saying why, characters as U+XXXX."""
    name = unicodedata.normalize("NFC", raw)
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError(f"a name has 1 to {MAX_NAME} characters, this one {len(name)}")
    if name[0] == " " or name[-1] == " ":
        raise ValueError("a name must not start or end with a space")
    before: str | None = None
    for position, ch in enumerate(name, start=1):
        problem = _refusal(ch, before)
        if problem is not None:
            raise ValueError(f"{problem} (character {position})")
        before = ch
    return name
