"""r3v-ray: R3V self-training with reflection (arXiv 2411.00855) as a distributed Ray application."""

__version__ = "0.1.0"
