"""The paper's ablations as pretraining options: what each option computes, and the grid runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from equiav.errors import ConfigError
from equiav.training.ablate import GRIDS, grid_table, plan_runs
from equiav.training.losses import EquiAVLoss
from equiav.training.pretrain import ObjectiveConfig, build_parser, config_from_args

BASE = ["--data.kind", "avdigits", "--data.path", "unused"]


def test_two_stage_trains_intra_first_then_inter() -> None:
    objective = ObjectiveConfig(strategy="two_stage", switch_fraction=0.25)
    stages = [objective.stage(step, 8) for step in range(8)]
    assert stages == ["intra"] * 2 + ["inter"] * 6


def test_alternating_switches_every_step_and_joint_never() -> None:
    assert [ObjectiveConfig(strategy="alternating").stage(s, 5) for s in range(5)] == [
        "intra", "inter", "intra", "inter", "intra"
    ]  # fmt: skip
    assert {ObjectiveConfig().stage(s, 5) for s in range(5)} == {"joint"}


class _Output:
    def __init__(self, generator: torch.Generator) -> None:
        for name in ("inter_audio", "inter_image", "equi_audio", "equi_image", "aug_audio", "aug_image"):
            setattr(self, name, torch.randn(6, 8, generator=generator, requires_grad=True))


@pytest.mark.parametrize("stage", ["intra", "inter"])
def test_loss_stage_zeroes_the_other_terms_and_their_gradients(stage: str) -> None:
    output = _Output(torch.Generator().manual_seed(0))
    criterion = EquiAVLoss(1.0, 0.5, 0.25)
    losses = criterion(output, stage)
    expected = losses.inter if stage == "inter" else 0.5 * losses.intra_audio + 0.25 * losses.intra_visual
    torch.testing.assert_close(losses.total, expected)
    losses.total.backward()
    silent = ("inter_audio", "inter_image") if stage == "intra" else ("equi_audio", "aug_image")
    loud = ("equi_audio", "aug_image") if stage == "intra" else ("inter_audio", "inter_image")
    for name in silent:
        assert getattr(output, name).grad is None or not getattr(output, name).grad.any(), name
    for name in loud:
        assert getattr(output, name).grad.abs().sum() > 0, name


def test_joint_stage_is_the_weighted_sum() -> None:
    output = _Output(torch.Generator().manual_seed(1))
    losses = EquiAVLoss(1.0, 0.5, 0.25)(output)
    torch.testing.assert_close(
        losses.total, losses.inter + 0.5 * losses.intra_audio + 0.25 * losses.intra_visual
    )


def test_objective_options_are_in_help_and_reach_the_model_config() -> None:
    text = build_parser().format_help()
    for flag in (
        "--objective.intra-space", "--objective.inter-embedding", "--objective.predictor", "--objective.strategy",
        "--objective.switch-fraction",
    ):  # fmt: skip
        assert flag in text
    cfg = config_from_args(
        [*BASE, "--objective.predictor", "hypernetwork", "--objective.inter-embedding", "original",
         "--objective.intra-space", "invariant"]
    )[0]  # fmt: skip
    model = cfg.model_config()
    assert (model.predictor, model.inter_embedding, model.intra_space) == (
        "hypernetwork",
        "original",
        "invariant",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-overrides", '{"predictor": "linear"}'], "--objective"),
        (["--objective.switch-fraction", "1.5"], "switch-fraction"),
        (["--objective.predictor", "mlp"], "predictor"),
    ],
)
def test_bad_objective_options_name_the_option(argv: list[str], message: str) -> None:
    with pytest.raises((ConfigError, SystemExit)) as caught:
        config_from_args([*BASE, *argv])
    if caught.type is ConfigError:
        assert message in str(caught.value)


def test_grid_runs_are_shared_between_rows_that_resolve_to_the_same_config(tmp_path: Path) -> None:
    runs = plan_runs([*BASE, "--data.num-views", "4"], ["table4", "table5", "table8"], [0, 1], tmp_path)
    # table4: 5 configs; table5: 1, 8 and 16 views are new (4 views is table4's centroid row); table8: equimod.
    assert len(runs) == (5 + 3 + 1) * 2
    shared = next(run for run in runs if "table5/4" in run.rows and run.seed == 0)
    assert set(shared.rows) == {"table4/Equi. (z̄_a, z̄_v)", "table5/4", "table8/with pos (Eq. 9)"}
    assert len({run.directory for run in runs}) == len(runs)


def test_a_finished_run_is_not_redone_and_serves_the_rows_of_this_plan(tmp_path: Path) -> None:
    from equiav.training.ablate import train_and_score

    first = plan_runs([*BASE, "--data.num-views", "4"], ["table4"], [0], tmp_path)
    shared = next(run for run in first if "table4/Equi. (z̄_a, z̄_v)" in run.rows)
    shared.directory.mkdir(parents=True)
    stored = {"rows": shared.rows, "r1_image_to_audio": 20.0, "r1_audio_to_image": 25.0, "probe_acc": 80.0}
    shared.result_file.write_text(json.dumps(stored))
    again = plan_runs([*BASE, "--data.num-views", "4"], ["table5"], [0], tmp_path)
    run = next(run for run in again if run.directory == shared.directory)
    record = train_and_score(run, args=None)  # nothing is trained: the stored result is returned
    assert record["rows"] == ["table5/4"] and record["r1_image_to_audio"] == 20.0
    assert grid_table("table5", [record]).splitlines()[5].startswith("| 4 | 1 | 20.0 | 25.0 | 80.0 |")


def test_grid_table_gives_mean_and_sample_std_in_the_papers_row_order() -> None:
    records = [
        {
            "rows": ["table8/with pos (Eq. 9)"],
            "r1_image_to_audio": v,
            "r1_audio_to_image": 2 * v,
            "probe_acc": 50.0,
        }
        for v in (10.0, 20.0, 30.0)
    ]
    table = grid_table("table8", records)
    lines = table.splitlines()
    assert lines[4].startswith("| without pos (Eq. A) | 0 | - | - | - | 21.9 | 21.0 | 42.6 |")
    assert (
        lines[5] == "| with pos (Eq. 9) | 3 | 20.0 ± 10.0 | 40.0 ± 20.0 | 50.0 ± 0.0 | 30.1 | 29.6 | 46.6 |"
    )
    assert [row.label for row in GRIDS["table8"].rows] == ["without pos (Eq. A)", "with pos (Eq. 9)"]
    assert json.dumps(records)  # records stay plain JSON


# ----------------------------------------------------------------------------------------------- model variants


def _model(**variant: str):
    from equiav import EquiAVConfig, EquiAVModel

    torch.manual_seed(0)
    return EquiAVModel(EquiAVConfig.from_preset("equiav-test", **variant)).eval()


def _inputs(model, batch: int = 3) -> dict[str, torch.Tensor]:
    config, generator = model.config, torch.Generator().manual_seed(5)
    audio = torch.randn(batch, config.target_length, config.num_mel_bins, generator=generator)
    image = torch.randn(batch, 3, config.image_size, config.image_size, generator=generator)
    return {
        "audio": audio, "image": image, "audio_aug": audio.flip(1), "image_aug": image.flip(3),
        "t_audio": torch.rand(batch, config.audio_aug_dim, generator=generator),
        "t_image": torch.rand(batch, config.visual_aug_dim, generator=generator),
    }  # fmt: skip


def _predictor_parameters(model) -> list[torch.nn.Parameter]:
    modules = (model.cross_attn_a, model.cross_attn_v, model.aug_encoder_a, model.aug_encoder_v)
    return [p for module in modules for p in module.parameters()]


def test_invariant_intra_pairs_original_with_augmented_and_never_reaches_the_predictor() -> None:
    model = _model(intra_space="invariant", inter_embedding="original").train()
    inputs = _inputs(model)
    out = model(**inputs)
    tokens = model.audio_tokens(inputs["audio"])
    torch.testing.assert_close(out.equi_audio, model.pred_a_intra(tokens.mean(dim=1)))
    torch.testing.assert_close(out.inter_audio, model.pred_a_inter(tokens.mean(dim=1)))
    EquiAVLoss()(out).total.backward()
    assert all(p.grad is None for p in _predictor_parameters(model))
    assert model.pred_a_intra.fc1.weight.grad.abs().sum() > 0


def test_equivariant_intra_loss_trains_the_predictor() -> None:
    model = _model().train()
    out = model(**_inputs(model))
    EquiAVLoss(0.0, 1.0, 1.0)(out).total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cross_attn_a.parameters())


@pytest.mark.parametrize("predictor", ["attention", "linear", "hypernetwork"])
def test_inter_embedding_variants_compute_what_they_name(predictor: str) -> None:
    base = _model(predictor=predictor)
    inputs = _inputs(base)
    tokens = base.audio_tokens(inputs["audio"])
    state = base.state_dict()
    with torch.no_grad():
        for kind in ("centroid", "predicted", "original", "augmented"):
            model = _model(predictor=predictor, inter_embedding=kind)
            model.load_state_dict(state)
            out = model(**inputs)
            per_view = model.cross_attn_a.per_view(tokens, model.aug_encoder_a(inputs["t_audio"][:, None]))[
                :, 0
            ]
            torch.testing.assert_close(out.equi_audio, model.pred_a_intra(per_view))
            if kind == "centroid":
                centroid = model.cross_attn_a(tokens, model.aug_encoder_a(model.audio_views))
                expected, encoded = centroid, centroid
            elif kind == "predicted":
                first = model.cross_attn_a.per_view(tokens, model.aug_encoder_a(model.audio_views[:1]))[:, 0]
                expected, encoded = per_view, first
            elif kind == "original":
                expected = encoded = tokens.mean(dim=1)
            else:
                aug_tokens = model.norm_a_aug(
                    model._run_blocks(model._embed_audio_patches(inputs["audio_aug"]), model.blocks_a)
                )
                expected, encoded = aug_tokens.mean(dim=1), tokens.mean(dim=1)
            torch.testing.assert_close(out.inter_audio, model.pred_a_inter(expected), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                model.encode_audio(inputs["audio"]), model.pred_a_inter(encoded), atol=1e-5, rtol=1e-5
            )


def test_default_variant_keeps_the_authors_keys_and_other_predictors_round_trip(tmp_path: Path) -> None:
    from equiav import EquiAVModel

    keys = set(_model().state_dict())
    assert {"cross_attn_a.attn.to_q.weight", "cross_attn_v.mlp.fc1.weight"} <= keys
    for predictor in ("linear", "hypernetwork"):
        model = _model(predictor=predictor, inter_embedding="predicted", intra_space="invariant")
        model.save_pretrained(tmp_path / predictor)
        loaded = EquiAVModel.from_pretrained(tmp_path / predictor)
        assert (loaded.config.predictor, loaded.config.inter_embedding) == (predictor, "predicted")
        assert loaded.config.intra_space == "invariant"
        pixels = _inputs(model)["image"]
        torch.testing.assert_close(loaded.encode_image(pixels), model.encode_image(pixels))


@pytest.mark.parametrize(
    "option",
    [
        ["--objective.intra-space", "invariant", "--objective.inter-embedding", "original"],
        ["--objective.inter-embedding", "predicted"],
        ["--objective.inter-embedding", "augmented"],
        ["--objective.predictor", "linear"],
        ["--objective.predictor", "hypernetwork"],
        ["--objective.strategy", "two_stage", "--objective.switch-fraction", "0.5"],
        ["--objective.strategy", "alternating"],
        ["--loss.intra-variant", "equimod"],
    ],
    ids=lambda option: "-".join(option[1::2]),
)
def test_each_option_trains_a_few_steps_and_exports(
    shared_dir: Path, tmp_path: Path, one_thread, option
) -> None:
    from equiav import EquiAVModel
    from equiav.training.pretrain import train

    args = [
        "--data.kind", "avdigits", "--data.path", str(shared_dir / "data"), "--output-dir", str(tmp_path),
        "--max-steps", "2", "--batch-size", "4", "--num-workers", "0", "--val-batches", "1", "--device", "cpu",
        "--data.num-views", "2", "--model-overrides", '{"depth": 1}', "--no-zero-shot-eval", "--no-progress",
        "--no-tensorboard", "--log-every", "1", *option,
    ]  # fmt: skip
    result = train(config_from_args(args)[0])
    assert result["step"] == 2 and torch.isfinite(torch.tensor(result["train"]["loss"]))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [line for line in lines if line["split"] == "train"]
    assert len(losses) == 2
    model = EquiAVModel.from_pretrained(tmp_path / "final")
    cfg = config_from_args(args)[0]
    assert model.config.predictor == cfg.objective.predictor
    assert model.config.inter_embedding == cfg.objective.inter_embedding
