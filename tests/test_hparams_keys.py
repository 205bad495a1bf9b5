"""Every top-level key of every YAML in hparams/ is used (SpeechBrain's consistency check).

A key counts as used when it is referenced inside its YAML (``<key>``, ``<key[...]>``,
``<key.attr>``) or read by name in the code under ``recipes/`` or ``audio_interpretability/``
(``hparams["key"]``, ``hparams.get("key")``, ``hparams.key``, ``self.hparams.key``).
Keys starting with ``__`` (e.g. ``__set_seed``) are executed by the YAML loader itself.
SpeechBrain's ``Brain`` reads its run options (e.g. ``ckpt_interval_minutes``) from the hparams
by name, and ``recipe_utils.check_published_keys`` validates the published switches of
``FIXED_PUBLISHED_KEYS`` by name: both count as used.
"""

import re
from pathlib import Path

import pytest
from speechbrain.core import RunOptions

from audio_interpretability.recipe_utils import FIXED_PUBLISHED_KEYS

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted((ROOT / "hparams").glob("*.yaml"))
TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:", re.MULTILINE)
#: Keys read by name by library code rather than by a literal ``hparams["key"]``.
READ_BY_NAME = set(RunOptions().as_dict()) | set(FIXED_PUBLISHED_KEYS)


def top_level_keys(text: str) -> list[str]:
    """Keys defined at column 0 of a YAML text."""
    return TOP_LEVEL_KEY.findall(text)


def code_text() -> str:
    """All Python source of the recipes and the package."""
    files = sorted((ROOT / "recipes").rglob("*.py")) + sorted(
        (ROOT / "audio_interpretability").rglob("*.py")
    )
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def unused_keys(yaml_text: str, code: str) -> list[str]:
    """Top-level keys of ``yaml_text`` used neither in the YAML nor in ``code``."""
    unused = []
    for key in top_level_keys(yaml_text):
        if key.startswith("__") or key in READ_BY_NAME:
            continue
        k = re.escape(key)
        in_yaml = re.search(rf"<{k}(?:[>\[.])", yaml_text)
        in_code = re.search(
            rf"""hparams\[\s*["']{k}["']\s*\]|hparams\.get\(\s*["']{k}["']|hparams\.{k}\b""",
            code,
        )
        if not (in_yaml or in_code):
            unused.append(key)
    return unused


def test_detects_unused_key():
    yaml_text = "a: 1\nb: !ref <a>\nc: 3\nd: 4\n__set_seed: 0\n"
    code = 'x = hparams["b"]\ny = self.hparams.d\n'
    assert unused_keys(yaml_text, code) == ["c"]


def test_there_are_yamls():
    assert any(p.name.startswith("classifier_") for p in YAMLS)


@pytest.mark.parametrize("yaml_path", YAMLS, ids=lambda p: p.name)
def test_every_key_is_used(yaml_path):
    text = yaml_path.read_text(encoding="utf-8")
    unused = unused_keys(text, code_text())
    assert not unused, f"{yaml_path.name}: top-level keys never used: {unused}"
