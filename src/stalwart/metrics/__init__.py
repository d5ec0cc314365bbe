"""Prometheus metrics through prometheus-client: the config section, the registry the
supervisor's events update, the HTTP listener and the node_exporter textfile.

`stalwart.metrics.config` loads nothing heavy; prometheus_client is imported only when
metrics are configured (`stalwart[metrics]`).
"""
