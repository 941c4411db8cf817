"""Which individual each indexed image belongs to, as the integer codes gallery.rank takes.

faiss answers with image ids; ranking needs individual codes. An array indexed by image id
turns one into the other in one numpy gather, and renames or merges only rewrite entries of
that array: the vectors never move.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Labels"]


class Labels:
    def __init__(self) -> None:
        self.names: list[str] = []  # code → individual id
        self.species: list[str | None] = []  # code → species
        self._codes: dict[str, int] = {}
        self.of_image = np.full(0, -1, dtype=np.int32)  # image id → code, -1 when none
        self._masks: dict[str, np.ndarray] = {}  # species → bool mask over image ids

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

    def clear(self, image_ids: np.ndarray) -> None:
        image_ids = np.asarray(image_ids, dtype=np.int64)
        image_ids = image_ids[(image_ids >= 0) & (image_ids < len(self.of_image))]
        self.of_image[image_ids] = -1
        self._masks.clear()

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
