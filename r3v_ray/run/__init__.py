"""The run directory: storage (local paths and pyarrow filesystem URIs), the per-node cache, the directory layout and the manifests that make a round's outputs checkable."""
