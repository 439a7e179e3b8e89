"""Fine-tuning, metrics and linear probe: brute-force references, the B3 / B8 / B9 / B15 fixes, AV-digits runs."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.stats import mannwhitneyu

from equiav.classifier import ClassifierConfig, EquiAVClassifier
from equiav.config import EquiAVConfig
from equiav.errors import ConfigError
from equiav.training.classification import (
    LabelledDataset,
    balancing_weights,
    evaluate_classifier,
    mixup,
    read_sample_weights,
    spec_augment,
)
from equiav.training.distributed import DistributedContext, gather_in_order, shard
from equiav.training.finetune import RECIPES, config_from_args, finetune, parameter_groups
from equiav.training.metrics import accuracy, average_precision, classification_metrics, roc_auc
from equiav.training.probe import fit_logistic, linear_probe, probe_objective, stratified_split
from equiav.training.sampler import WeightedRankSampler
from equiav.training.schedule import WarmupCosineSchedule

TINY = EquiAVConfig.from_preset("equiav-tiny-digits", depth=1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------- metrics


def _brute_ap(scores: list[float], positive: list[bool]) -> float:
    """Step-wise AP: walk the distinct thresholds from the top, adding (recall gain) x (precision) at each."""
    total_pos = sum(positive)
    ap, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        chosen = [p for s, p in zip(scores, positive) if s >= threshold]
        recall = sum(chosen) / total_pos
        ap += (recall - previous_recall) * (sum(chosen) / len(chosen))
        previous_recall = recall
    return ap


def test_average_precision_and_auc_match_brute_force_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40, 5), generator=g).double()  # many ties
    targets = (torch.rand(40, 5, generator=g) < 0.3).double()
    targets[:, 4] = 0  # a class without positives has no AP and no AUC
    ap, auc = average_precision(scores, targets), roc_auc(scores, targets)
    for c in range(4):
        positive = targets[:, c].bool().tolist()
        assert ap[c].item() == pytest.approx(_brute_ap(scores[:, c].tolist(), positive), abs=1e-12)
        pos, neg = scores[targets[:, c] > 0, c].numpy(), scores[targets[:, c] == 0, c].numpy()
        u = mannwhitneyu(pos, neg).statistic
        assert auc[c].item() == pytest.approx(u / (len(pos) * len(neg)), abs=1e-12)
    assert math.isnan(ap[4]) and math.isnan(auc[4])
    metrics = classification_metrics(scores, targets, multi_label=True)
    assert metrics["mAP"] == pytest.approx(100 * ap[:4].mean().item())


def test_accuracy_with_indices_rows_and_top_k() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 2])
    assert accuracy(logits, labels) == pytest.approx(200 / 3)
    assert accuracy(logits, torch.nn.functional.one_hot(labels, 3).float()) == pytest.approx(200 / 3)
    assert accuracy(logits, labels, k=2) == pytest.approx(200 / 3)
    assert accuracy(logits, labels, k=3) == 100.0


def test_evaluation_shards_cover_every_item_once() -> None:
    for count in (0, 1, 7, 10):
        for world in (1, 2, 3):
            parts = [list(shard(count, rank, world)) for rank in range(world)]
            assert sum(parts, []) == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_gather_in_order_without_group_sorts_and_deduplicates() -> None:
    indices = torch.tensor([3, 1, 3, 0, 2])
    rows = torch.tensor([[30.0], [10.0], [30.0], [0.0], [20.0]])
    out_indices, out_rows = gather_in_order(indices, rows)
    assert out_indices.tolist() == [0, 1, 2, 3] and out_rows.flatten().tolist() == [0.0, 10.0, 20.0, 30.0]


class _Synthetic(torch.utils.data.Dataset):
    """Seven labelled items of random tiny inputs (an uneven split over two ranks)."""

    num_classes = 4

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self.audio = torch.randn(7, TINY.target_length, TINY.num_mel_bins, generator=g)
        self.image = torch.randn(7, 3, TINY.image_size, TINY.image_size, generator=g)
        self.target = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 0, 1, 2]), 4).float()

    def __len__(self) -> int:
        return 7

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "audio": self.audio[i],
            "image": self.image[i],
            "target": self.target[i],
            "index": torch.tensor(i),
        }


def _eval_model() -> EquiAVClassifier:
    torch.manual_seed(0)
    return EquiAVClassifier(
        ClassifierConfig(backbone=TINY, num_classes=4, mode="audio_visual", head="mlp")
    ).eval()


def _eval_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ctx = DistributedContext(rank=rank, local_rank=rank, world_size=2, device=torch.device("cpu"))
        for multi_label in (False, True):
            metrics = evaluate_classifier(
                _eval_model(), _Synthetic(), ctx, multi_label=multi_label, batch_size=2
            )
            Path(out, f"rank{rank}_{multi_label}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def test_two_process_evaluation_equals_one_process(tmp_path) -> None:
    """Metrics are computed on the predictions of both ranks (B9), with uneven shards (4 + 3 items)."""
    mp.spawn(_eval_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    for multi_label in (False, True):
        single = evaluate_classifier(_eval_model(), _Synthetic(), ctx, multi_label=multi_label, batch_size=3)
        assert single["num_items"] == 7
        for rank in (0, 1):
            gathered = json.loads(Path(tmp_path, f"rank{rank}_{multi_label}.json").read_text())
            assert gathered.keys() == single.keys()
            for key, value in single.items():
                assert gathered[key] == pytest.approx(value, abs=1e-5), key


# ------------------------------------------------------------------------------------------------- probe


def test_probe_optimum_has_zero_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 6, generator=g)
    y = torch.randint(0, 3, (120,), generator=g)
    for multi_label, labels in ((False, y), (True, (torch.rand(120, 3, generator=g) < 0.4).long())):
        probe = fit_logistic(x, labels, 0.01, multi_label=multi_label)
        weight = probe.weight.clone().requires_grad_()
        bias = probe.bias.clone().requires_grad_()
        probe_objective(weight, bias, probe.standardize(x), labels, 0.01, multi_label).backward()
        assert weight.grad.abs().max() < 1e-6 and bias.grad.abs().max() < 1e-6
        # Any perturbation raises the (strictly convex) objective.
        with torch.no_grad():
            base = probe_objective(probe.weight, probe.bias, probe.standardize(x), labels, 0.01, multi_label)
            moved = probe_objective(
                probe.weight + 1e-3, probe.bias, probe.standardize(x), labels, 0.01, multi_label
            )
        assert moved > base


def test_probe_separates_separable_data_and_follows_protocol() -> None:
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(4, 8, generator=g) * 6
    labels = torch.arange(4).repeat_interleave(30)
    x = centres[labels] + torch.randn(120, 8, generator=g)
    test_labels = torch.arange(4).repeat_interleave(10)
    test_x = centres[test_labels] + torch.randn(40, 8, generator=g)
    result = linear_probe(x, labels, test_x, test_labels, grid=(1e-4, 1e-2, 1.0))
    assert result["test"]["acc"] == 100.0
    assert set(result["val_scores"]) == {"0.0001", "0.01", "1"}
    assert result["l2"] == 1.0  # every value separates the validation rows; the largest wins the tie
    assert (result["num_train"], result["num_val"], result["num_test"]) == (96, 24, 40)
    kept, held = stratified_split(labels, 0.2, seed=0)
    assert sorted(kept.tolist() + held.tolist()) == list(range(120))
    assert torch.bincount(labels[held]).tolist() == [6, 6, 6, 6]


# ------------------------------------------------------------------------------------------------- training parts


def test_head_learning_rate_multiplier_holds_at_every_step() -> None:
    """The schedule scales each group instead of overwriting the head's rate (B8)."""
    model = EquiAVClassifier(ClassifierConfig(backbone=TINY, num_classes=3, mode="audio"))
    cfg = config_from_args(["--data.kind", "avdigits", "--data.path", "x", "--optim.head-lr-scale", "50"])[0]
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=1e-4)
    schedule = WarmupCosineSchedule(optimizer, peak_lr=1e-4, warmup_steps=3, total_steps=10, start_lr=1e-6)
    for _ in range(10):
        base = schedule.step()
        backbone, head = optimizer.param_groups
        assert backbone["lr"] == pytest.approx(base) and head["lr"] == pytest.approx(50 * base)
        optimizer.step()
    assert {id(p) for p in head["params"]} == {id(p) for _, p in model.head_parameters()}


