"""Observability: Prometheus metrics, what the access logs teach us, health endpoints."""
