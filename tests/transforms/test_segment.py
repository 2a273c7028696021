"""Documents -> windows with the real XLM-R tokenizer: every word predicted once."""

import numpy as np

from tests.conftest import SPACCC, read_text
from transforms.core.records import Document
from transforms.core.method import Method
from transforms.segment import SegmentDoFn, reference_windows, word_windows
from transforms.core.spec import TaskSpec
from transforms.core.words import split_words


def assert_windows_predict_each_word_once(text, tokenizer, windows, max_tokens=512):
    s, e = split_words(text)
    predicted = windows.starts
    assert sorted(predicted.tolist()) == sorted(set(predicted.tolist()))
    kept = {int(a) for a, b in zip(s, e) if tokenizer([text[a:b]], is_split_into_words=True,
                                                      add_special_tokens=False).input_ids}
    assert set(predicted.tolist()) == kept
    for k in range(len(windows)):
        ids = windows.window_ids(k)
        assert len(ids) <= max_tokens
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    for k in range(min(3, len(windows))):  # each position is the word's first sub-word
        a, b = windows.word_bounds[k], windows.word_bounds[k + 1]
        for pos, s0, e0 in list(zip(windows.window_positions(k), windows.starts[a:b],
                                    windows.ends[a:b]))[:50]:
            first = tokenizer([text[s0:e0]], is_split_into_words=True,
                              add_special_tokens=False).input_ids[0]
            assert windows.window_ids(k)[pos] == first


def test_document_of_5000_words(tokenizer):
    texts, n = [], 0
    for path in sorted((SPACCC / "txt").glob("*.txt")):
        texts.append(read_text(path))
        n += len(split_words(texts[-1])[0])
        if n >= 5000:
            break
    text = "\n".join(texts)
    windows = word_windows(text, tokenizer)
    assert len(windows) > 5
    assert_windows_predict_each_word_once(text, tokenizer, windows)
    # Sentences are packed: windows are well filled, not one per line.
    assert windows.lengths.mean() > 300


def test_single_sentence_of_2000_tokens_is_cut_with_overlap(tokenizer):
    two_longest = sorted((SPACCC / "txt").glob("*.txt"), key=lambda f: f.stat().st_size)[-2:]
    text = " ".join(read_text(f) for f in two_longest)
    for mark in "\n.?!":
        text = text.replace(mark, ",")
    s, e = split_words(text)
    ids = tokenizer([text[a:b] for a, b in zip(s, e)], is_split_into_words=True,
                    add_special_tokens=False, verbose=False).input_ids
    assert len(ids) >= 2000
    windows = word_windows(text, tokenizer, max_tokens=512, overlap=128)
    assert len(windows) >= 5
    assert_windows_predict_each_word_once(text, tokenizer, windows)
    assert (windows.lengths[:-1] >= 400).all()


def test_pathological_word_is_capped(tokenizer):
    text = "dolor " + "x9" * 3000 + " abdominal"
    windows = word_windows(text, tokenizer, max_tokens=64, overlap=16)
    assert_windows_predict_each_word_once(text, tokenizer, windows, max_tokens=64)



def test_reference_windows_stride_and_every_word(tokenizer):
    text = read_text(sorted((SPACCC / "txt").glob("*.txt"), key=lambda f: f.stat().st_size)[-1])
    windows = reference_windows(text, tokenizer)
    assert len(windows) >= 2 and (windows.lengths[:-1] == 512).all()
    for k in range(len(windows)):
        a, b = windows.word_bounds[k], windows.word_bounds[k + 1]
        for s, e in zip(windows.starts[a:b], windows.ends[a:b]):
            assert 0 <= s < e <= len(text)
    assert windows.starts.min() == 0 or text[:windows.starts.min()].isspace()


def test_tasks_sharing_a_tokenizer_share_one_segmentation(tokenizer, monkeypatch):
    from tests.conftest import TOKENIZER

    def spec(name, key):
        return TaskSpec(name=name, kind="hf", model="m", languages=("es",),
                        tokenizer=str(TOKENIZER), heads={"es": (None,)},
                        labels={None: ("O", "B-X", "I-X")}, tokenizer_key=key)

    fn = SegmentDoFn({"a": spec("a", "k1"), "b": spec("b", "k1"), "c": spec("c", "k2")},
                     Method())
    fn.setup()
    calls = []
    real = fn.segment
    monkeypatch.setattr(fn, "segment", lambda text, key: calls.append(key) or real(text, key))
    doc = Document("k", "d", "Fiebre alta y tos seca.", "s", lang="es", tasks=("a", "b", "c"))
    (work,) = fn.process(doc)
    assert calls == ["k1", "k2"] and set(work.windows) == {"k1", "k2"}
    assert not work.failures


def test_remembered_sub_words_are_the_tokenizers_own(tokenizer):
    from transforms.segment import SubWords

    shared = SubWords(tokenizer)
    assert shared._cached  # XLM-R's pre-split words do not depend on their neighbours
    for path in sorted((SPACCC / "txt").glob("*.txt"))[:60]:
        text = read_text(path)
        s, e = split_words(text)
        words = [text[a:b] for a, b in zip(s, e)]
        enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
        ids, counts = shared(words)
        assert ids.tolist() == enc["input_ids"]
        assert counts.tolist() == np.bincount(enc.word_ids(), minlength=len(words)).tolist()
    small = SubWords(tokenizer, capacity=300)  # bounded: it forgets, and stays right
    for path in sorted((SPACCC / "txt").glob("*.txt"))[:5]:
        text = read_text(path)
        s, e = split_words(text)
        words = [text[a:b] for a, b in zip(s, e)]
        assert small(words)[0].tolist() == shared(words)[0].tolist()
        assert len(small._ids) <= max(300, len(set(words)))


def test_the_light_tokenizer_gives_the_same_windows(tokenizer):
    from tests.conftest import TOKENIZER
    from transforms.segment import RustTokenizer, load_tokenizer

    light = load_tokenizer(str(TOKENIZER))
    assert isinstance(light, RustTokenizer)
    assert (light.cls_token_id, light.sep_token_id) == (tokenizer.cls_token_id,
                                                        tokenizer.sep_token_id)
    for path in sorted((SPACCC / "txt").glob("*.txt"))[:20]:
        text = read_text(path)
        a, b = word_windows(text, light, 128, 32), word_windows(text, tokenizer, 128, 32)
        assert a.ids.tolist() == b.ids.tolist() and a.positions.tolist() == b.positions.tolist()
    assert not isinstance(load_tokenizer(str(TOKENIZER), full=True), RustTokenizer)
