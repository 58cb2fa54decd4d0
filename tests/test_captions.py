"""clean_caption: what is left of a model's answer is one clean line of caption text, or an AnswerError."""

from __future__ import annotations

import pytest

from captiond.captions import clean_caption
from captiond.errors import AnswerError

DOG = "A dog runs on a beach."


def table(cases: dict[str, tuple[str, str]]) -> list[object]:
    """Turn {readable id: (raw answer, expected caption)} into pytest params."""
    return [pytest.param(raw, expected, id=name) for name, (raw, expected) in cases.items()]


THINKING = {
    "think block": ("<think>hmm, a dog?</think>A dog runs on a beach.", DOG),
    "think block over lines": ("<think>\nThe image shows\na dog.\n</think>\n\nA dog runs on a beach.", DOG),
    "thinking tag, upper case": ("<THINKING>a dog</THINKING>A dog runs on a beach.", DOG),
    "two think blocks": ("<think>a</think>A dog runs<think>b</think> on a beach.", DOG),
    "unterminated opening tag": ("A dog runs on a beach.<think>still thinking and never stops", DOG),
    "lone closing tag after the reasoning": ("The user wants a caption. It is a dog.</think>A dog runs on a beach.",
                                              DOG),
    "think then caption with label and bold": (
        "<think>The image shows a dog.</think>\n\nCaption: **A dog runs on a beach.**", DOG),
}

PREAMBLES = {
    "sure, here is a caption": ("Sure! Here is a caption: A dog runs on a beach.", DOG),
    "caption label": ("Caption: A dog runs on a beach.", DOG),
    "here's a one-sentence description": ("Here's a one-sentence description of the image: A dog runs on a beach.",
                                          DOG),
    "certainly, description": ("Certainly! Description: A dog runs on a beach.", DOG),
    "preamble on its own line, quoted caption": (
        "Sure! Here's a caption for the image:\n\n\"A dog runs on a beach.\"", DOG),
    "bold caption label": ("**Caption:** A dog runs on a beach.", DOG),
}

LEGITIMATE_STARTS = {
    "here a dog sleeps": ("Here a dog sleeps on a sofa.", "Here a dog sleeps on a sofa."),
    "here is a dog": ("Here is a dog sleeping on a sofa.", "Here is a dog sleeping on a sofa."),
    "here are two dogs": ("Here are two dogs playing in the snow.", "Here are two dogs playing in the snow."),
    "this is a description of ... without colon": (
        "This is a description of a beach at sunset.", "This is a description of a beach at sunset."),
    "great danes": ("Great Danes run on a beach.", "Great Danes run on a beach."),
    "sure-footed goats": ("Sure-footed goats climb a rocky cliff.", "Sure-footed goats climb a rocky cliff."),
    "okapi": ("Okapi grazing in a forest.", "Okapi grazing in a forest."),
}

MARKDOWN = {
    "bold and italics": ("**A dog** runs on a *beach*.", DOG),
    "underscore bold": ("__A dog__ runs on a beach.", DOG),
    "heading": ("### A dog runs on a beach.", DOG),
    "dash bullet": ("- A dog runs on a beach.", DOG),
    "star bullet": ("* A dog runs on a beach.", DOG),
    "numbered item": ("1. A dog runs on a beach.", DOG),
    "code fence": ("```\nA dog runs on a beach.\n```", DOG),
    "code fence with language": ("```text\nA dog runs on a beach.\n```", DOG),
    "inline code": ("A `dog` runs on a beach.", DOG),
    "link": ("A [dog](https://example.com/rex) runs on a beach.", DOG),
    "snake_case word is left alone": ("A sign reads snake_case_name.", "A sign reads snake_case_name."),
}

QUOTES = {
    "straight double": ('"A dog runs on a beach."', DOG),
    "straight single": ("'A dog runs on a beach.'", DOG),
    "curly double": ("“A dog runs on a beach.”", DOG),
    "curly single": ("‘A dog runs on a beach.’", DOG),
    "guillemets": ("«A dog runs on a beach.»", DOG),
    "german low-high": ("„A dog runs on a beach.“", DOG),
    "quotes inside are kept": ('A sign says "Beware of the dog".', 'A sign says "Beware of the dog".'),
    "two quoted parts are kept": ('"Rex" and "Bella" play.', '"Rex" and "Bella" play.'),
}

