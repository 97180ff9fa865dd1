"""What a running service shows its operators: HTTP probes, the group's readiness and metrics
across processes, Prometheus metrics and OpenTelemetry traces (both as middlewares)."""
