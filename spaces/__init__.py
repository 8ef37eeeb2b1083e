"""What is searched: model families, their stable layer names, the joint space and the plan."""

from . import _cnn, _torchvision  # noqa: F401  (register the built-in families)
from ._checkpoint import checkpoint_of, load_checkpoint, load_weights
from ._errors import SqueezeError
from ._families import Knob, ModelFamily, family_named, get_family, list_families, register_family
from ._groups import GraphError, Group, discover, one_line
from ._narrow import ALL_PRUNING, Narrowing, Removal
from ._plan import ALLOWED_BITS, CompressionPlan, runs_int8
from ._space import JointSpace, SpaceSpec, SparsityRange
from ._user import import_object

__all__ = [
    "ALLOWED_BITS",
    "ALL_PRUNING",
    "CompressionPlan",
    "GraphError",
    "Group",
    "JointSpace",
    "Knob",
    "ModelFamily",
    "Narrowing",
    "Removal",
    "SpaceSpec",
    "SparsityRange",
    "SqueezeError",
    "checkpoint_of",
    "discover",
    "family_named",
    "get_family",
    "import_object",
    "list_families",
    "load_checkpoint",
    "load_weights",
    "one_line",
    "register_family",
    "runs_int8",
]
