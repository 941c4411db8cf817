"""How an encounter (several photos of one sighting) is answered: the fusion rule and the
`new_individual` threshold, shared by POST /identify and `whaleid predict --photos`.

The threshold is the hook for a curve tuned on encounters: fusing P photos raises a known
animal's score (and, less, an impostor's), so the best threshold depends on P. No bundle
carries an encounter curve yet, so an encounter uses the single-photo threshold for the
compatible sub-gallery's size, which is conservative (more `new_individual` than needed).
When the manifest gains one, `encounter_threshold` is the one place that reads it.
"""

from __future__ import annotations

from app.manifest import Manifest
from gallery.encounter import Fusion

__all__ = ["ENCOUNTER_FUSION", "encounter_threshold"]

# top2: one blurred or off-angle photo cannot veto, one lucky impostor match cannot decide
# (gallery/encounter.py); the measured choice between max, mean and top2 belongs here.
ENCOUNTER_FUSION: Fusion = "top2"


def encounter_threshold(
    manifest: Manifest, species: str | None, gallery_images: int, photos: int
) -> float:
    """The threshold for an encounter of `photos` photos searched against `gallery_images`
    compatible gallery photos (see the module's note: `photos` is not used yet)."""
    del photos  # no encounter curve in any bundle yet
    return manifest.threshold_for(species, gallery_images)
