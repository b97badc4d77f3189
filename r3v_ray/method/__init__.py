"""The method as the paper and the authors' code define it: prompts, the reflection training data, self-selection and the metrics. Pure functions: no Ray, no torch."""
