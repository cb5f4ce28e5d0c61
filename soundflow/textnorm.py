"""Text normalisation for speech: the spoken-form rewrite of paper Appendix "Dataset Curation
Pipeline", step (1): markdown stripping, numeral and abbreviation expansion, symbol replacement.

`rewrite` asks the OpenAI-compatible endpoint of `soundflow.curator_client` when one is given or configured
(SOUNDFLOW_LLM_BASE_URL) and normalises its answer again; `normalize_text` is the deterministic
offline English normaliser (also the reference the ASR gate scores renderings against).
"""

from __future__ import annotations

import re

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORD_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}


def number_to_words(n: int) -> str:
    """Cardinal: 123 → "one hundred twenty-three", -5 → "minus five"."""
    n = int(n)
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        t, o = divmod(n, 10)
        return _TENS[t] + ("-" + _ONES[o] if o else "")
    if n < 1000:
        h, r = divmod(n, 100)
        return _ONES[h] + " hundred" + (" " + number_to_words(r) if r else "")
    for value, name in _SCALES:
        if n >= value:
            q, r = divmod(n, value)
            return number_to_words(q) + " " + name + (" " + number_to_words(r) if r else "")
    raise AssertionError(n)


def ordinal_to_words(n: int) -> str:
    """21 → "twenty-first", 12 → "twelfth", 100 → "one hundredth"."""
    words = number_to_words(n)
    head, sep, last = max((words.rpartition(" "), words.rpartition("-")), key=lambda p: len(p[0]))
    if last in _ORD_IRREGULAR:
        last = _ORD_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def year_to_words(y: int) -> str:
    """1984 → "nineteen eighty-four", 2005 → "two thousand five", 2024 → "twenty twenty-four",
    1900 → "nineteen hundred"."""
    if 2000 <= y <= 2009 or y % 1000 == 0:
        return number_to_words(y)
    hi, lo = divmod(y, 100)
    if lo == 0:
        return number_to_words(hi) + " hundred"
    return number_to_words(hi) + " " + (("oh " + _ONES[lo]) if lo < 10 else number_to_words(lo))


def _digits(s: str) -> str:
    return " ".join(_ONES[int(c)] for c in s)


def _decimal(s: str) -> str:
    s = s.replace(",", "")
    whole, _, frac = s.partition(".")
    out = number_to_words(int(whole or "0"))
    return out + (" point " + _digits(frac) if frac else "")


_ABBREV = [  # (pattern, spoken); applied case-sensitively, word-bounded
    (r"\be\.g\.", "for example"), (r"\bi\.e\.", "that is"), (r"\betc\.", "et cetera"),
    (r"\bvs\.?(?=\s)", "versus"), (r"\bDr\.", "doctor"), (r"\bMr\.", "mister"), (r"\bMrs\.", "missus"),
    (r"\bMs\.", "miz"), (r"\bProf\.", "professor"), (r"\bSt\.(?=\s+[A-Z])", "saint"), (r"\bSt\.", "street"),
    (r"\bAve\.", "avenue"), (r"\bapprox\.", "approximately"), (r"\bno\.(?=\s*\d)", "number"),
    (r"\bNo\.(?=\s*\d)", "number"), (r"\bJan\.", "January"), (r"\bFeb\.", "February"), (r"\bAug\.", "August"),
    (r"\bSept?\.", "September"), (r"\bOct\.", "October"), (r"\bNov\.", "November"), (r"\bDec\.", "December"),
    (r"\bmin\.", "minutes"), (r"\bkm\b", "kilometers"), (r"\bkg\b", "kilograms"), (r"\bcm\b", "centimeters"),
    (r"\bmph\b", "miles per hour"), (r"\bkm/h\b", "kilometers per hour"), (r"\bhrs?\.?(?=\s|$)", "hours"),
]
_TITLES = {r"\bDr\.", r"\bMr\.", r"\bMrs\.", r"\bMs\.", r"\bProf\.", r"\bSt\.(?=\s+[A-Z])"}
_SYMBOLS = {"&": " and ", "%": " percent", "+": " plus ", "@": " at ", "=": " equals ", "#": " number ",
            "°C": " degrees Celsius", "°F": " degrees Fahrenheit", "°": " degrees", "×": " times ", "/": " slash "}
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
             "£": ("pound", "pounds", "penny", "pence")}
_SCALE_WORDS = {"k": "thousand", "m": "million", "bn": "billion", "b": "billion"}


def strip_markdown(text: str) -> str:
    """Remove markdown markup, keeping the words: code fences, headers, bullets, emphasis, links."""
    t = re.sub(r"```.*?```", " ", text, flags=re.S)
    t = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", t)  # images
    t = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", t)  # links
    t = re.sub(r"`([^`]*)`", r"\1", t)
    t = re.sub(r"(?m)^\s{0,3}#{1,6}\s*", "", t)  # headers
    t = re.sub(r"(?m)^\s*>\s?", "", t)  # quotes
    t = re.sub(r"(?m)^\s*(?:[-*+]|\d+[.)])\s+", "", t)  # list markers
    t = re.sub(r"(\*\*|__)(.+?)\1", r"\2", t)
    t = re.sub(r"(?<![\w*])[*_](?!\s)(.+?)(?<!\s)[*_](?![\w*])", r"\1", t)
    t = re.sub(r"(?m)^\s*(?:---+|\*\*\*+)\s*$", " ", t)  # rules
    t = re.sub(r"https?://\S+", "", t)
    lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
    # A line break between items becomes a sentence boundary.
    return " ".join(ln if ln[-1] in ".!?:;," else ln + "." for ln in lines) if len(lines) > 1 else " ".join(lines)


