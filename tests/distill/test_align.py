"""Cross-tokenizer alignment by bytes (design A–D of the cross-tokenizer notes), on hand-built
tokenizers with known splits and on the shipped zoo tokenizers with real completions."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers import PreTrainedTokenizerFast as Fast

from avocado_llm.config import StudentConfig
from avocado_llm.distill.align import (
    CandidateMapper,
    KDTargets,
    collate_targets,
    kd_targets,
    pair_positions,
    piece_bytes,
    student_byte_spans,
    teacher_byte_spans,
)
from avocado_llm.distill.losses import distill_loss, sparse_kl
from avocado_llm.distill.student import student_tokenizer
from avocado_llm.world.corpus import world_corpus
from avocado_llm.world.tokenizers import BYTE_TOKENS

Zoo = dict[str, PreTrainedTokenizerBase]
LETTERS = [*"abcdefghijklmnopqrstuvwxyzT", "▁", "."]


def hand_tokenizer(pieces: list[str], byte_fallback: bool = True) -> Fast:
    """A SentencePiece-style Unigram student whose Viterbi split prefers the given pieces."""
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    vocab += [(p, -1.0) for p in pieces] + [(c, -5.0) for c in LETTERS if c not in pieces]
    vocab += [(b, -20.0) for b in BYTE_TOKENS] if byte_fallback else []
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=byte_fallback))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("▁*[^▁]+|▁+"), behavior="isolated")
    return Fast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def pieces_of(tok: PreTrainedTokenizerBase, text: str) -> list[str]:
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


def as_dict(targets: KDTargets, row: int) -> dict[int, float]:
    return {
        int(i): round(float(p), 6)
        for i, p in zip(targets.ids[row], targets.probs[row], strict=True)
        if p > 0
    }


def assert_tiles(spans: list[tuple[int, int]], text: str) -> None:
    assert spans[0][0] == 0 and spans[-1][1] == len(text.encode())
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


@pytest.fixture(scope="module")
def student() -> PreTrainedTokenizerBase:
    """The default student's tokenizer (Llama-2-style char BPE), trained on a small world corpus."""
    return student_tokenizer(StudentConfig(), world_corpus(0, per_family=200))


@pytest.fixture(scope="module")
def zoo(zoo_dir: Path) -> Zoo:
    return {
        name: AutoTokenizer.from_pretrained(zoo_dir / name)
        for name in ("qwen-tiny", "gemma-tiny", "gpt-oss-tiny")
    }


KIND = {"qwen-tiny": "byte_level", "gemma-tiny": "sentencepiece", "gpt-oss-tiny": "byte_level"}


def test_piece_bytes_of_each_kind() -> None:
    assert piece_bytes("Ġ4", "byte_level") == b" 4"
    assert piece_bytes("Ã©", "byte_level") == "é".encode()
    assert piece_bytes("▁cat", "sentencepiece") == b" cat"
    assert piece_bytes("<0xC3>", "sentencepiece") == b"\xc3"
    assert piece_bytes(" café", "text") == " café".encode()
    with pytest.raises(ValueError, match="unknown piece kind"):
        piece_bytes("x", "wordpiece")  # type: ignore[arg-type]


# The notes' tests 2–4 on hand-built students ---------------------------------------------------


def test_pairing_uses_only_shared_start_boundaries() -> None:
    tok = hand_tokenizer(["unh", "app", "iness"])
    assert pieces_of(tok, "unhappiness") == ["unh", "app", "iness"]
    teacher = teacher_byte_spans(["un", "happiness"], "text", "unhappiness")
    assert pair_positions(student_byte_spans(tok, "unhappiness"), teacher) == [(0, 0)]
    # Paired at 0, but "un" ends inside "unh" and "happiness" crosses its end: no KD there.
    out = kd_targets(
        tok,
        "unhappiness",
        ["un", "happiness"],
        [["un"], ["happiness"]],
        [[-0.1], [-0.1]],
        [-0.1, -0.1],
        "text",
    )
    assert out.positions.tolist() == []


