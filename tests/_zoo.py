"""One model of each distinct architecture of the zoo, for the costlier checks that need not run
on every depth (ONNX export, fx tracing, the second input shape): the other CIFAR ResNet depths
(32, 44, 56, 110), vgg16 (vgg16-lite at twice the width) and resnet34 (resnet18 with more
blocks) run the same code as the models listed here. Every zoo model still prunes
(test_zoo_pruning.py), runs forward and backward (test_models.py) and saves and reloads
(test_export.py)."""

ARCHITECTURES = ["scnnb", "vgg16-lite", "resnet20", "resnet20-dwse", "resnet18", "resnet50",
                 "mobilenetv2"]