def test_spec_augment_masks_one_band_of_each_axis() -> None:
    g = torch.Generator().manual_seed(0)
    fbank = torch.randn(100, 40, generator=g) + 5  # no zeros before masking
    widths = set()
    for _ in range(30):
        out = spec_augment(fbank, 10, 30, g)
        zero_cols = (out == 0).all(dim=0).nonzero().flatten().tolist()
        zero_rows = (out == 0).all(dim=1).nonzero().flatten().tolist()
        for band, limit in ((zero_cols, 10), (zero_rows, 30)):
            assert len(band) <= limit
            assert band == list(range(band[0], band[0] + len(band))) if band else True
        kept = out != 0
        assert torch.equal(out[kept], fbank[kept])
        widths.add((len(zero_cols), len(zero_rows)))
    assert len(widths) > 5


def test_mixup_mixes_inputs_and_targets_alike() -> None:
    g = torch.Generator().manual_seed(0)
    batch = {"audio": torch.randn(6, 4, 3, generator=g), "image": torch.randn(6, 3, 2, 2, generator=g)}
    batch["target"] = torch.nn.functional.one_hot(torch.arange(6), 6).float()
    assert mixup(batch, 0.0, 10.0, np.random.default_rng(0)) is batch
    mixed = mixup(batch, 1.0, 10.0, np.random.default_rng(0))
    torch.testing.assert_close(mixed["target"].sum(dim=1), torch.ones(6))
    for i in range(6):
        weights = mixed["target"][i]
        for key in ("audio", "image"):
            expected = (weights.view(-1, *([1] * (batch[key].dim() - 1))) * batch[key]).sum(dim=0)
            torch.testing.assert_close(mixed[key][i], expected)


