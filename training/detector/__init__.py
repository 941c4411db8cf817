"""The YOLO cropper: dataset from a catalogue's boxes, training, cropping, ONNX export.

Every module here imports ultralytics (and so torch) lazily, through `training.detector.yolo`,
which keeps it off the network.
"""
