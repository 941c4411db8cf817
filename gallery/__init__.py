"""The gallery: the catalogue reader, the records of known individuals, the durable store, the
faiss index replica and the ranking.

Plain numpy in, numpy out. Never imports torch, timm or ultralytics, nor app or training.

- gallery.catalogue  the one catalogue reader (train.csv, boxes) and its box rule
- gallery.rules      id, label and metadata rules (GalleryInputError: HTTP 422, CLI exit 2)
- gallery.individuals, gallery.images  the records' keyword-only functions (CLI and routes)
- gallery.gallery    `Gallery.open(url, fingerprint=, dim=)`: the records + an index replica
- gallery.replica    `IndexReplica`: build, snapshot, replay the change log, follow
- gallery.store      durable records and the change log (SQLite default, PostgreSQL shared)
- gallery.index      faiss flat / IVF / HNSW over image ids
- gallery.labels     image id → individual and viewpoint (the masks of compatible photos)
- gallery.snapshot   index snapshots for fast start;    gallery.sync    following other writers
- gallery.photos     original photos, content addressed; gallery.reembed  moving to a new model
- gallery.rank, gallery.metrics  ranking with new_individual and MAP@5 (shared with training)
- gallery.encounter, gallery.encounter_rank  several photos of one encounter → one ranking
"""
