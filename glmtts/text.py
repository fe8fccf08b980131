"""Text before synthesis: normalization, splitting long text into sentence chunks,
script segmentation (CJK vs Latin runs) and the G2P replacement dictionary.

The dictionary uses the official GLM-TTS ``configs/G2P_replace_dict.jsonl`` format: one
JSON object per line mapping a word (or phrase) to phoneme tokens, e.g.
``{"长大": "<|ZH|><|ANG3|><|D|><|A4|>"}`` (initial, then final + tone 1-5). Lines are
merged in order, later lines override earlier ones; blank lines are skipped.
"""

import json
import logging
import os
import re
import unicodedata

from .errors import ConfigError, InputError

log = logging.getLogger(__name__)

DEFAULT_G2P_DICT = os.path.join(os.path.dirname(__file__), "data", "G2P_replace_dict.jsonl")

# Sentence enders stay attached to the sentence they end; closing quotes follow them.
_SENTENCE_END = "。！？；…!?;"
_CLAUSE_BREAK = "，、：,:"
_CLOSERS = "\"'”’）)」』】》"

# Full-width ASCII punctuation and friends mapped to one canonical form. Chinese
# sentence punctuation stays full-width (espeak's cmn voice reads it as a pause) while
# full-width letters/digits become ASCII so the English voice can read them.
_PUNCT_MAP = {
    "\u3000": " ", "｡": "。", "．": ".", "︰": "：", "﹐": "，", "﹑": "、", "﹔": "；", "﹖": "？", "﹗": "！",
    "“": "\"", "”": "\"", "‘": "'", "’": "'", "—": "-", "–": "-", "…": "…", "⋯": "…",
}


def normalize(text):
    """Canonical whitespace and punctuation. Full-width letters/digits -> ASCII,
    runs of whitespace -> one space, '...' -> '…', spaces around CJK punctuation dropped."""
    if text is None:
        return ""
    out = []
    for ch in text:
        ch = _PUNCT_MAP.get(ch, ch)
        code = ord(ch)
        # FF01-FF5E are full-width forms of ASCII 21-7E; keep the CJK-style
        # sentence punctuation (！？；：，（）) full-width, convert the rest.
        if 0xFF01 <= code <= 0xFF5E and ch not in "！？；：，（）":
            ch = chr(code - 0xFEE0)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch not in "\n\t":
            ch = " "
        out.append(ch)
    text = "".join(out)
    text = re.sub(r"\.{3,}|…+", "…", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s*([。！？；，、：）」』】》])\s*", r"\1", text)
    text = re.sub(r"\s+…", "…", text)
    text = re.sub(r"…\s+(?=[^\x00-\x7f])", "…", text)
    text = re.sub(r"\s*([（「『【《])\s*", r"\1", text)
    return text


def is_cjk(ch):
    code = ord(ch)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0xF900 <= code <= 0xFAFF or 0x3040 <= code <= 0x30FF)


def _is_latin(ch):
    return ch.isascii() and ch.isalnum() or ("\u00c0" <= ch <= "\u024f")


_TOKEN = re.compile(r"(?P<pinyin>[a-zü]+[1-5](?![0-9]))|(?P<latin>[A-Za-z\u00c0-\u024f']+)|(?P<other>.)", re.S)


def script_runs(text):
    """Split text into [(script, piece)] with script "zh" or "en"; the pieces
    concatenate back to ``text``. Numbered pinyin (``zhang3``, what the G2P dictionary
    turns into) counts as Chinese. Punctuation, digits and spaces join the run they
    sit in, so a pause mark stays with the words before it."""
    runs = []
    current, buf = None, []
    for m in _TOKEN.finditer(text):
        piece = m.group(0)
        if m.group("pinyin"):
            script = "zh"
        elif m.group("latin"):
            script = "en"
        elif is_cjk(piece):
            script = "zh"
        else:
            script = None  # neutral: stays with the current run
        if script and current and script != current:
            runs.append((current, "".join(buf)))
            buf = []
        if script:
            current = script
        buf.append(piece)
    if buf:
        runs.append((current or "zh", "".join(buf)))
    return [(s, p) for s, p in runs if p]


def count_syllables(text):
    """Rough syllable count: one per CJK character, vowel groups for Latin words,
    digits count one each. Used to measure speaking rate from a transcript."""
    n = 0
    for ch in text:
        if is_cjk(ch) or ch.isdigit():
            n += 1
    for word in re.findall(r"[A-Za-z\u00c0-\u024f']+", text):
        groups = re.findall(r"[aeiouyAEIOUY\u00c0-\u024f]+", word)
        k = len(groups)
        if word.lower().endswith("e") and k > 1 and not word.lower().endswith(("le", "ee")):
            k -= 1
        n += max(1, k)
    return n


def _split_at(text, breaks):
    """Split after each break character (keeping trailing closers with it)."""
    pieces, start, i = [], 0, 0
    while i < len(text):
        if text[i] in breaks:
            j = i + 1
            while j < len(text) and (text[j] in breaks or text[j] in _CLOSERS):
                j += 1
            # English '.' only ends a sentence before a space or the end ("3.14", "e.g" stay).
            if text[i] == "." and j < len(text) and not text[j].isspace():
                i += 1
                continue
            pieces.append(text[start:j])
            start = i = j
            continue
        i += 1
    if start < len(text):
        pieces.append(text[start:])
    return [p for p in (p.strip() for p in pieces) if p]


