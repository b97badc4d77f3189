"""Ray Serve: the best-of-N self-selection endpoint (see serving/app.py for how to start it).

Pure parts (parsing, selector, responses, batching, checkpoint) import no Ray Serve; deployments and app do.
"""

from r3v_ray.serving.errors import RequestError
from r3v_ray.serving.parsing import STRATEGIES, Query
from r3v_ray.serving.selector import Selection, run_selection, select_in_process

__all__ = ["STRATEGIES", "Query", "RequestError", "Selection", "run_selection", "select_in_process"]
