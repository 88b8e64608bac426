"""train.py: robust LPIPS training (clean and R-LPIPS adversarial), checkpoints as registry metrics, DDP fit."""
import os
import re
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

import bench
import train
from lit_attacks.datamodules.bapps import BappsDataModule
from lit_attacks.metrics import create_metric
from lit_attacks.robust import CheckpointError, load_trained_lpips
from lit_attacks.robust.module import RobustLPIPS

from conftest import ROOT

CONFIGS = sorted((ROOT / "configs" / "train").glob("*.yaml"))


def _trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                inference_mode=False, num_sanity_val_steps=0)
    args.update(kw)
    return pl.Trainer(default_root_dir=str(tmp_path), **args)


def _fixed_batch(n=20):
    dm = BappsDataModule(data=None, split="train", unanimous_only=False, builtin_n=4, batch_size=n,
                         builtin="procedural")
    return next(iter(dm.val_dataloader()))


def _losses(module, batch):
    module.eval()
    judge = batch["judge"].float()
    with torch.no_grad():
        clean = module.triplet_loss(batch["ref"], batch["p0"], batch["p1"], judge).item()
    adv = module.perturb_batch(batch)
    with torch.no_grad():
        adv_loss = module.triplet_loss(adv["ref"], adv["p0"], adv["p1"], judge).item()
    return clean, adv_loss


@pytest.mark.parametrize("train_trunk", [False, True])
def test_training_lowers_the_loss_changes_only_intended_parameters_and_reloads(tmp_path, train_trunk):
    module = RobustLPIPS(pretrained_backbone=False, adversarial=True, lr=1e-2, train_trunk=train_trunk,
                         val_attack_samples=4)
    batch = _fixed_batch()
    before_state = {k: v.clone() for k, v in module.state_dict().items()}
    before = _losses(module, batch)
    dm = BappsDataModule(data=None, unanimous_only=False, builtin_n=4, batch_size=10, builtin="procedural")
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    _trainer(tmp_path, max_steps=12, limit_val_batches=1, callbacks=[ckpt]).fit(module, dm)
    after = _losses(module, batch)
    assert after[0] < before[0] and after[1] < before[1], (before, after)  # clean and adversarial ranking loss

    changed = {k for k, v in module.state_dict().items() if not torch.equal(v, before_state[k])}
    heads = {k for k in before_state if k.startswith("model.lin")}  # lin0..4 and lins.0..4: the same heads
    rank = {k for k in before_state if k.startswith("rank.")}
    trunk = {k for k in before_state if k.startswith("model.net.")}
    assert heads <= changed and rank <= changed
    assert (trunk & changed) == (trunk if train_trunk else set())
    assert changed <= heads | rank | trunk  # nothing else (scaling layer, metric states) moved
    for lin in module.model.lins:
        assert (lin.model[-1].weight >= 0).all()  # LPIPS keeps head weights non-negative

    path = tmp_path / "ckpt" / "last.ckpt"
    loaded = create_metric(f"rlpips:{path}")
    ref, x = batch["ref"], batch["p0"]
    module.eval()
    with torch.no_grad():
        expected = module.distance(ref, x)
    assert torch.allclose(loaded(ref, x), expected, rtol=1e-6, atol=0)
    assert re.fullmatch(r"rlpips:ckpt/last\.ckpt#[0-9a-f]{6} \[random backbone\]", loaded.label)  # short: the run
    # folder, the file and a hash of the whole path (distinct checkpoints get distinct labels)
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("attack,norm,eps", [("pgd", "linf", 8 / 255), ("pgd", "l2", 1.0), ("apgd", "linf", 8 / 255),
                                              ("apgd", "l2", 1.0)])
@pytest.mark.parametrize("perturb", ["x1", "ref", "both"])
def test_training_attacks_raise_the_ranking_loss_within_each_images_budget(attack, norm, eps, perturb):
    module = RobustLPIPS(pretrained_backbone=False, attack=attack, attack_norm=norm, eps=eps, perturb=perturb,
                         attack_steps=4)
    batch = _fixed_batch()
    flags = [p.requires_grad for p in module.parameters()]
    module.train()
    adv = module.perturb_batch(batch)
    assert module.model.training and [p.requires_grad for p in module.parameters()] == flags  # still trainable
    module.eval()
    judge = batch["judge"].float()
    with torch.no_grad():
        clean = module.triplet_loss(batch["ref"], batch["p0"], batch["p1"], judge, reduction="none")
    with torch.no_grad():
        attacked = module.triplet_loss(adv["ref"], adv["p0"], adv["p1"], judge, reduction="none")
    assert attacked.mean() > clean.mean() + 1e-4
    if attack == "apgd":  # APGD returns its best point, which includes the start: never below the clean loss
        assert (attacked >= clean - 1e-6).all()
    moved = {"x1": {"p1"}, "ref": {"ref"}, "both": {"p0", "p1"}}[perturb]
    for name in ("ref", "p0", "p1"):
        delta = (adv[name] - batch[name]).flatten(1)
        if name not in moved:
            assert torch.equal(adv[name], batch[name]), name
            continue
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps * (1 + 1e-5)).all() and size.max() > eps / 2, (name, size.max())
        assert adv[name].min() >= -1 and adv[name].max() <= 1
    with pytest.raises(ValueError, match="attack must be one of pgd, apgd"):
        RobustLPIPS(pretrained_backbone=False, attack="fgsm")
    with pytest.raises(ValueError, match="attack_norm and val_robust_norm"):
        RobustLPIPS(pretrained_backbone=False, attack_norm="l1")