def test_class_balanced_sampler_follows_the_weights() -> None:
    assert balancing_weights([[0], [0], [1], [0, 1]]).tolist() == pytest.approx(
        [1 / 3, 1 / 3, 1 / 2, 1 / 3 + 1 / 2]
    )
    sampler = WeightedRankSampler(
        torch.tensor([1.0, 0.0, 0.0, 3.0] * 1000, dtype=torch.float64),
        batch_size=10,
        rank=0,
        world_size=1,
        seed=0,
    )
    drawn = torch.tensor(sampler.indices()) % 4
    counts = torch.bincount(drawn, minlength=4)
    assert counts[1] == counts[2] == 0
    share = counts[3].item() / drawn.numel()
    assert share == pytest.approx(0.75, abs=4 * math.sqrt(0.75 * 0.25 / drawn.numel()))


def test_sample_weights_file(tmp_path) -> None:
    path = tmp_path / "weights.csv"
    path.write_text("1.5\n0\n2.0\n")
    assert read_sample_weights(path, 3).tolist() == [1.5, 0.0, 2.0]
    with pytest.raises(ConfigError, match="expected 4"):
        read_sample_weights(path, 4)
    path.write_text("1\nx\n")
    with pytest.raises(ConfigError, match="one number per line"):
        read_sample_weights(path, 2)


