"""Robustness-oriented methods (distill / UNDO's perturbation, sam, tar): each piece's maths
against an independent reference on a tiny float64 model."""

from __future__ import annotations

import copy

import pytest
import torch

from magic_unlearn.attribution import train_trajectory
from magic_unlearn.unlearn import LoopConfig, get_method
from magic_unlearn.unlearn.methods import perturb_toward_init
from magic_unlearn.unlearn.methods.sam import linear_surrogate, sam_perturbation
from magic_unlearn.unlearn.methods.tar import tamper_loss
from test_unlearn_loop import batch_of, make_corpus, tiny
from test_unlearn_methods import _perturbed


def _grads(loss: torch.Tensor, model: torch.nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


def test_distill_loss_is_the_token_mean_kl_to_the_teacher() -> None:
    teacher, c = tiny(), make_corpus()
    student = _perturbed(teacher, scale=0.1)
    w = torch.rand(c.loss_mask.shape, generator=torch.Generator().manual_seed(3))
    m = get_method("distill", corpus="distill")
    m.setup(student, {"distill": c}, LoopConfig())  # teacher: frozen copy of the student now
    m.teacher = teacher
    loss, logs = m(student, {"distill": batch_of(c, w)}, 0, 1)
    # brute force: sum over tokens j >= 1 of w m KL(p_t(. | x_<j) || p_s(. | x_<j)) / sum w m
    with torch.no_grad():
        lt = teacher(input_ids=c.input_ids, attention_mask=c.attention_mask).logits.double()
        ls = student(input_ids=c.input_ids, attention_mask=c.attention_mask).logits.double()
    num = den = 0.0
    for i in range(len(c)):
        for j in range(1, c.input_ids.shape[1]):
            wm = float(w[i, j] * c.loss_mask[i, j])
            if wm == 0:
                continue
            pt = torch.softmax(lt[i, j - 1], -1)
            kl = float((pt * (pt.log() - torch.log_softmax(ls[i, j - 1], -1))).sum())
            num, den = num + wm * kl, den + wm
    assert float(loss.detach()) == pytest.approx(num / den, rel=1e-9)
    assert logs["kl_teacher"] == pytest.approx(num / den, rel=1e-9)
    # the teacher's own KL is zero
    zero, _ = m(teacher, {"distill": batch_of(c, w)}, 0, 1)
    assert abs(float(zero.detach())) < 1e-12


def test_perturb_toward_init_is_the_convex_combination() -> None:
    model = tiny(seed=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(11)
    ref_init = dict(type(model)(model.config).named_parameters())
    perturb_toward_init(model, 0.3, seed=11)
    for n, p in model.named_parameters():
        want = 0.7 * before[n] + 0.3 * ref_init[n].to(p.dtype)
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-12)
    # alpha = 1 is the fresh initialisation itself, alpha = 0 a no-op
    m1 = perturb_toward_init(tiny(seed=3), 1.0, seed=11)
    for (n, p), q in zip(m1.named_parameters(), ref_init.values(), strict=True):
        torch.testing.assert_close(p.detach(), q.to(p.dtype), rtol=0, atol=0, msg=n)
    m0 = perturb_toward_init(tiny(seed=3), 0.0, seed=11)
    assert all(torch.equal(p, before[n]) for n, p in m0.named_parameters())
    with pytest.raises(ValueError, match="alpha"):
        perturb_toward_init(tiny(), 1.5)


def test_sam_step_gradient_matches_a_manual_computation() -> None:
    """sam's gradient = grad f(theta + rho g/||g||) + c grad NLL_retain(theta), g = grad f(theta),
    with f the base method's forget loss; the weights are left at theta."""
    ref, f, r = tiny(), make_corpus(), make_corpus(seed=1)
    model = _perturbed(ref, scale=0.05)
    rho, coef = 0.05, 0.5
    sam = get_method("sam", base="npo", base_kwargs={"beta": 0.5}, rho=rho, retain_coef=coef)
    sam.setup(ref, {"forget": f, "retain": r}, LoopConfig())
    theta0 = [p.detach().clone() for p in model.parameters()]
    batch = {"forget": batch_of(f), "retain": batch_of(r)}
    loss, logs = sam(model, batch, 0, 1)
    got = _grads(loss, model)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), theta0, strict=True))

    # manual: the NPO forget loss by hand at theta and at theta + delta
    npo = get_method("npo", beta=0.5, retain_coef=0.0)
    npo.setup(ref, {"forget": f}, LoopConfig())
    g = _grads(npo(model, {"forget": batch_of(f)}, 0, 1)[0], model)
    norm = torch.sqrt(sum((x**2).sum() for x in g))
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p, x in zip(moved.parameters(), g, strict=True):
            p.add_(rho * x / norm)
    f1 = npo(moved, {"forget": batch_of(f)}, 0, 1)[0]
    g1 = _grads(f1, moved)
    m2 = copy.deepcopy(model)
    nll_r = (
        torch.nn.functional.cross_entropy(
            m2(input_ids=r.input_ids, attention_mask=r.attention_mask)
            .logits[:, :-1]
            .transpose(1, 2),
            r.input_ids[:, 1:],
            reduction="none",
        )
        * r.loss_mask[:, 1:]
    ).sum() / r.loss_mask.sum()
    gr = _grads(nll_r, m2)
    for a, b1, b2 in zip(got, g1, gr, strict=True):
        torch.testing.assert_close(a, b1 + coef * b2, rtol=1e-7, atol=1e-10)
    # the loss value is the perturbed forget loss plus the retain term
    assert float(loss.detach()) == pytest.approx(
        float(f1.detach()) + coef * float(nll_r.detach()), rel=1e-9
    )
    assert logs["forget_at_perturbed"] == pytest.approx(float(f1.detach()), rel=1e-9)


