"""Restorer architectures; importing this package registers each one with restore.registry."""
from . import lipt  # noqa: F401
from . import carn, fsrcnn, iptv2, rtsr  # noqa: F401
