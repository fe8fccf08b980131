"""Text normalization, sentence splitting, script runs and the G2P dictionary."""

import re

import pytest

from glmtts import text
from glmtts.errors import ConfigError, InputError


@pytest.mark.parametrize("raw, expected", [
    ("  你好 ，  世界 。 ", "你好，世界。"),
    ("ＧＬＭ－ＴＴＳ　１２３", "GLM-TTS 123"),
    ("Wait...  what?!", "Wait… what?!"),
    ("line one\nline\ttwo\u200b", "line one line two"),
    ("“引号”和‘单引号’", "\"引号\"和'单引号'"),
])
def test_normalize(raw, expected):
    assert text.normalize(raw) == expected


def _squash(s):
    return re.sub(r"\s+", "", s)


def test_split_at_chinese_and_english_sentence_ends():
    src = "今天天气很好。我们去公园吧！你觉得呢？This is one. This is two! Is it three? 最后；结束…"
    chunks = text.split_text(src, max_chars=12)
    assert all(len(c) <= 12 for c in chunks)
    # whole sentences, packed together while they fit
    assert chunks[:2] == ["今天天气很好。", "我们去公园吧！你觉得呢？"]
    assert "This is one." in chunks
    assert _squash("".join(chunks)) == _squash(text.normalize(src))


def test_short_sentences_are_packed_up_to_the_limit():
    chunks = text.split_text("你好。再见。谢谢。", max_chars=80)
    assert chunks == ["你好。再见。谢谢。"]


def test_decimal_point_and_abbreviation_do_not_end_a_sentence():
    assert text.split_text("Pi is 3.14 today. Next.", max_chars=20) == ["Pi is 3.14 today.", "Next."]


def test_overlong_sentence_splits_at_commas_then_by_length_never_mid_word():
    sentence = ("this sentence has many words, and it keeps going on and on without any full stop "
                "for a long long while, then ends here.")
    chunks = text.split_text(sentence, max_chars=30)
    assert len(chunks) > 3 and all(len(c) <= 30 for c in chunks)
    words = set(text.normalize(sentence).replace(",", " ").replace(".", " ").split())
    for c in chunks:
        for w in c.replace(",", " ").replace(".", " ").split():
            assert w in words, "a word was cut: %r in %r" % (w, c)
    assert _squash("".join(chunks)) == _squash(text.normalize(sentence))


def test_overlong_chinese_without_punctuation_splits_by_length():
    chunks = text.split_text("长" * 50, max_chars=20)
    assert [len(c) for c in chunks] == [20, 20, 10]


def test_empty_text():
    assert text.split_text("   \n ") == []
    with pytest.raises(InputError, match="empty after normalization"):
        text.require_text(" 。，  ")


def test_script_runs_for_mixed_text():
    runs = text.script_runs("我喜欢 Python 编程, it is fun。")
    assert [s for s, _ in runs] == ["zh", "en", "zh", "en"]
    assert "".join(p for _, p in runs) == "我喜欢 Python 编程, it is fun。"
    assert text.script_runs("Hello world") == [("en", "Hello world")]
    assert text.script_runs("zhang3 da4") == [("zh", "zhang3 da4")]


def test_count_syllables():
    assert text.count_syllables("你好世界") == 4
    assert text.count_syllables("hello beautiful world") == 6
    assert text.count_syllables("") == 0


def test_default_g2p_dict_loads_and_applies_longest_match_first():
    entries = text.load_g2p_dict()
    assert entries["长大"] == "<|ZH|><|ANG3|><|D|><|A4|>"
    out = text.apply_g2p("乡音无改鬓毛衰，他长大了", entries)
    assert out == "乡音无改鬓毛<|C|><|UEI1|>，他<|ZH|><|ANG3|><|D|><|A4|>了"
    assert text.phoneme_tokens_to_pinyin(out).split() == ["乡音无改鬓毛", "cui1", "，他", "zhang3", "da4", "了"]


def test_g2p_dict_path_and_later_lines_override(tmp_path):
    path = tmp_path / "dict.jsonl"
    path.write_text('{"行": "<|X|><|ING2|>"}\n\n{"行": "<|H|><|ANG2|>", "重": "<|ZH|><|ONG4|>"}\n', encoding="utf-8")
    entries = text.load_g2p_dict(str(path))
    assert entries == {"行": "<|H|><|ANG2|>", "重": "<|ZH|><|ONG4|>"}


@pytest.mark.parametrize("line, why", [
    ('{"长大": "<|ZH|><|ANG3|>"', "not valid JSON"),
    ('["长大", "zhang3"]', "expected an object"),
    ('{"长大": 3}', "non-empty string"),
    ('{"长大": "zhang da"}', "outside <|...|> phoneme tokens"),
])
def test_bad_g2p_line_names_file_and_line(tmp_path, line, why):
    path = tmp_path / "G2P_replace_dict.jsonl"
    path.write_text('{"衰": "<|SH|><|UAI1|>"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        text.load_g2p_dict(str(path))
    assert "%s line 2" % path in str(err.value)
    assert why in str(err.value)


def test_missing_g2p_dict(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        text.load_g2p_dict(str(tmp_path / "nope.jsonl"))
