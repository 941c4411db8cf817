"""Synthetic photo-ID catalogues that behave like real fin photos (`whaleid synth`).

`shapes` draws species' fin families and each individual's silhouette and marks, `render`
composes one photo of a fin, `writer` puts a whole catalogue on disk. numpy and Pillow only.
"""

from training.synth.writer import CatalogueSummary, SynthError, make_catalogue

__all__ = ["CatalogueSummary", "SynthError", "make_catalogue"]
