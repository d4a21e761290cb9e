import pytest

from tunekit.errors import SpecError
from tunekit.resolutions import parse_resolutions


@pytest.mark.parametrize("spec, sides", [
    ("112..448", [112, 168, 224, 280, 336, 392, 448]),
    ("112..448:32", list(range(112, 449, 32)) + [448]),
    ("112..200", [112, 168, 200]),
    ("160,224,320", [160, 224, 320]),
    ("320, 160,160", [160, 320]),
    ("224", [224]),
    ("224..224", [224]),
])
def test_valid_specs(spec, sides):
    assert parse_resolutions(spec) == sides


@pytest.mark.parametrize("spec, message", [
    ("448..112", "448 > 112"),
    ("0", "outside 1..4096"),
    ("abc", "not an integer"),
    ("112..448:0", "step must be positive"),
    ("112..448:x", "not an integer"),
    ("5000", "outside 1..4096"),
    ("224..5000", "outside 1..4096"),
    ("", "empty"),
    ("-3", "outside"),
    (",", "bad resolution spec"),
    ("224x160", r"non-square resolutions \(224x160\) are not supported"),
])
def test_bad_specs(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_resolutions(spec)


def test_patch_multiple():
    assert parse_resolutions("160..224:32", multiple_of=16) == [160, 192, 224]
    with pytest.raises(SpecError, match="multiples of the patch size 16"):
        parse_resolutions("112..448", multiple_of=16)  # 168 and 280 are not multiples of 16
