"""Ray clusters: connecting, the stages' resource requests, `r3v plan`, preflight checks and the packages a Python needs."""
