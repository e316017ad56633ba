"""The one freshness rule (amips_plugin/freshness.py), case by case."""
from amips_plugin.adapters.base import WriteStamp
from amips_plugin.core.manifest_schema import ManifestSchema, PolicyManifestSchema
from amips_plugin.freshness import stale_reason

STAMP = WriteStamp("ab" * 16, 3)
FINGERPRINT = {"count": 10, "dim": 4, "sha256": "0" * 64}


def manifest(schema=ManifestSchema, **changes):
    return schema.model_validate({"version": 1, "stale": False, "bound_to": STAMP.as_manifest(),
                                  "fingerprint": FINGERPRINT, **changes})


def test_fresh_only_while_bound_to_the_collections_stamp_and_count():
    assert stale_reason(manifest(), STAMP, 10) is None
    assert stale_reason(manifest(), STAMP, 10, FINGERPRINT) is None
    assert "changed" in stale_reason(manifest(stale=True), STAMP, 10)
    assert "other points" in stale_reason(manifest(), STAMP.bumped(), 10)  # written since
    assert "other points" in stale_reason(manifest(), WriteStamp("cd" * 16, 3), 10)  # another collection
    assert "other points" in stale_reason(manifest(), None, 10)  # the stamp is gone (shard re-created)
    assert "other points" in stale_reason(manifest(bound_to=None), STAMP, 10)  # built before stamps
    assert "10 keys, the collection has 11" in stale_reason(manifest(), STAMP, 11)  # other clients' writes
    assert "fingerprint" in stale_reason(manifest(), STAMP, 10, {**FINGERPRINT, "sha256": "1" * 64})


def test_a_store_without_stamps_judges_by_the_other_rules():
    assert stale_reason(manifest(bound_to=None), None, 10) is None
    assert stale_reason(manifest(bound_to=None), None, 9) is not None


def test_stored_stamps_are_parsed_strictly():
    assert WriteStamp.parse(STAMP.as_manifest()) == STAMP
    for bad in (None, [], {"collection": "AB" * 16, "generation": 1}, {"collection": "ab" * 16, "generation": -1},
                {"collection": "ab" * 16, "generation": True}, {"collection": "ab" * 16, "generation": 1.0},
                {"collection": "../x", "generation": 1}, {"collection": "ab" * 16}):
        assert WriteStamp.parse(bad) is None


def test_an_artifact_reading_the_model_is_stale_once_the_model_is_another_or_gone():
    """Rule 6: a serving policy whose certificate reads σ̂ records the model's SHA-256 (one rule for the query
    path and `status`, which once each compared it by hand)."""
    reads = manifest(PolicyManifestSchema, kind="plain", ef=8, model_sha256="a" * 64)
    assert stale_reason(reads, STAMP, 10, model_sha256="a" * 64) is None
    assert stale_reason(reads, STAMP, 10) is None  # the model not looked at
    assert "model it reads changed" in stale_reason(reads, STAMP, 10, model_sha256="b" * 64)
    assert "model it reads changed" in stale_reason(reads, STAMP, 10, model_sha256=None)  # dropped
    assert stale_reason(manifest(), STAMP, 10, model_sha256="b" * 64) is None  # reads no model
    assert stale_reason(manifest(PolicyManifestSchema, kind="plain", ef=8), STAMP, 10, model_sha256="b" * 64) is None
