"""VocabLayout: contiguous blocks, LaVIT's numbers, slice masks, round trips, errors."""

import pytest
import torch

from lavit.vocab import LAVIT_LAYOUT, VocabLayout


def test_lavit_numbers():
    v = LAVIT_LAYOUT
    assert (v.image_start_id, v.image_end_id, v.code_start, v.total) == (32000, 32001, 32002, 48386)
    assert v.codes_to_ids(torch.tensor([0, 16383])).tolist() == [32002, 48385]


def test_blocks_are_contiguous_and_masks_are_slices():
    v = VocabLayout(text_size=100, num_codes=10, specials=("<img>", "</img>", "<gen>"), num_locations=4)
    assert (v.special_start, v.code_start, v.code_end, v.location_start, v.total) == (100, 103, 113, 113, 117)
    allowed = v.image_mask()
    assert allowed.nonzero().flatten().tolist() == [v.image_end_id, *range(103, 113)]
    assert v.text_mask().sum() == 100 and not v.text_mask()[100:].any()
    ids = torch.arange(v.total)
    assert v.is_code(ids).nonzero().flatten().tolist() == list(range(103, 113))
    codes = torch.randint(0, 10, (3, 5))
    assert torch.equal(v.ids_to_codes(v.codes_to_ids(codes)), codes)
    assert VocabLayout.from_dict(v.to_dict()) == v


def test_errors_name_the_problem():
    v = VocabLayout(text_size=100, num_codes=10)
    with pytest.raises(ValueError, match=r"\[0, 10\).*max 10"):
        v.codes_to_ids(torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="outside the image-code block"):
        v.ids_to_codes(torch.tensor([5]))
    with pytest.raises(KeyError, match="<loc>"):
        v.special_id("<loc>")
    with pytest.raises(ValueError, match="needs the special token '</img>'"):
        VocabLayout(text_size=10, num_codes=4, specials=("<img>",))
