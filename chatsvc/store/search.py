"""What the search indexes of both engines agree on: which characters are CJK, so a pair of them is a word.

The same ranges are spelled in the indexes' own definitions (schema.sql, schema_postgres.sql): the CJK and
Hangul blocks, compatibility ideographs, full-width forms and the supplementary ideographs.
"""

from __future__ import annotations

import re

_CJK_PAIR = re.compile("[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u1100-\u11ff\U00020000-\U0003ffff]{2}")


def is_cjk_pair(text: str) -> bool:
    """Whether ``text`` is two CJK characters: a word the pair index finds."""
    return _CJK_PAIR.fullmatch(text) is not None
