"""The skysieve model zoo: a name -> constructor registry in the style of timm.

Each architecture lives in its own file (docstring with the source, ``__all__``,
blocks, the model class, ``_create_<arch>``, then the registered variants).  A
variant is a thin function ``name(**kw) -> nn.Module`` decorated with
:func:`register_model`; :func:`create_model` is the only way the rest of
skysieve builds a model, so a new file only has to be imported here to be usable
everywhere (checkpoints, training, the forward test in
``tests/workers/test_models.py`` that parametrises over :func:`list_models`).
The registry itself is ``workers/models/_registry.py``.

Every model takes ``num_classes``, ``in_chans`` and ``image_size`` and keeps
them as attributes of the same names; inputs are ``(N, in_chans, image_size,
image_size)`` float32 tensors laid out ``(N, C, y, x)``.
"""

from __future__ import annotations

from workers.models._registry import create_model, is_model, list_models, register_model

__all__ = ["register_model", "create_model", "list_models", "is_model"]

# Importing the architecture files registers their variants.
from workers.models import lenet5, smallcnn  # noqa: F401
from workers.models import alexnet, hr_celestialnet, mobilenetv3  # noqa: F401,I001
from workers.models import resnet, vgg, wide_resnet  # noqa: F401,I001
