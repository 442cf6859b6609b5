"""What operators watch: Prometheus metrics, probes and the status page, lag and status
screens, the cost estimate, and logging set-up."""
