"""The jobyard autoscaler: grow and shrink the fleet from backlog and demand."""
