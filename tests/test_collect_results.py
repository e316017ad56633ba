"""The engine's scored points as padded result arrays: ids of every kind Qdrant has, versions, short rows."""
import uuid
from dataclasses import dataclass

import numpy as np

from amips_plugin.adapters.base import collect_results


@dataclass
class Hit:
    id: object
    score: float
    version: int | None = 3


def test_full_rows_of_integer_ids_keep_ids_scores_and_versions_in_order():
    result = collect_results([[Hit(7, 0.9), Hit(2, 0.5)], [Hit(0, 0.4, 1), Hit(5, 0.1, 2)]], 2)
    assert result.ids.dtype == np.int64 and result.ids.tolist() == [[7, 2], [0, 5]]
    np.testing.assert_allclose(result.scores, [[0.9, 0.5], [0.4, 0.1]])
    assert result.versions.tolist() == [[3, 3], [1, 2]]


def test_an_id_beyond_int64_and_uuids_become_text_and_an_unset_version_reads_0():
    big, text = 2**63 + 5, uuid.UUID(int=12)
    result = collect_results([[Hit(big, 0.9, None), Hit(3, 0.5)]], 2)
    assert result.ids.tolist() == [[str(big), "3"]] and result.versions.tolist() == [[0, 3]]
    result = collect_results([[Hit(text, 0.9)], [Hit(4, 0.2)]], 1)
    assert result.ids.tolist() == [[str(text)], ["4"]]


def test_short_rows_are_padded_and_a_longer_answer_is_cut_to_the_limit():
    result = collect_results([[Hit(1, 0.9)], [Hit(2, 0.8), Hit(3, 0.7), Hit(4, 0.6)]], 2)
    assert result.ids.tolist() == [[1, -1], [2, 3]]
    assert result.scores[0, 1] == -np.inf and result.versions.tolist() == [[3, 0], [3, 3]]
