"""Stateless tracing layer on top of sgp_client (see its own issue)."""
