"""Mathematical properties of the distillation losses (design E–G of the cross-tokenizer notes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avocado_llm.distill.losses import (
    IGNORE,
    TeacherTargets,
    cross_entropy,
    distill_loss,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    sparse_kl,
    uld_sorted_l1,
)

KINDS = ["forward", "reverse", "jsd"]
FULL = {
    "forward": forward_kl,
    "reverse": reverse_kl,
    "jsd": lambda s, t, m: generalized_jsd(s, t, m, 0.5),
}


def _random(n: int = 6, vocab: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Student logits (n, V) and teacher log-probs (n, V), peaked enough to be realistic."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, vocab, generator=g) * 2
    teacher = torch.log_softmax(torch.randn(n, vocab, generator=g) * 3, dim=-1)
    return student, teacher


def _top_k(teacher: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stored form of a teacher: its top-k ids and probabilities, and the rest of its mass."""
    values, ids = teacher.topk(k, dim=-1)
    rest = teacher.exp().scatter(-1, ids, 0.0).sum(-1)  # not 1 − Σ top-k: fp32 cancels there
    return ids, values.exp(), rest


def _full_per_position(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(1, 1, dtype=torch.bool)
    return torch.stack(
        [
            FULL[kind](s[None, None], t[None, None], mask)
            for s, t in zip(student, teacher, strict=True)
        ]
    )


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_equals_full_divergence_when_k_is_the_vocabulary(kind: str) -> None:
    student, teacher = _random()
    ids, probs, rest = _top_k(teacher, teacher.shape[-1])
    sparse = sparse_kl(torch.log_softmax(student, -1), ids, probs, rest, kind)
    torch.testing.assert_close(
        sparse, _full_per_position(kind, student, teacher), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 3, 10, 39])
def test_sparse_is_at_most_full_divergence_below_the_vocabulary(kind: str, k: int) -> None:
    for seed in range(5):
        student, teacher = _random(seed=seed)
        ids, probs, rest = _top_k(teacher, k)
        sparse = sparse_kl(torch.log_softmax(student, -1), ids, probs, rest, kind)
        assert (sparse >= -1e-6).all()
        assert (sparse <= _full_per_position(kind, student, teacher) + 1e-5).all()


@pytest.mark.parametrize("kind", KINDS)
def test_identical_distributions_give_zero(kind: str) -> None:
    _, teacher = _random()
    mask = torch.ones(1, teacher.shape[0], dtype=torch.bool)
    assert FULL[kind](teacher[None], teacher[None], mask).abs() < 1e-5
    ids, probs, rest = _top_k(teacher, 5)
    assert sparse_kl(teacher, ids, probs, rest, kind).abs().max() < 1e-5


def test_jsd_is_symmetric_at_half_and_reaches_both_kls_at_the_ends() -> None:
    student, teacher = _random()
    s_logp, t_logits = torch.log_softmax(student, -1)[None], teacher[None]
    mask = torch.ones(1, student.shape[0], dtype=torch.bool)
    there = generalized_jsd(student[None], t_logits, mask, 0.5)
    back = generalized_jsd(t_logits, s_logp, mask, 0.5)
    torch.testing.assert_close(there, back)
    torch.testing.assert_close(
        generalized_jsd(student[None], t_logits, mask, 0.0),
        forward_kl(student[None], t_logits, mask),
    )
    torch.testing.assert_close(
        generalized_jsd(student[None], t_logits, mask, 1.0),
        reverse_kl(student[None], t_logits, mask),
    )
    ids, probs, rest = _top_k(teacher, 4)
    for beta, kind in [(0.0, "forward"), (1.0, "reverse")]:
        torch.testing.assert_close(
            sparse_kl(s_logp[0], ids, probs, rest, "jsd", beta),
            sparse_kl(s_logp[0], ids, probs, rest, kind),
        )


