"""Given a name a person typed (camera, zone, line, rule), when it is checked, then it comes back in
NFC if every character is visible and allowed, and is refused in words naming the character as
U+XXXX otherwise: two names that look the same are one name, or one of them is refused."""

from __future__ import annotations

import re

import pytest

from rtdetr_service.analytics.zones import Line, Rule, Zone, ZoneConfig
from rtdetr_service.core.names import checked_name

SQUARE = ((0, 0), (1, 0), (1, 1))


@pytest.mark.parametrize(
    "name",
    ["gate", "front door", "cam-1.a_b:c", "Ⅻ", "Straße", "東京駅", "कक्षा", "z" * 64, "x"],
)
def test_names_people_give_are_accepted_unchanged(name):
    assert checked_name(name) == name


def test_a_decomposed_accent_is_the_composed_name():
    assert checked_name("caf" + "e\u0301") == "café"
    assert checked_name("cafe\u0301") == checked_name("café")
    assert checked_name("e\u0301" * 64) == "é" * 64  # the 64 count after NFC


@pytest.mark.parametrize(
    "name, words",
    [
        ("gate\u200d", "U+200D (ZERO WIDTH JOINER) is not allowed"),
        ("gate\u200c", "U+200C (ZERO WIDTH NON-JOINER) is not allowed"),
        ("\u0301", "U+0301 (COMBINING ACUTE ACCENT) is a combining mark that follows no letter or digit"),
        ("\u0301\u0301", "U+0301 (COMBINING ACUTE ACCENT) is a combining mark"),
        ("gate-\u0301", "U+0301 (COMBINING ACUTE ACCENT) is a combining mark"),
        ("\u202egate", "U+202E (RIGHT-TO-LEFT OVERRIDE) is not allowed"),
        ("ga\u00adte", "U+00AD (SOFT HYPHEN) is not allowed"),
        ("gate\ufeff", "U+FEFF (ZERO WIDTH NO-BREAK SPACE) is not allowed"),
        ("front\u00a0door", "U+00A0 (NO-BREAK SPACE) is not allowed"),
        ("front\u3000door", "U+3000 (IDEOGRAPHIC SPACE) is not allowed"),
        ("front\tdoor", "U+0009 is not allowed"),
        ("gate\n", "U+000A is not allowed"),
        ("gate\U0001f6aa", "U+1F6AA (DOOR) is not allowed"),
        ("gate\ufe0f", "U+FE0F (VARIATION SELECTOR-16) is not allowed"),
        ("gate\u034f", "U+034F (COMBINING GRAPHEME JOINER) is not allowed"),
        ("gate\u3164", "U+3164 (HANGUL FILLER) is not allowed"),
        ("a/b", "U+002F (SOLIDUS) is not allowed"),
        (" gate", "must not start or end with a space"),
        ("gate ", "must not start or end with a space"),
        ("", "1 to 64 characters"),
        ("z" * 65, "1 to 64 characters, this one 65"),
    ],
)
def test_invisible_and_other_characters_are_refused_by_code_point(name, words):
    with pytest.raises(ValueError, match=re.escape(words)) as caught:
        checked_name(name)
    # The refused character is named, never shown: the raw one is what the reader could not see.
    assert str(caught.value).isascii() and str(caught.value).isprintable(), repr(str(caught.value))


def test_the_position_of_the_refused_character_is_given():
    with pytest.raises(ValueError, match=r"\(character 5\)$"):
        checked_name("gate\u200d")


def test_zones_lines_and_rules_are_named_in_nfc_and_refused_by_code_point():
    zone, line = Zone("cafe\u0301", SQUARE), Line("gate", (0, 0), (1, 1))
    rule = Rule("in", "enter", zone="café")
    assert zone.name == "café" and rule.zone == "café"
    assert ZoneConfig((zone,), (line,), (rule,)).rules == (rule,)  # the reference finds the zone
    with pytest.raises(ValueError, match=r"^zone name: U\+200D"):
        Zone("door\u200d", SQUARE)
    with pytest.raises(ValueError, match=r"^line name: U\+0301 .* follows no letter"):
        Line("\u0301", (0, 0), (1, 1))
    with pytest.raises(ValueError, match=r"^rule name: U\+202E"):
        Rule("\u202ein", "enter", zone="café")
    with pytest.raises(ValueError, match=r"^rule 'in': zone name: U\+200C"):
        Rule("in", "enter", zone="café\u200c")


def test_a_decomposed_and_a_composed_zone_are_one_name_used_twice():
    with pytest.raises(ValueError, match="the name is used twice"):
        ZoneConfig.from_dict({"zones": [{"name": "café", "points": SQUARE}, {"name": "cafe\u0301", "points": SQUARE}]})
