"""deploy/.env.example lists every variable the settings read, so operators never have to read code."""

from __future__ import annotations

import re

from tests.support.processes import REPO


def test_every_setting_variable_is_documented():
    settings_source = (REPO / "aios_web" / "settings.py").read_text()
    read = set(re.findall(r'env_(?:str|int|bool|float|list|choice|url)\(\s*"([A-Z0-9_]+)"', settings_source))
    documented = set(re.findall(r"^#?\s?([A-Z0-9_]+)=", (REPO / "deploy" / ".env.example").read_text(), re.M))
    assert read, "no variables found: the pattern no longer matches settings.py"
    assert read <= documented, f"missing from deploy/.env.example: {sorted(read - documented)}"
