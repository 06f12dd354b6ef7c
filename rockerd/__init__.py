"""rockerd: the root daemon that builds rockers (app sandboxes) on request."""

__version__ = "0.1.0"
