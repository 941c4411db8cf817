"""The gallery: a durable catalogue of known individuals, its faiss index, and the ranking.

Plain numpy in, numpy out. Never imports torch, timm or ultralytics.
"""
