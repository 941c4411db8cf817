"""How an encounter (several photos of one sighting) is answered: the fusion rule and the
`new_individual` threshold, shared by POST /identify and `whaleid predict --photos`.

Fusing P photos moves a known animal's score (its best photos count) and a new animal's best
impostor's by different amounts, so the best threshold depends on P. Training tunes it on the
open-set validation for encounters of 2 and 3 photos, fused with `ENCOUNTER_FUSION` as here
(training.evaluate.encounter_offsets), and the bundle stores each as an offset from the
single-photo threshold tuned on the same photos (`Manifest.encounter_offsets`). An encounter's
threshold is the single-photo one for the species or the compatible sub-gallery's size, plus
the offset of the largest tuned size at or below its number of photos: a bundle without
offsets, or one photo, gets the single-photo threshold.
"""

from __future__ import annotations

from app.manifest import EncounterOffset, Manifest
from gallery.encounter import Fusion

__all__ = ["ENCOUNTER_FUSION", "encounter_offset", "encounter_threshold"]

# top2: one blurred or off-angle photo cannot veto, one lucky impostor match cannot decide
# (gallery/encounter.py); the measured choice between max, mean and top2 belongs here.
# Training tunes the bundle's encounter offsets with this rule: changing it means re-exporting.
ENCOUNTER_FUSION: Fusion = "top2"


def encounter_threshold(
    manifest: Manifest, species: str | None, gallery_images: int, photos: int
) -> float:
    """The threshold for an encounter of `photos` photos searched against `gallery_images`
    compatible gallery photos. Encounters are ranked by global similarity even where the
    bundle re-ranks single photos, so this is the global threshold and its offsets."""
    single = manifest.threshold_for(species, gallery_images)
    return single + encounter_offset(manifest.encounter_offsets, photos)


def encounter_offset(offsets: list[EncounterOffset], photos: int) -> float:
    """The offset of the largest size tuned at or below `photos`; 0 where none is."""
    tuned = [o for o in offsets if o.photos <= photos]
    return max(tuned, key=lambda o: o.photos).offset if tuned else 0.0
