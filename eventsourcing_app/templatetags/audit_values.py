"""How the audit pages print a value: JSON for lists and objects, a dash for nothing."""
from __future__ import annotations

import json

from django import template

register = template.Library()


@register.filter
def shown(value):
    if value is None:
        return "–"
    if isinstance(value, (dict, list, bool)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value
