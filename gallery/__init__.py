"""The gallery: a durable catalogue of known individuals, its faiss index, and the ranking.

Plain numpy in, numpy out. Never imports torch, timm or ultralytics, nor app or training.

- gallery.gallery   the facade: `Gallery.open(url, fingerprint=, dim=)`, register, search, edits
- gallery.store     durable records and the change log (SQLite default, PostgreSQL shared)
- gallery.index     faiss flat / IVF / HNSW over image ids; gallery.labels  image id → individual
- gallery.snapshot  index snapshots for fast start;    gallery.sync    following other writers
- gallery.photos    original photos, content addressed; gallery.reembed  moving to a new model
- gallery.rank, gallery.metrics  ranking with new_individual and MAP@5 (shared with training)
"""
