"""Architectures of the paper (and tiny ones for tests) as `Layer` graphs."""
from __future__ import annotations

from jaxprune.models.spec import Layer


def conv_bn_relu(i: int, features: int, kernel: int, stride: int, padding: int = 1,
                 inputs: tuple[str, ...] = ()) -> list[Layer]:
  return [Layer("conv", f"conv{i}", inputs, features=features, kernel=kernel, stride=stride,
                padding=padding),
          Layer("bn", f"bn{i}"),
          Layer("relu", f"relu{i}")]


def cnn7l(num_classes: int = 10, width: int = 1) -> tuple[Layer, ...]:
  """Paper Table 1 (`cifar_model_deep`): 5 Conv-BN-ReLU blocks, Dense(100), Dense(10).

  The input channel count and the flattened size follow the input (3x32x32 ->
  Dense(2048,100); 1x28x28 -> Dense(1152,100)), so one definition serves both.
  """
  blocks = [(32, 3, 1), (64, 4, 2), (64, 3, 1), (128, 4, 2), (128, 4, 2)]
  layers: list[Layer] = []
  for i, (c, k, s) in enumerate(blocks, start=1):
    layers += conv_bn_relu(i, c * width, k, s)
  layers += [Layer("flatten", "flatten"), Layer("dense", "fc1", features=100),
             Layer("relu", "relu_fc1"), Layer("dense", "fc2", features=num_classes)]
  return tuple(layers)


def resnet(stage_widths: tuple[int, ...], blocks_per_stage: int,
           num_classes: int = 10, pool: int = 4) -> tuple[Layer, ...]:
  """CIFAR ResNet of BasicBlocks (conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU)."""
  layers = conv_bn_relu(0, stage_widths[0], 3, 1)
  prev, cin, n = "relu0", stage_widths[0], 0
  for s, width in enumerate(stage_widths):
    for b in range(blocks_per_stage):
      stride = 2 if (s > 0 and b == 0) else 1
      n += 1
      p = f"b{n}_"
      layers += [Layer("conv", p + "conv1", (prev,), features=width, kernel=3, stride=stride,
                       padding=1, use_bias=False),
                 Layer("bn", p + "bn1"), Layer("relu", p + "relu1"),
                 Layer("conv", p + "conv2", features=width, kernel=3, stride=1, padding=1,
                       use_bias=False),
                 Layer("bn", p + "bn2")]
      shortcut = prev
      if stride != 1 or cin != width:
        layers += [Layer("conv", p + "sc_conv", (prev,), features=width, kernel=1, stride=stride,
                         padding=0, use_bias=False),
                   Layer("bn", p + "sc_bn")]
        shortcut = p + "sc_bn"
      layers += [Layer("add", p + "add", (p + "bn2", shortcut)), Layer("relu", p + "relu")]
      prev, cin = p + "relu", width
  layers += [Layer("avgpool", "pool", kernel=pool), Layer("flatten", "flatten"),
             Layer("dense", "fc", features=num_classes)]
  return tuple(layers)


def resnet18_nr(num_classes: int = 10, in_planes: int = 4) -> tuple[Layer, ...]:
  """ResNet-18-NR: alpha-beta-CROWN's narrow `cifar_resnet18` (in_planes=2) at double width.

  Four stages of two BasicBlocks with in_planes x (1, 2, 4, 8) channels,
  4x4 average pooling and a linear head.
  """
  widths = tuple(in_planes * m for m in (1, 2, 4, 8))
  return resnet(widths, 2, num_classes)


def mlp_tiny(num_classes: int = 10, hidden: int = 16) -> tuple[Layer, ...]:
  return (Layer("flatten", "flatten"), Layer("dense", "fc1", features=hidden),
          Layer("relu", "relu1"), Layer("dense", "fc2", features=hidden),
          Layer("relu", "relu2"), Layer("dense", "fc3", features=num_classes))


def cnn_tiny(num_classes: int = 10, width: int = 4) -> tuple[Layer, ...]:
  """Two Conv-BN-ReLU blocks (one strided) and two dense layers: CNN-7L in miniature."""
  return tuple(conv_bn_relu(1, width, 3, 1) + conv_bn_relu(2, 2 * width, 4, 2) + [
      Layer("flatten", "flatten"), Layer("dense", "fc1", features=16),
      Layer("relu", "relu_fc1"), Layer("dense", "fc2", features=num_classes)])


def resnet_tiny(num_classes: int = 10) -> tuple[Layer, ...]:
  return resnet((2, 4), 1, num_classes, pool=2)
