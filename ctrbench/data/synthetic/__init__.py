"""The synthetic world package (generator and exact oracle); see :mod:`.world` for the model."""

from ctrbench.data.synthetic.world import (
    GENERATOR_VERSION,
    META_FILE,
    ORACLE_FILE,
    PARAMS_FILE,
    REVIEWS_FILE,
    SCALES,
    USERS_FILE,
    SyntheticOracle,
    WorldParams,
    generate,
    world_params,
)

__all__ = ["GENERATOR_VERSION", "META_FILE", "ORACLE_FILE", "PARAMS_FILE", "REVIEWS_FILE",
           "SCALES", "USERS_FILE", "SyntheticOracle", "WorldParams", "generate", "world_params"]
