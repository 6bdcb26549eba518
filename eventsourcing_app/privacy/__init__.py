"""Personal data protection: per-subject data keys wrapped by a master key, and encrypted
event and snapshot fields, so that destroying a subject's key erases its personal data from
every copy of an immutable log (crypto-shredding)."""

from .fields import encrypt_sensitive_fields, get_encryption_key  # noqa: E402  (the guide's API)

__all__ = ["encrypt_sensitive_fields", "get_encryption_key"]