def test_forward_kl_matches_torch_and_respects_the_mask() -> None:
    student, teacher = _random()
    mask = torch.tensor([[True, False, True, True, False, True]])
    reference = F.kl_div(torch.log_softmax(student, -1), teacher, log_target=True, reduction="none")
    expected = reference.sum(-1)[mask[0]].sum()
    torch.testing.assert_close(forward_kl(student[None], teacher[None], mask), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_gradient_when_the_student_equals_the_target_over_u_and_rest(kind: str) -> None:
    vocab, target = 30, torch.tensor([[3, 7, 11, 20]])
    probs = torch.tensor([[0.4, 0.2, 0.1, 0.1]])
    rest = torch.tensor([0.2])
    # The student puts q_u on each u and spreads q_REST evenly over the other 26 ids.
    dist = torch.full((1, vocab), 0.2 / (vocab - 4)).scatter(1, target, probs)
    logits = dist.log().requires_grad_()
    loss = sparse_kl(torch.log_softmax(logits, -1), target, probs, rest, kind).sum()
    loss.backward()
    assert loss.abs() < 1e-6
    assert logits.grad is not None and logits.grad.abs().max() < 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_padding_slots_add_nothing_even_when_their_id_is_in_u(kind: str) -> None:
    student, teacher = _random()
    ids, probs, rest = _top_k(teacher, 4)
    padded_ids = torch.cat([ids, ids[:, :1], torch.zeros_like(ids[:, :2])], dim=-1)
    padded_probs = torch.cat([probs, torch.zeros_like(probs[:, :3])], dim=-1)
    log_p = torch.log_softmax(student, -1)
    torch.testing.assert_close(
        sparse_kl(log_p, padded_ids, padded_probs, rest, kind),
        sparse_kl(log_p, ids, probs, rest, kind),
    )


def test_reverse_kl_still_penalises_student_tail_when_the_teacher_has_none() -> None:
    target, probs, rest = torch.tensor([[0]]), torch.tensor([[1.0]]), torch.tensor([0.0])
    logits = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)  # p = 1/3 on the target
    sparse_kl(torch.log_softmax(logits, -1), target, probs, rest, "reverse").sum().backward()
    assert logits.grad is not None and logits.grad[0, 0] < 0  # descent raises the target's logit


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_student_matches_fp32(kind: str) -> None:
    student, teacher = _random(n=16, vocab=64)
    ids, probs, rest = _top_k(teacher, 8)
    log_p = torch.log_softmax(student, -1)
    full = sparse_kl(log_p, ids, probs, rest, kind)
    half = sparse_kl(log_p.bfloat16(), ids, probs.bfloat16(), rest.bfloat16(), kind)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=3e-2, atol=3e-2)


def test_cross_entropy_ignores_masked_labels() -> None:
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[1, IGNORE, 4], [IGNORE, IGNORE, 6]])
    ref = F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), ignore_index=IGNORE)
    torch.testing.assert_close(cross_entropy(logits, labels, reduction="mean"), ref)
    torch.testing.assert_close(cross_entropy(logits, labels), ref * 3)
    empty = cross_entropy(
        logits.requires_grad_(), torch.full_like(labels, IGNORE), reduction="mean"
    )
    empty.backward()
    assert empty == 0 and logits.grad is not None and torch.isfinite(logits.grad).all()


def test_uld_compares_sorted_probabilities_and_pads_the_narrower_side() -> None:
    student = torch.tensor([[0.1, 0.6, 0.3]])
    assert uld_sorted_l1(student, torch.tensor([[0.3, 0.0, 0.1, 0.6, 0.0]])).item() == 0.0
    torch.testing.assert_close(
        uld_sorted_l1(student, torch.tensor([[0.5, 0.5]])), torch.tensor([0.1 + 0.2 + 0.1])
    )


