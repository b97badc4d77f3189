"""Experiments on top of the pipeline: the reproduction in miniature (`r3v reproduce`)."""
