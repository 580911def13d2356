"""Generation and scoring over token ids: the one engine (engine.py) every command and the
server generate through, sampling, the word search, and next-token log-probabilities
(logprobs.py). Nothing here knows what a run's task is; the API (tinylm/api.py) turns text
into ids and ids into text through the run's task."""

from tinylm.inference.engine import Engine, Job, Step
from tinylm.inference.sampling import Sampling, SamplingError, make_generator

__all__ = ["Engine", "Job", "Sampling", "SamplingError", "Step", "make_generator"]
