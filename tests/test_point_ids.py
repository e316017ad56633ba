"""Point ids as arrays: UUID hits become their canonical text, one by one or vectorised alike."""
import uuid

import numpy as np
import pytest

from amips_plugin.core import point_ids


@pytest.mark.parametrize("count", [2, 63, 64, 5000])
def test_uuid_hits_become_the_text_str_gives_them_below_and_above_the_vectorised_size(count):
    rng = np.random.default_rng(count)
    values = [uuid.UUID(int=int.from_bytes(rng.bytes(16), "big")) for _ in range(count - 2)]
    values += [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]  # every digit 0, every digit f
    ids = point_ids.as_id_array(values)
    assert ids.dtype == point_ids.TEXT_DTYPE and ids.shape == (count,)
    assert ids.tolist() == [str(v) for v in values]
