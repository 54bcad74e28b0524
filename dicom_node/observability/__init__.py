"""What the node tells its operators: Prometheus metrics (``metrics``) and the audit trail (``audit``)."""
