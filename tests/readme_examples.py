"""The README's Python examples, loaded as a reader would paste them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"
CONSUMER_EXAMPLES = ("### Exactly once, step by step", "### Or let `consume` run the loop")


def python_block_after(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    after = README.read_text(encoding="utf-8").split(f"\n{heading}\n", 1)[1]
    return after.split("```python\n", 1)[1].split("\n```", 1)[0]


def load_consumer_examples() -> dict[str, Any]:
    """Run the consumer blocks, in order, in one namespace; return what they define."""
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    for heading in CONSUMER_EXAMPLES:
        # dont_inherit: this module's `from __future__ import annotations` must not leak in.
        code = compile(python_block_after(heading), str(README), "exec", dont_inherit=True)
        exec(code, namespace)
    return namespace
