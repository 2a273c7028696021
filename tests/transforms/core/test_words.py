import re

from tests.conftest import SPACCC, read_text
from transforms.core.words import WORD_RE, sentence_starts, split_words

TRAINING_RE = re.compile(r"[0-9A-Za-zÀ-ÖØ-öø-ÿ]+|[^0-9A-Za-zÀ-ÖØ-öø-ÿ]")


def words(text):
    s, e = split_words(text)
    return [text[a:b] for a, b in zip(s, e)]


def test_split_follows_the_training_regex():
    assert words("Dolor abdominal (3,5 cm).") == [
        "Dolor", "abdominal", "(", "3", ",", "5", "cm", ")", "."]
    assert words("señal T4 œdème α-1") == ["señal", "T4", "œ", "dème", "α", "-", "1"]
    assert words("a\r\nb\tc\u2028d  ") == ["a", "b", "c", "d"]
    assert words("   ") == []


def test_offsets_are_characters_of_the_original_text():
    text = "Fiebre\r\n38,5 ºC y ​tos"
    s, e = split_words(text)
    for a, b in zip(s, e):
        assert not text[a:b].isspace()
    assert text[s[-1]:e[-1]] == "tos"


def test_same_words_as_training_on_every_real_document():
    for path in sorted((SPACCC / "txt").glob("*.txt")):
        text = read_text(path)
        expected = [w for w in TRAINING_RE.findall(text) if not w.isspace()]
        assert words(text) == expected, path.name


def test_sentences_break_at_lines_and_final_punctuation_only():
    text = "Fiebre de 38.5 grados. Tos seca\nsin expectoración. Dr. Pérez"
    s, e = split_words(text)
    w = [text[a:b] for a, b in zip(s, e)]
    firsts = [w[i] for i in sentence_starts(text, s, e)]
    assert firsts == ["Fiebre", "Tos", "sin", "Dr", "Pérez"]


def test_every_kind_of_character_against_the_regex():
    import random

    rng = random.Random(3)
    alphabet = ([chr(c) for c in range(0x3100)] + ["\U0001F600", "\U00010000", "\ud800"]
                + list("aé Ç9\n\t.-"))
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        expected = [(m.start(), m.end()) for m in WORD_RE.finditer(text)]
        s, e = split_words(text)
        assert list(zip(s.tolist(), e.tolist())) == expected


def loop_sentence_starts(text, starts, ends):
    """The rule written word by word, as the docstring says it."""
    out = [0] if len(starts) else []
    for i in range(1, len(starts)):
        gap = text[ends[i - 1]:starts[i]]
        if not gap:
            continue
        if any(c in gap for c in "\n\r\u2028\u2029"):
            out.append(i)
        elif ends[i - 1] - starts[i - 1] == 1 and text[ends[i - 1] - 1] in ".!?":
            out.append(i)
    return out


def test_sentence_starts_on_every_real_document_as_the_rule_says():
    for path in sorted((SPACCC / "txt").glob("*.txt"))[:200]:
        text = read_text(path)
        s, e = split_words(text)
        assert sentence_starts(text, s, e) == loop_sentence_starts(text, s, e), path.name
