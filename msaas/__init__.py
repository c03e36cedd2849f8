"""MSaaS: music separation as a service (REST + Redis queue + Demucs workers + object store)."""

__version__ = "0.1.0"
