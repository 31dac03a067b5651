"""Operations telemetry: Prometheus metrics read from the source of truth at scrape time (`metrics`),
OpenTelemetry traces across web, workers and model calls (`tracing`), structured logs carrying the request and
run ids (`logs`), and the readiness checks of web and workers (`health`). docs/operations.md is the operator's
guide to all four."""
