"""System checks run by `manage.py check --database default` (the run command does) and by
the Celery worker at start: a wrong or missing master key stops start-up with a clear message."""
from __future__ import annotations

from django.core.checks import Error, register
from django.db import DatabaseError


@register("privacy")
def check_master_keys(app_configs=None, databases=None, **kwargs):
    if not databases:
        return []
    from .privacy.keyring import MasterKeyError
    from .privacy.fields import get_subject_keys

    try:
        get_subject_keys().check_master_keys()
    except MasterKeyError as exc:
        return [Error(str(exc), id="privacy.E001",
                      hint="TEDDY_MASTER_KEYS must hold every master key that wrapped a stored data key; "
                           "after a rotation (manage.py rotate_master_key) the old key can be dropped")]
    except DatabaseError:  # not migrated yet: nothing is wrapped yet
        return []
    return []