def _split_by_length(text, max_chars):
    """Last resort for a clause longer than max_chars: cut at a space when one exists
    in the window (never mid-word when avoidable), else at max_chars (CJK text)."""
    out = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars
            # do not cut inside a Latin word when a boundary exists a little earlier
            while cut > max_chars // 2 and _is_latin(text[cut - 1]) and _is_latin(text[cut]):
                cut -= 1
            if cut <= max_chars // 2:
                cut = max_chars
        out.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        out.append(text)
    return [p for p in out if p]


def _join(a, b):
    if not a:
        return b
    if a[-1].isascii() and b[:1].isascii():
        return a + " " + b
    return a + b


def split_text(text, max_chars=80):
    """Split normalized text into chunks of at most ``max_chars`` characters, at
    sentence punctuation first, then clause punctuation, then by length. Short
    sentences are packed together up to the limit."""
    text = normalize(text)
    if not text:
        return []
    units = []
    for sentence in _split_at(text, _SENTENCE_END + "."):
        if len(sentence) <= max_chars:
            units.append(sentence)
            continue
        for clause in _split_at(sentence, _CLAUSE_BREAK):
            units.extend(_split_by_length(clause, max_chars) if len(clause) > max_chars else [clause])
    chunks, current = [], ""
    for unit in units:
        candidate = _join(current, unit)
        if current and len(candidate) > max_chars:
            chunks.append(current)
            current = unit
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks


# -- G2P replacement dictionary ------------------------------------------------------

_PHONEME_TOKEN = re.compile(r"<\|([A-Za-z]+[0-9]?)\|>")


def load_g2p_dict(path=None):
    """Read a G2P_replace_dict.jsonl file. A bad line is a ConfigError naming the
    file and the line number."""
    path = path or DEFAULT_G2P_DICT
    entries = {}
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError("G2P dictionary %s line %d: not valid JSON (%s)" % (path, lineno, e.msg)) from None
                if not isinstance(obj, dict) or not obj:
                    raise ConfigError("G2P dictionary %s line %d: expected an object like "
                                      "{\"长大\": \"<|ZH|><|ANG3|><|D|><|A4|>\"}" % (path, lineno))
                for key, value in obj.items():
                    if not isinstance(value, str) or not key or not value:
                        raise ConfigError("G2P dictionary %s line %d: %r must map to a non-empty string of "
                                          "phoneme tokens like <|ZH|><|ANG3|>" % (path, lineno, key))
                    if _PHONEME_TOKEN.sub("", value).strip() and not any(is_cjk(c) for c in value):
                        raise ConfigError("G2P dictionary %s line %d: %r has text outside <|...|> phoneme tokens"
                                          % (path, lineno, key))
                    entries[key] = value
    except FileNotFoundError:
        raise ConfigError("G2P dictionary %s does not exist (engine.g2p_dict)" % path) from None
    except UnicodeDecodeError:
        raise ConfigError("G2P dictionary %s is not UTF-8" % path) from None
    return entries


def apply_g2p(text, entries):
    """Replace dictionary words with their phoneme tokens, longest key first, in one
    pass (a replacement is never re-scanned)."""
    if not entries or not text:
        return text
    keys = sorted(entries, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) for k in keys))
    return pattern.sub(lambda m: entries[m.group(0)], text)


def phoneme_tokens_to_pinyin(text):
    """``<|ZH|><|ANG3|>`` -> ``zhang3``: numbered pinyin, which espeak's cmn voice
    reads as that syllable. Consecutive tokens form syllables (an initial joins the
    following final; a final carries the tone digit)."""
    def syllables(match):
        out, initial = [], ""
        for tok in _PHONEME_TOKEN.findall(match.group(0)):
            low = tok.lower()
            if low[-1].isdigit():
                final, tone = low[:-1], low[-1]
                out.append(_pinyin(initial, final) + tone)
                initial = ""
            else:
                initial = low
        if initial:
            out.append(initial)
        return " " + " ".join(out) + " "
    return re.sub(r"(?:<\|[A-Za-z]+[0-9]?\|>)+", syllables, text)


def _pinyin(initial, final):
    # GLM-TTS finals are written without pinyin's spelling contractions; restore the
    # common ones so espeak's pinyin reader recognises the syllable.
    spelled = {"uei": "ui", "iou": "iu", "uen": "un"}
    if initial:
        final = spelled.get(final, final)
        if initial in ("j", "q", "x") and final.startswith("v"):
            final = "u" + final[1:]
        return initial + final.replace("v", "ü" if initial in ("n", "l") else "u")
    if final.startswith("i"):
        return "y" + (final[1:] if len(final) > 1 and final[1] in "aeou" else final)
    if final.startswith("u"):
        return "w" + (final[1:] if len(final) > 1 else final)
    if final.startswith("v"):
        return "yu" + final[1:]
    return final


def require_text(text):
    """Normalized text, or InputError when nothing speakable is left."""
    text = normalize(text)
    if not text or not any(ch.isalnum() for ch in text):
        raise InputError("input text is empty after normalization: give some words to speak")
    return text
