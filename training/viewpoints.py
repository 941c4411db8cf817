"""What viewpoints change in training: the ArcFace classes and which photos may be flipped.

The two sides of an animal carry different marks. One class for both sides asks the network to
map two patterns to one centre, which it can only do with cues that do not tell animals apart,
so with viewpoints each side is its own class (data.class_by, as Wildbook's MiewID trains on
name + viewpoint). The split stays by individual (training.splits): both sides of an animal
are always on the same side of it.

A horizontal flip turns a left side into a right side that no camera saw (for a dorsal fin a
mirrored left face has the left face's marks, not the right face's), so with viewpoints a
photo is flipped only when augment.flip_swaps_viewpoint maps its viewpoint, and the flipped
photo then belongs to the mapped viewpoint's class of the same individual.
"""

from __future__ import annotations

from collections.abc import Sequence

from gallery.catalogue import Photo
from gallery.viewpoints import any_viewpoint
from training.config import AugmentConfig, DataConfig
from training.runs import Labels

__all__ = ["by_viewpoint", "flip_classes"]


def by_viewpoint(cfg: DataConfig, photos: Sequence[Photo]) -> bool:
    """Whether classes are by individual and viewpoint: data.class_by, where `auto` means yes
    when any photo has a viewpoint label."""
    if cfg.class_by == "auto":
        return any_viewpoint([p.viewpoint for p in photos])
    return cfg.class_by == "individual_viewpoint"


def flip_classes(photos: Sequence[Photo], labels: Labels, cfg: AugmentConfig) -> list[int | None]:
    """The class each photo has once flipped horizontally, None where it must not be flipped.

    Without viewpoints a flip keeps the class (and happens at augment.hflip_p). With them, only
    photos whose viewpoint flip_swaps_viewpoint maps are flipped, into the class of the mapped
    viewpoint (with classes by individual: the same class); a photo whose mirrored class was
    never trained on is not flipped, since no class holds what it would become."""
    own = labels.codes(list(photos))
    if not any_viewpoint([p.viewpoint for p in photos]):
        return list[int | None](own)
    code = labels.code()
    out: list[int | None] = []
    for photo, mine in zip(photos, own, strict=True):
        mirrored = cfg.flip_swaps_viewpoint.get(photo.viewpoint or "")
        if mirrored is None or photo.viewpoint is None:
            out.append(None)
        elif labels.viewpoints is None:
            out.append(mine)
        else:
            out.append(code.get((photo.individual_id, mirrored)))
    return out
