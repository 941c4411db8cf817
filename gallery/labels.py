"""Which individual each indexed image belongs to, as the integer codes gallery.rank takes,
and which viewpoint (side of the animal) it shows.

faiss answers with image ids; ranking needs individual codes. An array indexed by image id
turns one into the other in one numpy gather, and renames or merges only rewrite entries of
that array: the vectors never move. A second array holds each image's viewpoint code (-1:
unknown), from which a search builds its mask of compatible photos.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gallery.viewpoints import UNKNOWN, compatible_codes

__all__ = ["Labels"]


class Labels:
    def __init__(self) -> None:
        self.names: list[str] = []  # code → individual id
        self.species: list[str | None] = []  # code → species
        self._codes: dict[str, int] = {}
        self.of_image = np.full(0, -1, dtype=np.int32)  # image id → code, -1 when none
        self._masks: dict[str, np.ndarray] = {}  # species → bool mask over image ids
        self.viewpoints: list[str] = []  # viewpoint code → label
        self._viewpoint_codes: dict[str, int] = {}
        self.viewpoint_of_image = np.full(0, -1, dtype=np.int16)  # image id → code, -1: unknown
        self._viewpoint_masks: dict[str, np.ndarray] = {}

    def code(self, individual_id: str, species: str | None = None) -> int:
        """The code of an individual, created on first sight."""
        code = self._codes.get(individual_id)
        if code is None:
            code = len(self.names)
            self._codes[individual_id] = code
            self.names.append(individual_id)
            self.species.append(species)
        return code

    def known(self, individual_id: str) -> bool:
        return individual_id in self._codes

    def set_species(self, individual_id: str, species: str | None) -> None:
        self.species[self.code(individual_id)] = species
        self._masks.clear()

    def assign(self, image_ids: np.ndarray, codes: np.ndarray | int) -> None:
        image_ids = np.asarray(image_ids, dtype=np.int64)
        if len(image_ids) == 0:
            return
        top = int(image_ids.max()) + 1
        if top > len(self.of_image):
            size = max(top, 2 * len(self.of_image))
            grown = np.full(size, -1, dtype=np.int32)
            grown[: len(self.of_image)] = self.of_image
            self.of_image = grown
        self.of_image[image_ids] = codes
        self._masks.clear()
        self._viewpoint_masks.clear()

    def clear(self, image_ids: np.ndarray) -> None:
        image_ids = np.asarray(image_ids, dtype=np.int64)
        image_ids = image_ids[(image_ids >= 0) & (image_ids < len(self.of_image))]
        self.of_image[image_ids] = -1
        inside = image_ids[image_ids < len(self.viewpoint_of_image)]
        self.viewpoint_of_image[inside] = -1
        self._masks.clear()
        self._viewpoint_masks.clear()

    def viewpoint_code(self, viewpoint: str) -> int:
        """The code of a viewpoint label, created on first sight."""
        code = self._viewpoint_codes.get(viewpoint)
        if code is None:
            code = len(self.viewpoints)
            self._viewpoint_codes[viewpoint] = code
            self.viewpoints.append(viewpoint)
        return code

    def set_viewpoints(self, image_ids: np.ndarray, viewpoints: Sequence[str | None]) -> None:
        """Record the viewpoint of each image (None: unknown)."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        if len(image_ids) == 0:
            return
        codes = np.asarray(
            [-1 if v is None else self.viewpoint_code(v) for v in viewpoints], dtype=np.int16
        )
        top = int(image_ids.max()) + 1
        if top > len(self.viewpoint_of_image):
            size = max(top, len(self.of_image))
            grown = np.full(size, -1, dtype=np.int16)
            grown[: len(self.viewpoint_of_image)] = self.viewpoint_of_image
            self.viewpoint_of_image = grown
        self.viewpoint_of_image[image_ids] = codes
        self._viewpoint_masks.clear()

    def viewpoint_mask(self, viewpoint: str) -> np.ndarray:
        """Bool mask over image ids: the photos a query of this viewpoint may be compared
        with, those of the same viewpoint or of none recorded (cached). A query of unknown
        viewpoint takes every photo: no mask."""
        mask = self._viewpoint_masks.get(viewpoint)
        if mask is None:
            known = self._viewpoint_codes.get(viewpoint)
            size = max(len(self.of_image), len(self.viewpoint_of_image))
            codes = np.full(size, UNKNOWN, dtype=np.int16)
            codes[: len(self.viewpoint_of_image)] = self.viewpoint_of_image
            # A label no photo has yet matches only the photos of unknown viewpoint.
            query = np.int16(len(self.viewpoints) if known is None else known)
            mask = compatible_codes(query, codes)
            self._viewpoint_masks[viewpoint] = mask
        return mask

    def visible(self, viewpoint: str | None) -> np.ndarray:
        """(individuals,) bool by code: the individual has an indexed photo that a query of
        this viewpoint is compared with."""
        seen = np.zeros(len(self.names), dtype=bool)
        present = self.of_image >= 0
        if viewpoint is not None:
            present &= self.viewpoint_mask(viewpoint)[: len(present)]
        seen[self.of_image[present]] = True
        return seen

    def count_compatible(self, viewpoint: str | None) -> int:
        """Indexed photos a query of this viewpoint is compared with."""
        present = self.of_image >= 0
        if viewpoint is None:
            return int(present.sum())
        return int((present & self.viewpoint_mask(viewpoint)[: len(present)]).sum())

    def codes_of(self, image_ids: np.ndarray) -> np.ndarray:
        """Individual codes of faiss hits; -1 for no hit (id -1) or an unknown image."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        inside = (image_ids >= 0) & (image_ids < len(self.of_image))
        if not inside.any():
            return np.full(image_ids.shape, -1, dtype=np.int32)
        return np.where(inside, self.of_image[np.where(inside, image_ids, 0)], -1)

    def species_mask(self, species: str) -> np.ndarray:
        """Bool mask over image ids: the image's individual is of this species (cached)."""
        mask = self._masks.get(species)
        if mask is None:
            of_code = np.asarray([s == species for s in self.species] + [False], dtype=bool)
            # code -1 indexes the trailing False.
            mask = of_code[self.of_image]
            self._masks[species] = mask
        return mask