def _currency(m: re.Match) -> str:
    one, many, sub1, subn = _CURRENCY[m.group(1)]
    amount, scale = m.group(2).replace(",", ""), (m.group(3) or "").lower()
    if scale:
        return f"{_decimal(amount)} {_SCALE_WORDS[scale]} {many}"
    whole, _, frac = amount.partition(".")
    w = int(whole or "0")
    out = f"{number_to_words(w)} {one if w == 1 else many}"
    if frac:
        c = int((frac + "0")[:2])
        if c:
            out = (out + " and " if w else "") + f"{number_to_words(c)} {sub1 if c == 1 else subn}"
    return out


def _time(m: re.Match) -> str:
    h, mi, ampm = int(m.group(1)), int(m.group(2)), (m.group(3) or "").lower().replace(".", "")
    out = number_to_words(h)
    if mi == 0:
        out += "" if ampm else " o'clock"
    elif mi < 10:
        out += " oh " + _ONES[mi]
    else:
        out += " " + number_to_words(mi)
    return out + (" " + " ".join(ampm.upper()) if ampm else "")


def _plural(words: str) -> str:
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _number(m: re.Match) -> str:
    s = m.group(0)
    plain = s.replace(",", "")
    if "." in plain:
        return _decimal(plain)
    if len(plain) > 1 and plain.startswith("0"):
        return _digits(plain)  # codes, "007"
    n = int(plain)
    if "," not in s and 1100 <= n <= 2099 and n != 2000:
        return year_to_words(n)
    return number_to_words(n)


def normalize_text(text: str) -> str:
    """Offline spoken-form rewrite: deterministic, English.

    Markdown stripped; "Dr." → "doctor", "e.g." → "for example", "etc." → "et cetera"; "$3.50" →
    "three dollars and fifty cents"; "25%" → "twenty-five percent"; "3.14" → "three point one
    four"; "21st" → "twenty-first"; "1984" → "nineteen eighty-four"; "8:30 pm" → "eight thirty P
    M"; "&" → "and", "+" → "plus", "@" → "at"; whitespace collapsed."""
    t = strip_markdown(text)
    t = t.replace("—", ", ").replace("–", " to ").replace("…", "...")
    for pat, spoken in _ABBREV:
        # An abbreviation's period that also ended the sentence is kept ("... etc. Then" → "et cetera. Then").
        keep = pat.endswith(".") and pat not in _TITLES
        t = re.sub(pat + r"(?=(\s+[A-Z]|\s*$))" if keep else pat,
                   lambda m, sp=spoken: sp + ("." if m.group(0).endswith(".") and m.lastindex else ""), t)
        if pat.endswith("."):
            t = re.sub(pat, spoken, t)
    t = re.sub(r"([$€£])\s?(\d[\d,]*(?:\.\d+)?)(?:\s?(bn|[kKmMbB])\b)?", _currency, t)
    t = re.sub(r"(\d+(?:\.\d+)?)\s?%", lambda m: _decimal(m.group(1)) + " percent", t)
    t = re.sub(r"\b(\d{1,2}):(\d{2})\s*([aApP]\.?[mM]\.?)?", _time, t)
    t = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: ordinal_to_words(int(m.group(1))), t)
    t = re.sub(r"\b(\d{4})s\b", lambda m: _plural(year_to_words(int(m.group(1)))), t)  # the 1980s
    t = re.sub(r"(?<![\w.])(\d+)-(\d+)(?![\w.])", r"\1 to \2", t)  # ranges 5-10
    t = re.sub(r"(?<![\w])-(?=\d)", "minus ", t)
    t = re.sub(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", _number, t)
    for sym in sorted(_SYMBOLS, key=len, reverse=True):
        t = t.replace(sym, _SYMBOLS[sym])
    t = re.sub(r"[*_~^|<>{}\[\]\\]", " ", t)
    t = re.sub(r"\s+([,.!?;:])", r"\1", t)
    return re.sub(r"\s+", " ", t).strip()


REWRITE_PROMPT = (
    "Rewrite the user's text so that a text-to-speech engine can read it aloud naturally. Strip all "
    "markdown; expand numerals, dates, times, currency and percentages into words; expand "
    "abbreviations; replace symbols by words; keep the meaning and the language; no additions. "
    'Answer in JSON: {"text": "..."}'
)


def rewrite(text: str, llm=None) -> str:
    """Spoken-form rewrite: the LLM endpoint when given or configured, else `normalize_text`.

    The LLM output is normalised again, so digits it left are still spelled out."""
    if llm is None:
        try:
            from .curator_client import LLMClient

            llm = LLMClient.from_env()
        except ImportError:  # pragma: no cover - curator_client.py is optional
            llm = None
    if llm is not None:
        out = llm.chat_json(REWRITE_PROMPT, text, validate=lambda d: d if isinstance(d.get("text"), str) else
                            (_ for _ in ()).throw(ValueError('need {"text": string}')))
        return normalize_text(out["text"])
    return normalize_text(text)
