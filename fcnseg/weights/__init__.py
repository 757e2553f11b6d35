"""Pretrained weights, by topic: `convert` (`fcnseg weights convert` / `inspect`: ImageNet VGG16 in any format
converted to one input channel) and `transplant` (`initialize`: a caffemodel copied into a net before
training, the report, and the from-scratch warning)."""
from .convert import (
           Conversion,
           choose_convention,
           convert_vgg16,
           convert_weights,
           definition_from_prototxt,
           inspect_weights,
           vgg16_definition,
)
from .transplant import TransplantRow, format_report, initialize, net_fillers, scratch_differences, scratch_warning

__all__ = ["Conversion", "TransplantRow", "choose_convention", "convert_vgg16", "convert_weights",
           "definition_from_prototxt", "format_report", "initialize", "inspect_weights", "net_fillers",
           "scratch_differences", "scratch_warning", "vgg16_definition"]