ONE_LINE = {
    "newlines": ("A dog\nruns\r\non a\tbeach.", DOG),
    "blank lines": ("A dog runs\n\n\non a beach.", DOG),
    "repeated spaces": ("A  dog   runs on    a beach.", DOG),
    "control characters": ("A dog\x00runs\x1b on a\x7fbeach.", DOG),
    "unicode line separator": ("A dog\u2028runs on a\u2029beach.", DOG),
    "byte order mark": ("\ufeffA dog runs on a beach.", DOG),
    "surrounding whitespace": ("  \n A dog runs on a beach. \n ", DOG),
    "nfc: combining accent": ("Cafe\u0301 tables on a square.", "Café tables on a square."),
    "nfc: decomposed umlaut": ("Mu\u0308nchen at night.", "München at night."),
    "tag-like text after a newline": ("A dog runs on a beach.\n-Tag=value", "A dog runs on a beach. -Tag=value"),
    "several tag-like lines": ("A dog runs on a beach.\n-Caption=x\n-XMP-dc:Title=y",
                               "A dog runs on a beach. -Caption=x -XMP-dc:Title=y"),
    "emoji with zero-width joiners": ("A family 👨‍👩‍👧 on a beach.", "A family 👨‍👩‍👧 on a beach."),
}


@pytest.mark.parametrize(("raw", "expected"), table(THINKING))
def test_thinking_is_removed(raw: str, expected: str) -> None:
    assert clean_caption(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), table(PREAMBLES))
def test_preambles_are_removed(raw: str, expected: str) -> None:
    assert clean_caption(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), table(LEGITIMATE_STARTS))
def test_captions_that_only_look_like_preambles_are_kept_intact(raw: str, expected: str) -> None:
    assert clean_caption(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), table(MARKDOWN))
def test_markdown_is_removed(raw: str, expected: str) -> None:
    assert clean_caption(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), table(QUOTES))
def test_wrapping_quotes_are_removed(raw: str, expected: str) -> None:
    assert clean_caption(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), table(ONE_LINE))
def test_the_caption_is_one_normalised_line(raw: str, expected: str) -> None:
    caption = clean_caption(raw)

    assert caption == expected
    assert "\n" not in caption and "\r" not in caption


THREE_SENTENCES = "A dog runs on a beach. It chases a red ball across the sand. The sun sets behind the waves."
NO_SENTENCE_END = "a dog runs on a long sandy beach while the sun sets behind the waves and gulls circle overhead"
SHORTENED = {
    "fits: unchanged": (THREE_SENTENCES, 200, THREE_SENTENCES),
    "exactly the limit: unchanged": (DOG, len(DOG), DOG),
    "cut after the first sentence": (THREE_SENTENCES, 40, DOG),
    "cut after the second sentence": (
        THREE_SENTENCES, 70, "A dog runs on a beach. It chases a red ball across the sand."),
    "no sentence end: cut at a word": (NO_SENTENCE_END, 30, "a dog runs on a long sandy…"),
    "sentence end too early: cut at a word": (
        "Wow. " + NO_SENTENCE_END, 40, "Wow. a dog runs on a long sandy beach…"),
    "one long word": ("Supercalifragilisticexpialidocious", 10, "Supercali…"),
}


@pytest.mark.parametrize(("raw", "max_length", "expected"),
                         [pytest.param(*case, id=name) for name, case in SHORTENED.items()])
def test_overlong_captions_are_cut_at_a_sentence_or_word(raw: str, max_length: int, expected: str) -> None:
    caption = clean_caption(raw, max_length)

    assert caption == expected
    assert len(caption) <= max_length


NO_CAPTION = {
    "empty": "",
    "whitespace": "  \n\t ",
    "only punctuation": "...!?",
    "only quotes": '""',
    "only markdown": "**  **",
    "empty code fence": "```\n```",
    "only a think block": "<think>It is a dog on a beach.</think>",
    "only an unterminated think": "<think>It is a dog on a beach.",
    "only a preamble": "Sure! Here is a caption:",
}


@pytest.mark.parametrize("raw", NO_CAPTION.values(), ids=NO_CAPTION.keys())
def test_an_answer_without_a_caption_raises_answer_error(raw: str) -> None:
    with pytest.raises(AnswerError) as raised:
        clean_caption(raw)

    assert "no caption" in str(raised.value)
    assert not raised.value.transient
