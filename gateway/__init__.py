"""gateway: a self-hosted egress API gateway for third-party SaaS APIs."""

__version__ = "0.1.0"
