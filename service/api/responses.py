"""The JSON response every API handler answers with: Starlette's JSONResponse, encoded by one encoder built once.

JSONResponse.render calls json.dumps with options, which builds a new JSONEncoder on every response; on the
submit and poll paths that showed in the profile. Same output: compact, UTF-8, NaN refused.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class JSONOut(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _ENCODE(content).encode("utf-8")
