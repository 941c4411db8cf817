"""The identification service: decoding, preprocessing, onnxruntime inference and the HTTP API.

Never imports torch, timm or ultralytics (see DESIGN.md): the serving image does not have them.
"""