def test_boolean_options_can_be_turned_off_and_recipes_resolve() -> None:
    base = ["--data.kind", "avdigits", "--data.path", "x"]
    assert config_from_args(base)[0].spec_augment is True
    cfg = config_from_args([*base, "--no-spec-augment", "--no-data.roll-audio", "--freeze-backbone"])[0]
    assert (cfg.spec_augment, cfg.data.roll_audio, cfg.freeze_backbone) == (False, False, True)
    for name in RECIPES:
        cfg = config_from_args(["--recipe", name, *base])[0]
        assert cfg.optim.weight_decay == 1e-5 or name == "avdigits-tiny"
    as20k = config_from_args(["--recipe", "audioset-20k", *base, "--optim.lr", "2e-4"])[0]
    assert (as20k.task, as20k.global_batch_size, as20k.epochs, as20k.mixup) == ("multi_label", 256, 50, 0.5)
    assert (as20k.optim.lr, as20k.optim.start_lr, as20k.optim.betas) == (2e-4, 1e-6, (0.9, 0.95))
    assert config_from_args(["--recipe", "vggsound", *base])[0].model_overrides["audio_mean"] == -4.956
    with pytest.raises(ConfigError, match="mixup"):
        config_from_args([*base, "--mixup", "1.5"])
    for option, value, message in (
        ("--optim.warmup-steps", "-1", r"--optim\.warmup-steps must be at least 0, got -1"),
        ("--eval-batch-size", "0", "--eval-batch-size must be at least 1"),
        ("--max-steps", "0", "--max-steps must be at least 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            config_from_args([*base, option, value])


# ------------------------------------------------------------------------------------------------- AV-digits


def _avdigits_args(shared_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--recipe", "avdigits-tiny", "--data.kind", "avdigits", "--data.path", str(shared_dir / "data"),
        "--output-dir", str(out), "--num-workers", "0", "--no-progress", "--eval-batch-size", "100", *extra,
    ]  # fmt: skip


def test_spec_augment_changes_the_training_items(shared_dir, one_thread) -> None:
    """SpecAugment really reaches the training input (B3), and only the training split."""
    from equiav.training.datasets import build_dataset

    cfg = config_from_args(_avdigits_args(shared_dir, Path("unused"), "--no-data.roll-audio"))[0]
    base = build_dataset(cfg.data, cfg.model_config(), "train")
    plain = LabelledDataset(base, 10, train=False)
    masked = LabelledDataset(base, 10, train=True, masks=(16, 32))
    changed = 0
    for index in range(8):
        a, b = plain[index], masked[index]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
        differs = a["audio"] != b["audio"]
        assert (b["audio"][differs] == 0).all()
        changed += bool(differs.any())
    assert changed >= 6


def test_finetune_improves_over_the_initial_classifier_and_resumes_exactly(
    shared_dir, tmp_path, one_thread
) -> None:
    """Visual-only tiny classifier, 40 steps on AV-digits: held-out accuracy rises well above the start; a run resumed
    from its step-20 checkpoint ends with the same weights; the export loads and scores the same."""
    out = tmp_path / "run"
    args = _avdigits_args(
        shared_dir, out, "--mode", "visual", "--max-steps", "40", "--checkpoint-every-steps", "20", "--val-every",
        "40", "--max-val-items", "300", "--deterministic", "--model-overrides", '{"depth": 1}',
    )  # fmt: skip
    cfg = config_from_args(args)[0]
    from equiav.training.finetune import FinetuneTask, class_info
    from equiav.training.trainer import Trainer

    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    initial = Trainer(FinetuneTask(dataclasses.replace(cfg, resume="none")), ctx)
    before = initial.validate()["acc"]
    result = finetune(cfg)
    after = result["val"]["acc"]
    assert after >= max(before + 10, 20), (before, after)

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if line["split"] == "train"]
    assert all(line["head_lr"] == pytest.approx(10 * line["lr"]) for line in train_lines)

    final = EquiAVClassifier.from_pretrained(out / "final")
    assert final.config.mode == "visual" and final.label_names[3] == "three"
    first_weights = {k: v.clone() for k, v in final.state_dict().items()}
    (out / "checkpoints" / "ckpt-00000040.pt").unlink()
    shutil.rmtree(out / "final")
    resumed = finetune(cfg)
    assert resumed["val"]["acc"] == after
    again = EquiAVClassifier.from_pretrained(out / "final").state_dict()
    for key, value in first_weights.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0, msg=key)
    assert class_info(initial.task.train_set.base, cfg)[0] == 10
