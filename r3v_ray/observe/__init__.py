"""What a run shows: the console, Ray metrics, TensorBoard, report.md and `r3v status`."""