def test_validation_robust_accuracy_is_clean_accuracy_at_zero_budget_and_zero_at_full_budget(tmp_path):
    dm = BappsDataModule(data=None, unanimous_only=False, builtin_n=4, batch_size=10, builtin="procedural")
    results = {}
    for eps in (1e-7, 2.0):
        module = RobustLPIPS(pretrained_backbone=False, val_attack_samples=1000, val_steps=1, val_robust_eps=eps,
                             val_robust_steps=5, val_robust_queries=10)
        results[eps] = _trainer(tmp_path, enable_checkpointing=False).validate(module, dm, verbose=False)[0]
    tiny, full = results[1e-7], results[2.0]
    # every unanimous sample is attacked (1000 > their number): robust at ~0 budget = ranked like the humans
    assert tiny["val/robust_accuracy"] == pytest.approx(tiny["val/accuracy"], abs=1e-6)
    assert 0.5 < tiny["val/accuracy"] < 1
    assert full["val/robust_accuracy"] == 0.0  # the whole [-1, 1] cube: every ranking can be flipped
    assert "val/robust_accuracy" not in _trainer(tmp_path, enable_checkpointing=False).validate(
        RobustLPIPS(pretrained_backbone=False, val_attack_samples=4, val_steps=1), dm, verbose=False)[0]


def test_bad_checkpoints_give_clear_errors(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="not found; train one with"):
        load_trained_lpips(tmp_path / "missing.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_trained_lpips(tmp_path / "text.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 0}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="is not a trainable-metric checkpoint"):
        load_trained_lpips(tmp_path / "other.ckpt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"lit_attacks": Evil()}))
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):  # weights_only refuses code
        load_trained_lpips(tmp_path / "evil.ckpt")
    with pytest.raises(SystemExit):
        bench.main(["--metrics", f"l2,rlpips:{tmp_path / 'other.ckpt'}", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert "is not a trainable-metric checkpoint" in err and "\n" not in err
    assert not (tmp_path / "run" / "cells").exists()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_train_config_parses_into_the_objects_it_describes(path):
    cfg = yaml.safe_load(path.read_text())
    cli = train.TrainCLI(RobustLPIPS, BappsDataModule, run=False, args=["--config", str(path),
                         "--model.pretrained_backbone", "false", "--trainer.logger", "false"],
                         trainer_defaults=train.TRAINER_DEFAULTS)
    assert isinstance(cli.model, RobustLPIPS) and isinstance(cli.datamodule, BappsDataModule)
    for key, value in cfg["model"].items():  # every value of the file reached the module (one overridden here)
        assert cli.model.hparams[key] == (False if key == "pretrained_backbone" else value), key
    for key, value in cfg["data"].items():
        assert cli.datamodule.hparams[key] == value, key
    assert cli.trainer.max_epochs == cfg["trainer"]["max_epochs"]
    assert cli.trainer.predict_loop.inference_mode is False  # validation attacks need gradients
    (ckpt,) = [c for c in cli.trainer.callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)]
    expected = cfg["trainer"]["callbacks"][0]["init_args"]
    assert Path(ckpt.dirpath) == Path(expected["dirpath"]).resolve() and ckpt.save_last == expected["save_last"]
    assert ckpt.monitor == expected.get("monitor", "val/2afc")
    assert ckpt._enable_version_counter is False  # a rerun replaces last.ckpt instead of writing last-v1.ckpt


def _fit_validate(tmp_path, adversarial: bool) -> dict:
    pl.seed_everything(0, verbose=False)
    module = RobustLPIPS(pretrained_backbone=False, adversarial=adversarial, lr=1e-2, val_attack_samples=64, seed=0)
    dm = BappsDataModule(data=None, unanimous_only=False, builtin_n=40, batch_size=25,
                         builtin="procedural")  # the margins below were measured on this set
    _trainer(tmp_path, max_epochs=3, enable_checkpointing=False, limit_val_batches=0).fit(module, dm)
    return _trainer(tmp_path, enable_checkpointing=False).validate(module, dm, verbose=False)[0]


@pytest.mark.slow
def test_adversarial_training_lowers_the_pgd_flip_rate(tmp_path):
    clean = _fit_validate(tmp_path / "clean", adversarial=False)
    adv = _fit_validate(tmp_path / "adv", adversarial=True)
    print(f"clean: {clean}\nadversarial: {adv}")
    # measured (random backbone, 200 training triplets, 3 epochs, 64 attacked val samples, seeds 0-2):
    # clean 0.20-0.22, adversarial 0.078-0.094; 2AFC 0.961 for both
    assert adv["val/pgd_flip_rate"] <= clean["val/pgd_flip_rate"] - 0.10
    assert adv["val/2afc"] >= clean["val/2afc"] - 0.02  # robustness not bought with agreement with humans


@pytest.mark.ddp
def test_two_process_ddp_fit_writes_one_checkpoint(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "train" / "quick.yaml").read_text())
    cfg["model"].update(pretrained_backbone=False, val_attack_samples=4)
    cfg["data"].update(builtin_n=5, batch_size=4)
    cfg["trainer"].update(max_epochs=1, limit_val_batches=2, enable_progress_bar=False)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "ckpt")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(tmp_path / "c.yaml"),
                        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpts = sorted(Path(tmp_path / "ckpt").glob("*.ckpt"))
    assert [p.name for p in ckpts] == ["last.ckpt"]
    state = torch.load(ckpts[0], weights_only=True)
    assert state["global_step"] == 3  # 25 training triplets: 12 per process (one dropped), 3 batches of 4 each
    assert len(list((tmp_path / "logs" / "wandb").glob("offline-run-*"))) == 1  # rank 0 logs
    create_metric(f"rlpips:{ckpts[0]}")
