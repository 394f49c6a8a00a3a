"""A seeded synthetic world in the Amazon 2014 raw formats, with its exact oracle.

``world`` (parameters, static tables, users; the generative model in its docstring) ->
``sampler`` (event simulation) -> ``writer`` (raw files, ``generate``) ; ``oracle`` reads what
the writer saved.
"""

from ctrbench.data.synthetic.oracle import SyntheticOracle
from ctrbench.data.synthetic.world import GENERATOR_VERSION, SCALES, WorldParams, world_params
from ctrbench.data.synthetic.writer import (
    META_FILE,
    ORACLE_FILE,
    PARAMS_FILE,
    REVIEWS_FILE,
    USERS_FILE,
    generate,
)

__all__ = ["GENERATOR_VERSION", "META_FILE", "ORACLE_FILE", "PARAMS_FILE", "REVIEWS_FILE",
           "SCALES", "USERS_FILE", "SyntheticOracle", "WorldParams", "generate", "world_params"]
