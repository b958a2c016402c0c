"""mayflyd: a multi-tenant HTTP daemon with one ephemeral sandbox per request."""

__version__ = "0.1.0"