def test_sam_perturbation_and_linear_surrogate() -> None:
    g = [torch.tensor([3.0, 0.0]), None, torch.tensor([[4.0]])]
    d = sam_perturbation(g, 0.5)
    assert d[1] is None
    torch.testing.assert_close(d[0], torch.tensor([0.3, 0.0]))
    torch.testing.assert_close(d[2], torch.tensor([[0.4]]))
    p = [torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([5.0]))]
    s = linear_surrogate(p, [torch.tensor([7.0, -1.0]), None], torch.tensor(42.0))
    assert float(s.detach()) == 42.0
    (gp0,) = torch.autograd.grad(s, [p[0]])
    torch.testing.assert_close(gp0, torch.tensor([7.0, -1.0]))


@pytest.mark.parametrize("tr_loss", ["nll", "entropy"])
def test_tar_gradient_is_the_exact_post_attack_gradient(tr_loss: str) -> None:
    """tar (no base, no retain): the gradient it hands the loop is d tamper_loss(attack(theta))
    / d theta, checked by central finite differences of re-running the sampled attack."""
    f = make_corpus(n=12)
    model = tiny()
    tar = get_method(
        "tar",
        tr_loss=tr_loss,
        attack_steps=3,
        attack_batch_size=2,
        attack_lrs=[0.01, 0.02],
        attack_optimizer="adamw",
        attack_eps=1e-4,
        retain_coef=0.0,
    )
    tar.setup(model, {"forget": f}, LoopConfig(seed=5))
    fb = batch_of(f.subset(list(range(4))))
    loss, logs = tar(model, {"forget": fb}, 2, 10)
    got = _grads(loss, model)
    rows, cfg = tar.attack(2, fb["index"])
    assert cfg.lr in (0.01, 0.02) and cfg.steps == 3 and len(rows) == 6
    assert not set(rows.doc_ids) & {str(i) for i in range(4)}  # held out from the measurement

    def after(m: torch.nn.Module) -> float:
        a = train_trajectory(m, rows, cfg)
        with torch.no_grad():
            return float(tamper_loss(a, fb, tr_loss, None))

    assert logs["tr_after_attack"] == pytest.approx(after(model), rel=1e-10)
    gen = torch.Generator().manual_seed(0)
    dirs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]
    norm = sum(float((d * d).sum()) for d in dirs) ** 0.5
    dirs = [d / norm for d in dirs]
    pred = sum(float((g * d).sum()) for g, d in zip(got, dirs, strict=True))
    eps, vals = 1e-6, []
    for sign in (1.0, -1.0):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p, d in zip(m.parameters(), dirs, strict=True):
                p.add_(sign * eps * d)
        vals.append(after(m))
    ref = (vals[0] - vals[1]) / (2 * eps)
    assert abs(ref) > 1e-4
    assert abs(pred - ref) / abs(ref) <= 1e-5, (pred, ref)


def test_tar_bad_settings_fail_clearly() -> None:
    with pytest.raises(ValueError, match="tr_loss"):
        get_method("tar", tr_loss="kl")
    with pytest.raises(ValueError, match="retain"):
        get_method("tar").setup(tiny(), {"forget": make_corpus()}, LoopConfig())
