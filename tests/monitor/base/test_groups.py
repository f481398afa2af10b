"""Groups: all traffic, full segments, every single label and configured label sets, named like segments."""

from __future__ import annotations

from monitor.base.groups import ALL, ROLLUP, SEGMENT, Grouping, contains, segment_parts

SEGMENTS = [
    "tenant=a/region=eu/lang=zh",
    "tenant=b/region=eu/lang=zh",
    "tenant=a/region=us/lang=en",
    "tenant=c/lang=zh",  # no region
]


def members(grouping: Grouping, name: str) -> set[str]:
    index = grouping.names.index(name)
    return {segment for position, segment in enumerate(grouping.segments) if index in grouping.groups_of(position)}


def test_every_single_label_and_each_configured_set_is_rolled_up() -> None:
    grouping = Grouping.of(SEGMENTS, [["region", "lang"]])

    kinds = dict(zip(grouping.names, grouping.kinds, strict=True))
    assert kinds["*"] == ALL
    assert all(kinds[segment] == SEGMENT for segment in SEGMENTS)
    assert members(grouping, "lang=zh") == {SEGMENTS[0], SEGMENTS[1], SEGMENTS[3]}
    assert members(grouping, "tenant=a") == {SEGMENTS[0], SEGMENTS[2]}
    assert members(grouping, "region=eu/lang=zh") == {SEGMENTS[0], SEGMENTS[1]}
    assert members(grouping, "*") == set(SEGMENTS)
    assert {name for name, kind in kinds.items() if kind == ROLLUP} == {
        "tenant=a", "tenant=b", "tenant=c", "region=eu", "region=us", "lang=zh", "lang=en",
        "region=eu/lang=zh", "region=us/lang=en",
    }  # fmt: skip
    # a segment without a region is in no region roll-up, but in the others
    assert grouping.names.index("tenant=c") in grouping.groups_of(3)
    assert not any(name.startswith("region=") for name in (grouping.names[g] for g in grouping.groups_of(3)))


def test_a_roll_up_named_like_a_segment_keeps_the_name_and_holds_both() -> None:
    """`tenant=a/lang=zh` is a full segment (records without a region) and the tenant+lang roll-up."""
    segments = ["tenant=a/lang=zh", "tenant=a/region=eu/lang=zh"]
    grouping = Grouping.of(segments, [["tenant", "lang"]])

    assert grouping.names.count("tenant=a/lang=zh") == 1
    assert grouping.kinds[grouping.names.index("tenant=a/lang=zh")] == ROLLUP
    assert members(grouping, "tenant=a/lang=zh") == set(segments)
    # each segment is in exactly one group per level: no sample counted twice within a group
    for position in range(len(segments)):
        groups = grouping.groups_of(position)
        assert len(groups) == len(set(groups))


def test_label_set_order_follows_the_segment_and_duplicates_collapse() -> None:
    grouping = Grouping.of(["region=eu/lang=zh"], [["lang", "region"], ["region", "lang"], ["lang"], []])
    assert "region=eu/lang=zh" in grouping.names
    rolled = [level.labels for level in grouping.levels if level.kind == ROLLUP]
    assert rolled == [("region",), ("lang",), ("lang", "region")]


def test_parts_and_containment() -> None:
    assert segment_parts("tenant=h:1f/region=sg/lang=zh") == [("tenant", "h:1f"), ("region", "sg"), ("lang", "zh")]
    assert contains("lang=zh", "tenant=a/lang=zh") and contains("*", "lang=en")
    assert not contains("region=eu/lang=zh", "tenant=a/lang=zh")


def test_no_segments() -> None:
    grouping = Grouping.of([])
    assert grouping.names == ("*",) and grouping.segments == ()
