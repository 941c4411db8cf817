"""`whaleid export`'s re-ranking options, parsed without torch: defaults, and the sides and
counts the extractor cannot take refused before minutes of exporting."""

from __future__ import annotations

import pytest

from training.commands.export import build_parser


def test_matcher_options_default_to_none_and_sensible_values() -> None:
    args = build_parser().parse_args(["--run", "r", "--out", "o"])
    assert args.matcher is None
    args = build_parser().parse_args(["--run", "r", "--out", "o", "--matcher", "disk"])
    assert (args.matcher, args.keypoints, args.matcher_side) == ("disk", 512, 512)
    assert (args.local_method, args.shortlist, args.fusion) == ("lightglue", 20, "auto")


@pytest.mark.parametrize(
    "bad",
    [
        ["--matcher", "sift"],
        ["--matcher", "aliked", "--matcher-side", "250"],
        ["--matcher", "aliked", "--keypoints", "0"],
        ["--matcher", "aliked", "--shortlist", "-1"],
        ["--matcher", "aliked", "--local-method", "ransac"],
        ["--matcher", "aliked", "--fusion", "max"],
    ],
)
def test_bad_matcher_options_are_refused(bad: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--run", "r", "--out", "o", *bad])
    assert "error" in capsys.readouterr().err
