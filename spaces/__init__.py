"""What is searched: model families, their stable layer names, the joint space and the plan."""

from . import _cnn  # noqa: F401  (registers the built-in family)
from ._errors import SqueezeError
from ._families import Knob, ModelFamily, get_family, list_families, register_family
from ._plan import ALLOWED_BITS, CompressionPlan
from ._space import JointSpace, SpaceSpec, SparsityRange

__all__ = [
    "ALLOWED_BITS",
    "CompressionPlan",
    "JointSpace",
    "Knob",
    "ModelFamily",
    "SpaceSpec",
    "SparsityRange",
    "SqueezeError",
    "get_family",
    "list_families",
    "register_family",
]