def test_teacher_token_longer_uses_the_first_piece_and_skips_inner_positions() -> None:
    tok = hand_tokenizer(["un", "unhappy", "under", "happi", "ness"])
    assert pieces_of(tok, "unhappiness") == ["un", "happi", "ness"]
    top = ["unhappiness", "unhappy", "under"]
    out = kd_targets(
        tok,
        "unhappiness",
        ["unhappiness"],
        [top],
        [[math.log(p) for p in (0.5, 0.2, 0.2)]],
        [math.log(0.5)],
        "text",
    )
    un, unhappy, under = tok.convert_tokens_to_ids(["un", "unhappy", "under"])
    assert out.positions.tolist() == [0]
    assert as_dict(out, 0) == {un: 0.5, unhappy: 0.2, under: 0.2}
    assert out.rest.tolist() == pytest.approx([0.1])


def test_teacher_tokens_shorter_use_the_chain_rule() -> None:
    tok = hand_tokenizer(["un", "unhappiness", "the"])
    assert pieces_of(tok, "unhappiness") == ["unhappiness"]
    args = (
        tok,
        "unhappiness",
        ["un", "happiness"],
        [["un", "the"], ["happiness"]],
        [[math.log(0.6), math.log(0.2)], [math.log(0.5)]],
        [math.log(0.6), math.log(0.5)],
        "text",
    )
    out = kd_targets(*args)
    un, whole, the = tok.convert_tokens_to_ids(["un", "unhappiness", "the"])
    assert out.positions.tolist() == [0]
    assert as_dict(out, 0) == {un: 0.3, whole: 0.3, the: 0.2}
    assert float(out.probs.sum() + out.rest.sum()) == pytest.approx(1.0)
    assert kd_targets(*args, chain_rule=False).positions.tolist() == []


def test_two_candidates_with_one_student_token_share_one_slot() -> None:
    tok = hand_tokenizer(["▁the", "▁a"])
    the, a = tok.convert_tokens_to_ids(["▁the", "▁a"])
    out = kd_targets(
        tok,
        " the",
        ["Ġthe"],
        [["Ġthe", "Ġtheir", "Ġa"]],
        [[math.log(0.5), math.log(0.3), math.log(0.1)]],
        [math.log(0.5)],
        "byte_level",
    )
    assert out.ids.shape[1] == 2 and as_dict(out, 0) == {the: 0.8, a: 0.1}


def test_partial_utf8_goes_to_the_byte_token_or_rest() -> None:
    with_bytes = CandidateMapper(hand_tokenizer(["▁the"]), "byte_level")
    assert with_bytes.student_id("Ã", b"") == with_bytes.tokenizer.convert_tokens_to_ids("<0xC3>")
    assert (
        CandidateMapper(hand_tokenizer(["▁the"], False), "byte_level").student_id("Ã", b"") is None
    )


def test_teacher_that_does_not_spell_the_completion_is_refused() -> None:
    tok = hand_tokenizer(["▁the"])
    with pytest.raises(ValueError, match="drop this teacher for this example"):
        kd_targets(
            tok,
            "the end.",
            ["the", "▁end"],
            [["the"], ["▁end"]],
            [[0.0], [0.0]],
            None,
            "sentencepiece",
        )


# The shipped tokenizers on real completions ---------------------------------------------------


@pytest.mark.parametrize("name", ["student", "qwen-tiny", "gemma-tiny", "gpt-oss-tiny"])
def test_cafe_emoji_bytes_tile_under_every_tokenizer(
    student: PreTrainedTokenizerBase, zoo: Zoo, name: str
) -> None:
    tok = student if name == "student" else zoo[name]
    text = "café 😀 The answer is 150."
    spans = student_byte_spans(tok, text)
    assert_tiles(spans, text)
    if name != "student":  # the pieces spell the same spans as the offsets
        assert teacher_byte_spans(pieces_of(tok, text), KIND[name], text) == spans


