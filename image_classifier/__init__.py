"""The classifier's parts, one concern per module; `classifier.py` at the top is the public entry.

decoding      people's photos -> upright RGB, with the size limits and plain-words errors
preprocessing RGB -> the model's input tensor (torchvision's preset, or the same fused for speed)
labels        the 1,000 ImageNet display labels
engines       how the forward pass runs (PyTorch, OpenVINO), and the check that no NaN becomes an answer
tuner         which engine runs a model on this machine: timed at first start, checked, cached
model_cache   the verified cache of converted models and decisions (checksums, atomic, read-only safe)
heatmaps      where the model looked: class activation maps, or Grad-CAM through the model's tail
catalogue     torchvision's ImageNet models, their weights and published figures
model_set     the models a server offers: loaded on first use, kept within a memory budget
live          the webcam stream's frames: newest first, photos ahead of frames, the readout's figures
batch         many photos into a CSV / JSONL / Parquet table, decoding overlapped with batched forwards
ray_batch     the same job on Ray Data, locally or on a cluster (optional: requirements-ray.txt)
page          the web page (Gradio): one module per tab, the API, the server's lifespan
shrink_uploads.js  the page's side of uploads: photos shrunk, upright and without metadata in the browser
"""
