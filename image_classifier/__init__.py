"""The classifier's parts, one concern per module; `classifier.py` at the top is the public entry.

decoding      people's photos -> upright RGB, with the size limits and plain-words errors
preprocessing RGB -> the model's input tensor (torchvision's preset, or the same fused for speed)
labels        the 1,000 ImageNet display labels
engines       how the forward pass runs (PyTorch, OpenVINO) and the on-disk conversion cache
catalogue     torchvision's ImageNet models, their weights and published figures
model_set     the models a server offers: loaded on first use, kept within a memory budget
"""