def test_byte_level_and_sentencepiece_spellings_of_the_map_to_one_student_id(
    student: PreTrainedTokenizerBase,
) -> None:
    the = student.convert_tokens_to_ids("▁the")
    assert CandidateMapper(student, "byte_level").student_id("Ġthe", b"") == the
    assert CandidateMapper(student, "sentencepiece").student_id("▁the", b"") == the
    assert CandidateMapper(student, "text").student_id(" the", b"") == the


def test_end_of_turn_is_mapped_explicitly_and_other_controls_go_to_rest(
    student: PreTrainedTokenizerBase, zoo: Zoo
) -> None:
    qwen = zoo["qwen-tiny"]
    mapper = CandidateMapper(student, "byte_level", {"<|im_end|>": student.eos_token_id})
    assert mapper.student_id("<|im_end|>", b"") == student.eos_token_id
    assert mapper.student_id("<|endoftext|>", b"") is None
    tops = [["1", "<|im_end|>", "<|im_start|>"], ["5"], ["0"]]
    logprobs = [[math.log(0.7), math.log(0.2), math.log(0.1)], [0.0], [0.0]]
    out = kd_targets(
        student,
        "150",
        pieces_of(qwen, "150"),
        tops,
        logprobs,
        [math.log(0.7), 0.0, 0.0],
        "byte_level",
        mapper=mapper,
    )
    one = student.convert_tokens_to_ids("1")
    assert as_dict(out, 0) == {one: 0.7, student.eos_token_id: 0.2}
    assert out.rest[0].item() == pytest.approx(0.1)


def _random_top_k(
    tok: PreTrainedTokenizerBase, realised: list[str], k: int, seed: int
) -> tuple[list[list[str]], list[list[float]]]:
    """Per position: the realised piece plus k−1 random ordinary pieces, random log-probs."""
    rng = random.Random(seed)
    ordinary = sorted(
        p
        for p, i in tok.get_vocab().items()
        if i not in tok.all_special_ids and p not in BYTE_TOKENS
    )
    tops, logprobs = [], []
    for piece in realised:
        top = [piece, *rng.sample([p for p in ordinary if p != piece], k - 1)]
        weights = [rng.random() ** 3 for _ in top]
        scale = rng.uniform(0.5, 1.0) / sum(weights)  # the top-k holds 50–100 % of the mass
        tops.append(top)
        logprobs.append([math.log(w * scale) for w in weights])
    return tops, logprobs


@pytest.mark.parametrize("name", ["qwen-tiny", "gemma-tiny", "gpt-oss-tiny"])
@pytest.mark.parametrize("text", ["The answer is 150.", "cat red owl", "café 😀"])
def test_identical_tokenizers_align_exactly(zoo: Zoo, name: str, text: str) -> None:
    tok = zoo[name]
    realised = pieces_of(tok, text)
    tops, logprobs = _random_top_k(tok, realised, 20, seed=len(text))
    out = kd_targets(tok, text, realised, tops, logprobs, [lp[0] for lp in logprobs], KIND[name])
    assert out.positions.tolist() == list(range(len(realised)))
    for row, (top, lps) in enumerate(zip(tops, logprobs, strict=True)):
        expected = {
            tok.convert_tokens_to_ids(p): round(math.exp(lp), 6)
            for p, lp in zip(top, lps, strict=True)
        }
        assert as_dict(out, row) == pytest.approx(expected, abs=1e-6)
        assert out.rest[row].item() == pytest.approx(1 - sum(math.exp(lp) for lp in lps), abs=1e-6)


@pytest.mark.parametrize(
    ("name", "text", "positions"),
    [
        ("qwen-tiny", "The answer is 150.", [0, 1, 2, 3, 4, 5, 6, 7]),  # same boundaries
        ("gpt-oss-tiny", "The answer is 150.", [0, 1, 2, 3, 4, 7]),  # "150" covers 1|5|0
        ("gemma-tiny", "cat red owl", [0, 2, 3]),  # "cat" covers c|at
        ("gemma-tiny", "The answer is 150.", list(range(8))),  # T|h|e, ▁an|s|w|er: chain rule
    ],
)
def test_real_teachers_pair_where_their_boundaries_meet_the_students(
    student: PreTrainedTokenizerBase, zoo: Zoo, name: str, text: str, positions: list[int]
) -> None:
    tok = zoo[name]
    realised = pieces_of(tok, text)
    tops, logprobs = _random_top_k(tok, realised, 20, seed=1)
    out = kd_targets(
        student, text, realised, tops, logprobs, [lp[0] for lp in logprobs], KIND[name]
    )
    assert out.positions.tolist() == positions
    torch.testing.assert_close(out.probs.sum(-1) + out.rest, torch.ones(len(positions)))
    for row in range(len(positions)):
        live = out.ids[row][out.probs[row] > 0]
        assert len(set(live.tolist())) == len(live)  # each student id once


