"""``build_tiny_seg_backbone``: a few-conv backbone for CPU tests, demos and cheap search proxies.

Outputs ``res2..res5`` at strides 4, 8, 16, 16 (res5 dilated, like an output-stride-16 ResNet), so
it drops into DeepLabV3+ (IN_FEATURES res2/res5) and FPN-style heads unchanged.
"""
from detectron2.layers import Conv2d, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

__all__ = ["TinySegBackbone", "build_tiny_seg_backbone"]


def _conv(cin, cout, stride, dilation, norm):
    return Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=not norm,
                  norm=get_norm(norm, cout), activation=nn.ReLU(inplace=True))


class TinySegBackbone(Backbone):
    """Stem (stride 4) + three stages; each stage = two 3x3 conv-norm-relu blocks.

    Args:
        in_channels (int): input channels (3).
        channels (list[int]): 4 output channels of res2, res3, res4, res5.
        norm (str): detectron2 norm name ("BN", "GN", "" ...).
        out_features (list[str]): subset of res2..res5 to return.
    """

    def __init__(self, in_channels, channels, norm="BN", out_features=("res2", "res5")):
        super().__init__()
        if len(channels) != 4 or min(channels) <= 0:
            raise ValueError(
                f"MODEL.TINY_BACKBONE.CHANNELS must be 4 positive ints, got {channels}"
            )
        strides, dilations = (4, 8, 16, 16), (1, 1, 1, 2)
        self._out_features = list(out_features)
        unknown = set(self._out_features) - {"res2", "res3", "res4", "res5"}
        if unknown:
            raise ValueError(f"unknown out_features {sorted(unknown)}; expected res2..res5")
        self._out_feature_strides, self._out_feature_channels = {}, {}
        self.stages = nn.ModuleDict()
        cin = in_channels
        for i, (name, cout) in enumerate(zip(("res2", "res3", "res4", "res5"), channels)):
            if i == 0:  # stem: two stride-2 convs
                blocks = [_conv(cin, cout // 2, 2, 1, norm), _conv(cout // 2, cout, 2, 1, norm)]
            else:
                blocks = [_conv(cin, cout, strides[i] // strides[i - 1], 1, norm),
                          _conv(cout, cout, 1, dilations[i], norm)]
            self.stages[name] = nn.Sequential(*blocks)
            self._out_feature_strides[name] = strides[i]
            self._out_feature_channels[name] = cout
            cin = cout

    def forward(self, x):
        """x: (N, C, H, W) -> dict of the requested features."""
        out = {}
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self._out_features:
                out[name] = x
        return out


@BACKBONE_REGISTRY.register()
def build_tiny_seg_backbone(cfg, input_shape):
    """``MODEL.BACKBONE.NAME "build_tiny_seg_backbone"``; returns ``MODEL.RESNETS.OUT_FEATURES``."""
    return TinySegBackbone(
        input_shape.channels,
        list(cfg.MODEL.TINY_BACKBONE.CHANNELS),
        norm=cfg.MODEL.RESNETS.NORM,
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
    )
