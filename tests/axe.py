"""The page's accessibility audit: axe-core (vendored, tests/vendor/axe-core/) run inside the page under test.

The engine goes in with `page.evaluate` of its source, not a `<script>` tag: an inline script would be refused
by the page's Content-Security-Policy (`default-src 'self'`: no inline script), while code the test driver
evaluates is not.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

AXE_JS = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
# axe-core 4.14.1's own record of this file (package/sri-history.json): a changed copy fails loudly.
AXE_SRI = "sha256-KTSJmUUM3yhJqOcLeRL8LahahJ2jnA0NU5T1HUqe2Vw="
# WCAG 2.1 levels A and AA, and axe's best practices (landmarks, heading order, …), which the page also keeps.
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


@cache
def axe_source() -> str:
    data = AXE_JS.read_bytes()
    sri = "sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert sri == AXE_SRI, f"{AXE_JS} is not axe-core 4.14.1's axe.min.js ({sri}); see its README.md"
    return data.decode()


async def audit(page: Any, tags: list[str] = TAGS, *, unsure: bool = True) -> list[dict[str, Any]]:
    """Run every axe rule with one of `tags` on the whole page as it is now; return the violations, and with
    `unsure` also what axe could not decide (its "incomplete": e.g. an aria-label where it may not be read)."""
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.evaluate(axe_source())
    options = {"runOnly": {"type": "tag", "values": tags}, "resultTypes": ["violations", "incomplete"]}
    results = await page.evaluate("options => axe.run(document, options)", options)
    unsure_ones = [{**v, "impact": f"{v['impact']}, needs review"} for v in results["incomplete"]] if unsure else []
    return list(results["violations"]) + unsure_ones


def report(violations: list[dict[str, Any]]) -> str:
    """One paragraph per rule: what it asks, how bad, and each element that breaks it with axe's reason."""
    lines = [f"{len(violations)} accessibility rule(s) broken:"]
    for v in violations:
        lines.append(f"\n[{v['impact']}] {v['id']}: {v['help']} ({', '.join(v['tags'])})\n  {v['helpUrl']}")
        for node in v["nodes"]:
            lines.append(f"  - {json.dumps(node['target'])}: {node['html'][:200]}")
            for check in node.get("any", []) + node.get("all", []) + node.get("none", []):
                lines.append(f"      {check['message']}")
    return "\n".join(lines)


async def assert_accessible(page: Any, state: str) -> None:
    violations = await audit(page)
    assert not violations, f"the page {state}: " + report(violations)
