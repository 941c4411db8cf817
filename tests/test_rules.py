"""The records' rules, checked in one place (gallery.rules), and the HTTP schema stating them."""

from __future__ import annotations

import pytest

from gallery.errors import GalleryInputError
from gallery.rules import (
    ID_MAX_LENGTH,
    ID_PATTERN,
    LABEL_MAX_LENGTH,
    METADATA_MAX_BYTES,
    check_individual_id,
    check_label,
    check_metadata,
)


def test_individual_ids() -> None:
    for good in ("fin_0042", "Moby", "a", "x" * ID_MAX_LENGTH, "cadddb1636b9", "a.b:c-d"):
        assert check_individual_id(good) == good
    bad = {
        "new_individual": "reserved",
        "x" * (ID_MAX_LENGTH + 1): str(ID_MAX_LENGTH),
        "": "non-empty",
        "has space": "letters, digits",
        "a/b": "letters, digits",
        "-lead": "letters, digits",
    }
    for value, message in bad.items():
        with pytest.raises(GalleryInputError, match=message):
            check_individual_id(value)
    with pytest.raises(GalleryInputError, match=r"^target id"):
        check_individual_id("new_individual", field="target id")


def test_labels_and_metadata() -> None:
    assert check_label(None, field="species") is None
    assert check_label("  ", field="species") is None
    assert check_label(" bottlenose dolphin ", field="species") == "bottlenose dolphin"
    with pytest.raises(GalleryInputError, match="viewpoint"):
        check_label("y" * (LABEL_MAX_LENGTH + 1), field="viewpoint")
    with pytest.raises(GalleryInputError, match="control"):
        check_label("left\x00", field="viewpoint")
    assert check_metadata(None) is None and check_metadata({}) is None
    assert check_metadata({"survey": "2024-07"}) == {"survey": "2024-07"}
    with pytest.raises(GalleryInputError, match=str(METADATA_MAX_BYTES)):
        check_metadata({"notes": "z" * METADATA_MAX_BYTES})
    with pytest.raises(GalleryInputError, match="not JSON"):
        check_metadata({"when": object()})


def test_the_http_schema_states_the_same_id_rule() -> None:
    from app.main import create_app
    from app.settings import Settings

    def patterns(node: object) -> set[str]:
        if isinstance(node, dict):
            found = {node["pattern"]} if isinstance(node.get("pattern"), str) else set()
            return found.union(*(patterns(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(patterns(v) for v in node))
        return set()

    schema = create_app(Settings.model_construct(review_page=False)).openapi()
    found = patterns(schema)
    # The path ids and the registration's form field: one rule, no diverging copy of it.
    assert ID_PATTERN in found
    assert not [p for p in found if p != ID_PATTERN and "A-Za-z0-9" in p]
