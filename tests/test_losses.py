"""Contrastive losses: authors' parity fixture, brute-force loops of Eq. 9-10 / A / 14-15, and 2-process equivalence."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from equiav.errors import InvalidInputError
from equiav.training.distributed import (
    all_gather_no_grad,
    all_gather_with_grad,
    get_rank,
    get_world_size,
    is_distributed,
)
from equiav.training.losses import (
    OUTPUT_FIELDS,
    EquiAVLoss,
    inter_modal_loss,
    inter_modal_loss_and_accuracy,
    intra_modal_loss,
    intra_modal_loss_and_accuracy,
)

WORLD = 2
GLOBAL_BATCH = 8
DIM = 8
CASES = ("inter", "inter_faithful", "intra_with_positive", "intra_equimod", "total", "total_equimod")
CASE_FIELDS = {
    "inter": ("inter_audio", "inter_image"),
    "inter_faithful": ("inter_audio", "inter_image"),
    "intra_with_positive": ("equi_audio", "aug_audio"),
    "intra_equimod": ("equi_image", "aug_image"),
    "total": OUTPUT_FIELDS,
    "total_equimod": OUTPUT_FIELDS,
}


# ------------------------------------------------------------------------------------------------- brute-force loops


def _sim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.dot(x, y) / (x.norm() * y.norm())


def _loop_intra_direction(anchors, others, tau: float, with_positive: bool) -> torch.Tensor:
    """Eq. 9 (or Eq. A) with anchors z_i, positives o_i, negatives {o_j, z_j : j != i}, one anchor at a time."""
    n = anchors.shape[0]
    total = anchors.new_zeros(())
    for i in range(n):
        positive = torch.exp(_sim(anchors[i], others[i]) / tau)
        negatives = anchors.new_zeros(())
        for j in range(n):
            if j != i:
                negatives = negatives + torch.exp(_sim(anchors[i], others[j]) / tau)
                negatives = negatives + torch.exp(_sim(anchors[i], anchors[j]) / tau)
        denominator = positive + negatives if with_positive else negatives
        total = total - torch.log(positive / denominator)
    return total / n


def _loop_intra(equi, aug, tau: float, with_positive: bool) -> torch.Tensor:
    """Eq. 10 (or Eq. B): the mean of the two anchor directions."""
    return (
        _loop_intra_direction(equi, aug, tau, with_positive)
        + _loop_intra_direction(aug, equi, tau, with_positive)
    ) / 2


def _loop_inter(audio, image, tau: float) -> torch.Tensor:
    """Eq. 14-15 by explicit sums over the batch."""
    n = audio.shape[0]

    def direction(anchors, keys):
        total = anchors.new_zeros(())
        for i in range(n):
            denominator = sum(torch.exp(_sim(anchors[i], keys[j]) / tau) for j in range(n))
            total = total - torch.log(torch.exp(_sim(anchors[i], keys[i]) / tau) / denominator)
        return total / n

    return (direction(audio, image) + direction(image, audio)) / 2


def _loop_intra_accuracy(equi, aug) -> float:
    """Percent of equivariant anchors whose most similar key among all aug and the other equi rows is aug_i."""
    n = equi.shape[0]
    hits = 0
    for i in range(n):
        candidates = [(_sim(equi[i], aug[j]).item(), ("aug", j)) for j in range(n)]
        candidates += [(_sim(equi[i], equi[j]).item(), ("equi", j)) for j in range(n) if j != i]
        hits += max(candidates)[1] == ("aug", i)
    return 100.0 * hits / n


def _loop_inter_accuracy(audio, image) -> float:
    n = audio.shape[0]
    hits = sum(max(range(n), key=lambda j, i=i: _sim(audio[i], image[j]).item()) == i for i in range(n))
    return 100.0 * hits / n


def _correlated_pair(
    n: int, d: int, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    base = torch.randn(n, d, dtype=torch.float64, generator=generator) * 3
    return base, base + noise * torch.randn(n, d, dtype=torch.float64, generator=generator)


# ---------------------------------------------------------------------------------------------------------- parity


def test_one_process_matches_authors_fixture(parity):
    output = SimpleNamespace(
        inter_audio=parity["output.z_a_inv"],
        inter_image=parity["output.z_v_inv"],
        equi_audio=parity["output.z_a_equi_t"],
        equi_image=parity["output.z_v_equi_t"],
        aug_audio=parity["output.z_a_aug"],
        aug_image=parity["output.z_v_aug"],
    )
    result = EquiAVLoss()(output)
    expected = {
        "total": result.total,
        "inter": result.inter,
        "intra_a": result.intra_audio,
        "intra_v": result.intra_visual,
        "acc_inter": result.acc_inter,
        "acc_intra_a": result.acc_intra_audio,
        "acc_intra_v": result.acc_intra_visual,
    }
    for key, actual in expected.items():
        torch.testing.assert_close(actual, parity[f"loss.{key}"], rtol=1e-5, atol=1e-5, msg=key)
    torch.testing.assert_close(
        inter_modal_loss(parity["output.z_a_inv"], parity["output.z_v_inv"]),
        parity["loss.inter"],
        rtol=1e-5,
        atol=1e-5,
    )
    torch.testing.assert_close(
        intra_modal_loss(parity["output.z_v_equi_t"], parity["output.z_v_aug"]),
        parity["loss.intra_v"],
        rtol=1e-5,
        atol=1e-5,
    )


# ----------------------------------------------------------------------------------------------------- brute force


@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("variant", ["with_positive", "equimod"])
def test_intra_equals_per_anchor_loop(tau, variant):
    generator = torch.Generator().manual_seed(1)
    equi, aug = _correlated_pair(6, 5, 2.0, generator)
    equi.requires_grad_(True)
    aug.requires_grad_(True)
    loss = intra_modal_loss(equi, aug, tau, variant=variant)
    reference = _loop_intra(equi, aug, tau, with_positive=variant == "with_positive")
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(loss, (equi, aug))
    reference_grads = torch.autograd.grad(reference, (equi, aug))
    for grad, reference_grad in zip(grads, reference_grads):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, reference_grad, rtol=1e-10, atol=1e-12)


def test_variants_differ_by_the_positive_in_the_denominator():
    generator = torch.Generator().manual_seed(2)
    equi, aug = _correlated_pair(5, 4, 0.5, generator)
    with_positive = intra_modal_loss(equi, aug, 0.1)
    equimod = intra_modal_loss(equi, aug, 0.1, variant="equimod")
    # Adding the positive to the denominator always raises it, so Eq. 9's loss is larger and stays positive.
    assert with_positive > equimod
    assert with_positive > 0


@pytest.mark.parametrize("tau", [0.07, 0.3])
def test_inter_equals_loop(tau):
    generator = torch.Generator().manual_seed(3)
    audio, image = _correlated_pair(7, 6, 2.5, generator)
    audio.requires_grad_(True)
    image.requires_grad_(True)
    loss = inter_modal_loss(audio, image, tau)
    reference = _loop_inter(audio, image, tau)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    for grad, reference_grad in zip(
        torch.autograd.grad(loss, (audio, image)), torch.autograd.grad(reference, (audio, image))
    ):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-10, atol=1e-12)


def test_accuracies_equal_loops():
    generator = torch.Generator().manual_seed(4)
    accuracies = []
    for _ in range(5):
        audio, image = _correlated_pair(10, 4, 2.5, generator)
        result = inter_modal_loss_and_accuracy(audio, image)
        assert result.accuracy.item() == pytest.approx(_loop_inter_accuracy(audio, image), abs=1e-4)
        equi, aug = _correlated_pair(10, 4, 2.5, generator)
        for variant in ("with_positive", "equimod"):
            result = intra_modal_loss_and_accuracy(equi, aug, variant=variant)
            assert result.accuracy.item() == pytest.approx(_loop_intra_accuracy(equi, aug), abs=1e-4)
        accuracies += [_loop_inter_accuracy(audio, image), _loop_intra_accuracy(equi, aug)]
    # The inputs are noisy enough that some anchors miss and some hit, so the check is not vacuous.
    assert any(0 < accuracy < 100 for accuracy in accuracies)


def test_inputs_are_normalized_inside():
    generator = torch.Generator().manual_seed(5)
    equi, aug = _correlated_pair(4, 3, 1.0, generator)
    scales = torch.tensor([[0.1], [2.0], [7.0], [0.5]], dtype=torch.float64)
    torch.testing.assert_close(intra_modal_loss(equi * scales, aug), intra_modal_loss(equi, aug))
    torch.testing.assert_close(inter_modal_loss(equi, aug * scales), inter_modal_loss(equi, aug))


def test_temperature_can_be_a_learnable_tensor():
    generator = torch.Generator().manual_seed(6)
    equi, aug = _correlated_pair(4, 3, 1.0, generator)
    tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    loss = intra_modal_loss(equi, aug, tau)
    torch.testing.assert_close(loss, _loop_intra(equi, aug, 0.2, with_positive=True))
    loss.backward()
    assert tau.grad is not None and tau.grad.abs() > 0


# ------------------------------------------------------------------------------------------------ combined loss


def _random_output(generator: torch.Generator, n: int = 4, d: int = 5) -> SimpleNamespace:
    return SimpleNamespace(**{name: torch.randn(n, d, generator=generator) for name in OUTPUT_FIELDS})


def test_combined_loss_weights_and_fields():
    output = _random_output(torch.Generator().manual_seed(7))
    inter = inter_modal_loss(output.inter_audio, output.inter_image)
    intra_a = intra_modal_loss(output.equi_audio, output.aug_audio)
    intra_v = intra_modal_loss(output.equi_image, output.aug_image)
    default = EquiAVLoss()(output)
    assert default.total.item() == pytest.approx((inter + intra_a + intra_v).item() / 3, rel=1e-6)
    torch.testing.assert_close(default.inter, inter)
    torch.testing.assert_close(default.intra_audio, intra_a)
    torch.testing.assert_close(default.intra_visual, intra_v)
    paper = EquiAVLoss(1.0, 1.0, 1.0)(output)
    torch.testing.assert_close(paper.total, inter + intra_a + intra_v)
    custom = EquiAVLoss(0.5, 0.2, 0.3, intra_temperature=0.2, intra_variant="equimod")(output)
    expected = (
        0.5 * inter
        + 0.2 * intra_modal_loss(output.equi_audio, output.aug_audio, 0.2, variant="equimod")
        + 0.3 * intra_modal_loss(output.equi_image, output.aug_image, 0.2, variant="equimod")
    )
    torch.testing.assert_close(custom.total, expected)


def test_faithful_and_gather_change_nothing_in_one_process():
    output = _random_output(torch.Generator().manual_seed(8))
    reference = EquiAVLoss()(output)
    for loss in (EquiAVLoss(faithful=True), EquiAVLoss(gather=False)):
        result = loss(output)
        torch.testing.assert_close(result.total, reference.total, rtol=0, atol=0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: intra_modal_loss(torch.randn(3, 4), torch.randn(3, 5)),
        lambda: intra_modal_loss(torch.randn(3, 4), torch.randn(2, 4)),
        lambda: intra_modal_loss(torch.randn(4), torch.randn(4)),
        lambda: intra_modal_loss(torch.randn(0, 4), torch.randn(0, 4)),
        lambda: intra_modal_loss(torch.ones(3, 4, dtype=torch.int64), torch.ones(3, 4, dtype=torch.int64)),
        lambda: intra_modal_loss(torch.randn(3, 4), torch.randn(3, 4), variant="simclr"),
        lambda: intra_modal_loss(torch.randn(1, 4), torch.randn(1, 4), variant="equimod"),
        lambda: intra_modal_loss(torch.randn(3, 4), torch.randn(3, 4), 0.0),
        lambda: inter_modal_loss(torch.randn(3, 4), torch.randn(3, 4), -1.0),
        lambda: inter_modal_loss(torch.randn(3, 4), torch.randn(3, 4), torch.ones(2)),
        lambda: inter_modal_loss(torch.randn(3, 4).numpy(), torch.randn(3, 4)),
        lambda: EquiAVLoss(inter_weight=-1.0),
        lambda: EquiAVLoss(intra_variant="nope"),
        lambda: EquiAVLoss()(SimpleNamespace(inter_audio=torch.randn(2, 3))),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(InvalidInputError):
        call()


def test_error_names_the_argument():
    with pytest.raises(InvalidInputError, match="aug"):
        intra_modal_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(InvalidInputError, match="equi_image"):
        EquiAVLoss()(
            SimpleNamespace(**{name: torch.randn(2, 3) for name in OUTPUT_FIELDS if name != "equi_image"})
        )


def test_single_process_helpers():
    assert not is_distributed()
    assert get_rank() == 0 and get_world_size() == 1
    tensor = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(tensor) is tensor
    gathered = all_gather_no_grad(tensor)
    assert not gathered.requires_grad
    torch.testing.assert_close(gathered, tensor.detach())


# ------------------------------------------------------------------------------------------------- two processes


def _full_batch(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    base = torch.randn(GLOBAL_BATCH, DIM, dtype=torch.float64, generator=generator)
    views = {
        name: base + 1.5 * torch.randn(GLOBAL_BATCH, DIM, dtype=torch.float64, generator=generator)
        for name in OUTPUT_FIELDS
    }
    return {name: view.to(dtype) for name, view in views.items()}


def _case_loss(case: str, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    if case in ("inter", "inter_faithful"):
        return inter_modal_loss(
            embeddings["inter_audio"], embeddings["inter_image"], faithful=case == "inter_faithful"
        )
    if case == "intra_with_positive":
        return intra_modal_loss(embeddings["equi_audio"], embeddings["aug_audio"], 0.2)
    if case == "intra_equimod":
        return intra_modal_loss(embeddings["equi_image"], embeddings["aug_image"], 0.2, variant="equimod")
    variant = "equimod" if case == "total_equimod" else "with_positive"
    return EquiAVLoss(intra_variant=variant)(SimpleNamespace(**embeddings)).total


def _loss_and_grads(
    case: str, embeddings: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    leaves = {name: tensor.clone().requires_grad_(True) for name, tensor in embeddings.items()}
    loss = _case_loss(case, leaves)
    fields = CASE_FIELDS[case]
    grads = torch.autograd.grad(loss, [leaves[name] for name in fields])
    return loss.detach(), dict(zip(fields, grads))


def _ddp_model() -> nn.Module:
    torch.manual_seed(21)
    return nn.Linear(5, DIM * len(OUTPUT_FIELDS)).double()


def _ddp_inputs() -> torch.Tensor:
    return torch.randn(GLOBAL_BATCH, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(22))


def _model_total(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    chunks = model(inputs).split(DIM, dim=1)
    return EquiAVLoss()(SimpleNamespace(**dict(zip(OUTPUT_FIELDS, chunks)))).total


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        results: dict = {"rank": get_rank(), "world": get_world_size(), "distributed": is_distributed()}
        for dtype in (torch.float64, torch.float32):
            local = {name: tensor[rows] for name, tensor in _full_batch(dtype).items()}
            for case in CASES:
                results[(str(dtype), case)] = _loss_and_grads(case, local)
        model = DistributedDataParallel(_ddp_model())
        _model_total(model, _ddp_inputs()[rows]).backward()
        results["ddp"] = {name: p.grad.clone() for name, p in model.module.named_parameters()}
        try:
            all_gather_with_grad(torch.zeros(3 + rank, 2))
            results["shape_error"] = ""
        except InvalidInputError as error:
            results["shape_error"] = str(error)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("gloo")
    context = mp.start_processes(
        _worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("the 2-process gloo run did not finish within 120 s")
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _stitched(results: list[dict], key: tuple[str, str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean of the ranks' losses, and each rank's local-slice gradient divided by the world size (DDP averaging)."""
    loss = torch.stack([result[key][0] for result in results]).mean()
    grads = {
        name: torch.cat([result[key][1][name] for result in results]) / WORLD for name in results[0][key][1]
    }
    return loss, grads


