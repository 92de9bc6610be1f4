"""Fusion over prompt sources (``data.sources``): ``verify`` uses a source's own verifier
against its reference, fuses a source without one label-free (its reference never read), and
reports per source name; ``vote`` works on sources as on any family."""

from __future__ import annotations

from avocado_llm.fusion import fuse


def _table(records):
    r = records()
    # "sums": a number verifier; the lone right answer beats two agreeing wrong ones.
    r.add("qwen-tiny", "s1", "The answer is 12.", family="sums", gold="12")
    r.add("gemma-tiny", "s1", "The answer is 13.", family="sums", gold="12")
    r.add("gpt-oss-tiny", "s1", "The answer is 13.", family="sums", gold="12")
    # "open": no verifier; a reference that is there (a chat's last turn) must not be read.
    r.add("qwen-tiny", "o1", "Blue.", family="open", gold="Red.")
    r.add("gemma-tiny", "o1", "Blue.", family="open", gold="Red.")
    r.add("gpt-oss-tiny", "o1", "Red.", family="open", gold="Red.")
    return r.table()


def test_verify_uses_each_sources_verifier_and_votes_without_one(records) -> None:
    sources = {"sums": "number", "open": "none"}
    examples, report = fuse(_table(records), "verify", unverified=[], sources=sources)
    by_family = {ex.family: ex for ex in examples}
    assert by_family["sums"].target == "The answer is 12."
    assert by_family["sums"].strategy == "verify"
    assert by_family["open"].target == "Blue."  # the majority, not the reference
    assert by_family["open"].strategy == "vote"
    assert set(report.families) == {"sums", "open"}
    assert report.families["sums"].reliability["qwen-tiny"] == 1.0
    assert report.families["sums"].target_accuracy == 1.0
    assert report.families["open"].target_accuracy is None


def test_a_family_that_is_no_source_and_no_world_family_is_fused_label_free(records) -> None:
    """Records of a source the recipe no longer names: their gold is not read either."""
    examples, _ = fuse(_table(records), "verify", unverified=[], sources={"sums": "number"})
    assert {ex.family: ex.target for ex in examples}["open"] == "Blue."


def test_vote_on_sources(records) -> None:
    sources = {"sums": "number", "open": "none"}
    examples, report = fuse(_table(records), "vote", unverified=[], sources=sources)
    assert {ex.family: ex.target for ex in examples} == {
        "sums": "The answer is 13.",
        "open": "Blue.",
    }
    assert set(report.families) == {"sums", "open"}