# distill_loss ---------------------------------------------------------------------------


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[TeacherTargets]]:
    """Logits (2, 5, 12), labels with prompt positions ignored, and three teachers' targets."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 12, generator=g)
    labels = torch.randint(0, 12, (2, 5), generator=g)
    labels[0, :2] = IGNORE
    labels[1, :1] = IGNORE
    teachers = []
    for m in range(3):
        batch = torch.tensor([0, 0, 1, 1, 1])[: 5 - m]
        time = torch.tensor([2, 4, 1, 2, 3])[: 5 - m]
        probs = torch.softmax(torch.randn(len(batch), 4, generator=g), -1) * 0.9
        ids = torch.stack([torch.randperm(12, generator=g)[:4] for _ in batch])
        teachers.append(TeacherTargets(batch, time, ids, probs, torch.full((len(batch),), 0.1)))
    return logits, labels, teachers


def test_distill_loss_is_alpha_ce_plus_weighted_kd_over_n_tokens() -> None:
    logits, labels, teachers = _batch()
    weights = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    out = distill_loss(logits, labels, teachers, weights, 7, alpha=0.3)
    log_p = torch.log_softmax(logits, -1)
    kd = sum(
        (weights[t.batch, m] * sparse_kl(log_p[t.batch, t.time], t.ids, t.probs, t.rest)).sum()
        for m, t in enumerate(teachers)
    )
    expected = (0.3 * cross_entropy(logits, labels) + 0.7 * kd) / 7
    torch.testing.assert_close(out.total, expected)
    torch.testing.assert_close(out.kd, kd / 7)


def test_one_hot_weights_give_the_single_teacher_loss() -> None:
    logits, labels, teachers = _batch()
    routed = distill_loss(logits, labels, teachers, torch.tensor([[1.0, 0, 0]] * 2), 7)
    alone = distill_loss(logits, labels, teachers[:1], torch.ones(2, 1), 7)
    torch.testing.assert_close(routed.total, alone.total)


def test_a_teacher_with_no_paired_position_contributes_a_finite_zero() -> None:
    logits, labels, teachers = _batch()
    empty = TeacherTargets(
        *(torch.zeros(0, dtype=torch.long),) * 3, torch.zeros(0, 4), torch.zeros(0)
    )
    logits.requires_grad_()
    with_empty = distill_loss(
        logits, labels, [teachers[0], empty], torch.tensor([[0.5, 0.5]] * 2), 7
    )
    half = distill_loss(logits, labels, [teachers[0]], torch.tensor([[0.5]] * 2), 7)
    torch.testing.assert_close(with_empty.total, half.total)
    with_empty.total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_a_fully_masked_batch_returns_a_connected_zero() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.full((2, 3), IGNORE)
    empty = TeacherTargets(
        *(torch.zeros(0, dtype=torch.long),) * 3, torch.zeros(0, 1), torch.zeros(0)
    )
    out = distill_loss(logits, labels, [empty], torch.ones(2, 1), 0)
    out.total.backward()
    assert out.total.item() == 0.0
    assert logits.grad is not None and (logits.grad == 0).all()


def test_micro_batches_sum_to_the_full_batch_loss() -> None:
    logits, labels, teachers = _batch()
    weights = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    n_tokens = int((labels != IGNORE).sum())
    full = distill_loss(logits, labels, teachers, weights, n_tokens).total
    parts = []
    for b in range(2):
        mine = [
            TeacherTargets(
                t.batch[t.batch == b] * 0,
                t.time[t.batch == b],
                t.ids[t.batch == b],
                t.probs[t.batch == b],
                t.rest[t.batch == b],
            )
            for t in teachers
        ]
        parts.append(
            distill_loss(logits[b : b + 1], labels[b : b + 1], mine, weights[b : b + 1], n_tokens)
        )
    torch.testing.assert_close(sum(p.total for p in parts), full)


def test_distill_loss_in_bf16_matches_fp32_and_backpropagates() -> None:
    logits, labels, teachers = _batch()
    weights = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    half_logits = logits.bfloat16().requires_grad_()
    half = distill_loss(half_logits, labels, teachers, weights, 7)
    full = distill_loss(half_logits.detach().float(), labels, teachers, weights, 7)
    torch.testing.assert_close(half.total, full.total, rtol=1e-5, atol=1e-5)
    half.total.backward()
    assert half_logits.grad is not None and torch.isfinite(half_logits.grad.float()).all()


def test_distill_loss_rejects_weights_of_the_wrong_shape() -> None:
    logits, labels, teachers = _batch()
    with pytest.raises(ValueError, match="one weight per"):
        distill_loss(logits, labels, teachers, torch.ones(2, 2), 7)