def test_two_processes_know_their_place(two_process_results):
    assert [r["rank"] for r in two_process_results] == [0, 1]
    assert all(r["world"] == WORLD and r["distributed"] for r in two_process_results)


@pytest.mark.parametrize("case", [c for c in CASES if c != "inter_faithful"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_two_processes_equal_one_process(two_process_results, case, dtype, tolerance):
    loss, grads = _stitched(two_process_results, (str(dtype), case))
    reference_loss, reference_grads = _loss_and_grads(case, _full_batch(dtype))
    torch.testing.assert_close(loss, reference_loss, rtol=0, atol=tolerance)
    for name, grad in grads.items():
        assert grad.abs().max() > 1e-3
        torch.testing.assert_close(grad, reference_grads[name], rtol=0, atol=tolerance, msg=f"{case}: {name}")


def test_two_processes_ddp_parameter_gradients_equal_one_process(two_process_results):
    model = _ddp_model()
    _model_total(model, _ddp_inputs()).backward()
    for result in two_process_results:
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(result["ddp"][name], parameter.grad, rtol=0, atol=1e-9, msg=name)


def _authors_inter_local(audio_local, image_local, audio_keys, image_keys, offset: int) -> torch.Tensor:
    """The authors' per-rank inter loss (B13): local anchors against keys that carry no gradient."""
    labels = torch.arange(audio_local.shape[0]) + offset
    audio_local, image_local = F.normalize(audio_local, dim=-1), F.normalize(image_local, dim=-1)
    audio_keys, image_keys = (
        F.normalize(audio_keys, dim=-1).detach(),
        F.normalize(image_keys, dim=-1).detach(),
    )
    logits_audio = audio_local @ image_keys.T / 0.07
    logits_image = image_local @ audio_keys.T / 0.07
    return (F.cross_entropy(logits_audio, labels) + F.cross_entropy(logits_image, labels)) / 2


def test_faithful_inter_keeps_the_loss_but_not_the_gradient(two_process_results):
    full = _full_batch(torch.float64)
    loss, grads = _stitched(two_process_results, ("torch.float64", "inter_faithful"))
    reference_loss, reference_grads = _loss_and_grads("inter", full)
    torch.testing.assert_close(loss, reference_loss, rtol=0, atol=1e-9)
    assert (grads["inter_audio"] - reference_grads["inter_audio"]).abs().max() > 1e-2
    local_rows = GLOBAL_BATCH // WORLD
    for rank, result in enumerate(two_process_results):
        rows = slice(rank * local_rows, (rank + 1) * local_rows)
        audio = full["inter_audio"][rows].clone().requires_grad_(True)
        image = full["inter_image"][rows].clone().requires_grad_(True)
        authors = _authors_inter_local(
            audio, image, full["inter_audio"], full["inter_image"], rank * local_rows
        )
        expected = torch.autograd.grad(authors, (audio, image))
        actual = result[("torch.float64", "inter_faithful")][1]
        torch.testing.assert_close(actual["inter_audio"], expected[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(actual["inter_image"], expected[1], rtol=0, atol=1e-12)


def test_unequal_shapes_raise_on_every_rank(two_process_results):
    for result in two_process_results:
        assert "same shape" in result["shape_error"] and "(3, 2)" in result["shape_error"]
