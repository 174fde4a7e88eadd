"""Chinese characters (Han ideographs): what every part of seekmoe counts as Chinese in a text, defined once."""

from __future__ import annotations

import re

# the Basic Multilingual Plane's ideographs: Extension A, the Unified block and the Compatibility block (the rarer
# extensions lie above U+FFFF and hardly occur in prose)
IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
HAN = re.compile(f"[{IDEOGRAPHS}]")