@pytest.mark.parametrize("seed", range(6))
def test_random_splits_keep_the_invariants(student: PreTrainedTokenizerBase, seed: int) -> None:
    """Teacher splits of random answers at random cut points (text pieces): targets stay
    distributions, and KD sits only where a teacher token starts with the student's and the
    teacher tokens do not cross the student token's end."""
    rng = random.Random(seed)
    words = ["cat", "red", "owl", "The", "answer", "is", "150.", "café", "unhappiness", "😀"]
    text = " ".join(rng.choice(words) for _ in range(6))
    cuts = sorted(rng.sample(range(1, len(text)), k=len(text) // 3))
    realised = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    tops = [[piece, "cat", " the", "1"] for piece in realised]
    logprobs = [[math.log(0.4), math.log(0.2), math.log(0.1), math.log(0.1)]] * len(realised)
    out = kd_targets(
        student, text, realised, tops, logprobs, [math.log(0.4)] * len(realised), "text"
    )
    s_spans = student_byte_spans(student, text)
    t_spans = teacher_byte_spans(realised, "text", text)
    t_starts, t_ends = {a for a, _ in t_spans}, {b for _, b in t_spans}
    for pos in out.positions.tolist():
        start, end = s_spans[pos]
        teacher_end = next(b for a, b in t_spans if a == start)
        assert start in t_starts and (teacher_end >= end or end in t_ends)
    assert (out.rest >= 0).all()
    torch.testing.assert_close(out.probs.sum(-1) + out.rest, torch.ones(len(out.positions)))


def test_real_teacher_top_k_through_the_template_seam_into_the_loss(
    student: PreTrainedTokenizerBase, zoo_dir: Path
) -> None:
    """qwen-tiny scores its own answer; its top-20 becomes targets for the student's template
    rendering " <answer> </s>", and the loss is finite, and zero only for a matching student."""
    qwen = AutoTokenizer.from_pretrained(zoo_dir / "qwen-tiny")
    model = AutoModelForCausalLM.from_pretrained(zoo_dir / "qwen-tiny")
    targets = []
    for text in ["The answer is 150.", "cat red owl"]:
        prompt = qwen.apply_chat_template(
            [{"role": "user", "content": "What is 100 + 50?"}],
            add_generation_prompt=True,
            tokenize=False,
        )
        p_ids = qwen(prompt, add_special_tokens=False)["input_ids"]
        c_ids = qwen(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([p_ids + c_ids])).logits[0, len(p_ids) - 1 : -1]
        logp = torch.log_softmax(logits.float(), -1)
        values, ids = logp.topk(20)
        realised = qwen.convert_ids_to_tokens(c_ids)
        tops = [qwen.convert_ids_to_tokens(row) for row in ids.tolist()]
        chosen = logp.gather(1, torch.tensor(c_ids)[:, None]).squeeze(1).tolist()
        mapper = CandidateMapper(student, "byte_level", {"<|im_end|>": student.eos_token_id})
        targets.append(
            kd_targets(
                student,
                text,
                realised,
                tops,
                values.tolist(),
                chosen,
                "byte_level",
                mapper=mapper,
                prefix=" ",
                suffix=" </s>",
            )
        )
    # " The answer is 150. </s>" is ▁|The|▁answer|…, all paired. " cat red owl </s>" starts with
    # ▁cat, which holds the template's space: the seam pairs it with the teacher's first position,
    # where the teacher expects "The…" — " The" for the student, whose first piece is "▁".
    assert targets[0].positions.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert targets[1].positions.tolist() == [0, 1, 2]
    assert as_dict(targets[1], 0)[student.convert_tokens_to_ids("▁")] > 0.9
    batch = collate_targets([(0, 3, targets[0]), (1, 0, targets[1])])
    assert batch.time.tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2]
    logits = torch.randn(2, 12, len(student), requires_grad=True)
    labels = torch.zeros(2, 12, dtype=torch.long)
    loss = distill_loss(logits, labels, [batch], torch.ones(2, 1), 24).total
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None and torch.isfinite(logits.grad).all()
    # A student that reproduces q over U ∪ REST gets zero loss.
    exact = torch.zeros(len(batch.rest), len(student))
    for row in range(len(batch.rest)):
        others = torch.ones(len(student), dtype=torch.bool)
        others[batch.ids[row][batch.probs[row] > 0]] = False
        exact[row, others] = batch.rest[row] / others.sum()
        exact[row].scatter_add_(0, batch.ids[row], batch.probs[row])
    divergence = sparse_kl(exact.log(), batch.ids, batch.probs, batch.rest)
    assert divergence.abs().max() < 1e-4


@pytest.mark.parametrize("bad", [1000.0, math.inf, math.nan, 0.5])
def test_stored_values_that_are_no_log_probability_give_nan_targets_not_an_overflow(
    bad: float,
) -> None:
    """A harvest written before the endpoint refused them may hold such values: they become NaN
    targets, which training refuses with a clear error (no OverflowError, nothing made up)."""
    tok = hand_tokenizer(["un", "unhappiness", "the"])
    top = kd_targets(
        tok, "unhappiness", ["unhappiness"], [["unhappiness", "the"]],
        [[bad, math.log(0.2)]], [bad], "text",
    )  # fmt: skip
    assert top.positions.tolist() == [0] and top.probs.isnan().any()
    chain = kd_targets(
        tok, "unhappiness", ["un", "happiness"], [["un", "the"], ["happiness"]],
        [[math.log(0.6), math.log(0.2)], [math.log(0.5)]], [math.log(0.6), bad], "text",
    )  # fmt: skip
    assert chain.probs.isnan().any()


def test_minus_infinity_and_rounding_above_zero_are_probabilities() -> None:
    tok = hand_tokenizer(["un", "unhappiness", "the"])
    out = kd_targets(
        tok, "unhappiness", ["unhappiness"], [["unhappiness", "the"]],
        [[1e-7, -math.inf]], [1e-7], "text",
    )  # fmt: skip
    whole = tok.convert_tokens_to_ids("unhappiness")
    assert as_dict(out, 0) == {whole: 1.0} and out.rest.tolist() == [0.0]


def test_kd_targets_without_a_mapper_reuse_one_per_student_tokenizer() -> None:
    """Building a mapper reads the student's whole vocabulary: once per tokenizer, not once per
    example (real-small's 5,108-example ablation spent minutes and gigabytes on it)."""
    from avocado_llm.distill.align import shared_mapper

    tok = hand_tokenizer(["un", "unhappy", "under", "happi", "ness"])
    other = hand_tokenizer(["un", "happi", "ness"])
    first = shared_mapper(tok, "text")
    assert shared_mapper(tok, "text") is first
    assert shared_mapper(tok, "text", {"<|im_end|>": 2}) is not first  # another special map
    assert shared_mapper(other, "text") is not first
    args = (["unhappiness"], [["unhappiness", "unhappy"]], [[math.log(0.5), math.log(0.3)]])
    shared = kd_targets(tok, "unhappiness", *args, [math.log(0.5)], "text")
    fresh = kd_targets(tok, "unhappiness", *args, [math.log(0.5)], "text",
                       mapper=CandidateMapper(tok, "text"))  # fmt: skip
    assert shared.positions.tolist() == fresh.positions.tolist() == [0]
    assert as_dict(shared, 0) == as_dict(fresh, 0)
    assert first.student_id.cache_info().hits + first.student_id.cache_info().misses > 0
