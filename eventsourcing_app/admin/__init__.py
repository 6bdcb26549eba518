"""The Django admin: the compliance audit trail (audit.py), its actions (actions.py), and what
every audit page shares (base.py). Read-only for everyone; see application/compliance.py for
who may reveal, export, erase and verify."""
from . import audit  # noqa: F401  (registers the audit models)
