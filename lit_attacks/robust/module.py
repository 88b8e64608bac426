"""Training LPIPS on 2AFC judgements, clean or adversarially (R-LPIPS, Ghazanfari et al. 2023)."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Tuple

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import Tensor

from lit_attacks.attacks.objectives import project_linf, split_prey
from lit_attacks.attacks.pgd import pgd
from lit_attacks.evaluation import two_afc
from lit_attacks.metrics.lpips import build_lpips
from lit_attacks.metrics.trained import CHECKPOINT_KIND, TrainedLPIPSDistance
from lit_attacks.robust.ranking import RankingHead, ranking_loss

PERTURB = {"x0": ("p0",), "x1": ("p1",), "ref": ("ref",), "both": ("p0", "p1")}


class RobustLPIPS(pl.LightningModule):
    """LPIPS with trainable linear heads, trained with the 2AFC ranking loss; adversarial training optional.

    Each training batch, when ``adversarial``: an l_inf PGD of ``attack_steps`` signed steps of size
    ``alpha`` (eps / 4 by default) within ``eps`` perturbs the images named by ``perturb`` ("x0",
    "x1", "ref" or "both" distorted images) to *maximise* the ranking loss, then the heads are trained
    on the adversarial triplets (``clean_weight`` mixes in the clean loss). ``adversarial=False`` is the
    same module trained on clean triplets only, for like-for-like comparisons.

    Validation logs ``val/2afc`` (2AFC score over all samples), ``val/accuracy`` (unanimous samples)
    and ``val/pgd_flip_rate``: the paper's PGD (eps 0.03, alpha 0.001, 30 steps) against a frozen copy
    of the current metric, on the first ``val_attack_samples`` unanimous samples each process sees.

    Args:
        net: LPIPS backbone, "alex", "squeeze" or "vgg".
        pretrained_backbone: ImageNet backbone weights (False: random backbone, for tests).
        weights_dir: folder searched first for the backbone weights.
        init_heads: "lpips" (the v0.1 heads shipped with the lpips package) or "scratch" (every channel
            weighted 1 / channels).
        train_trunk: also train the backbone (default: frozen, as R-LPIPS).
        lr: Adam learning rate (betas 0.5, 0.999 as in LPIPS).
        adversarial: train on PGD-perturbed triplets.
        perturb: which images the training attack perturbs.
        eps: training attack budget, l_inf in [-1, 1] units (8/255 by default).
        alpha: training attack step (default eps / 4).
        attack_steps: training attack iterations.
        clean_weight: weight of the clean loss; the adversarial loss gets 1 - clean_weight.
        val_attack_samples: unanimous validation samples attacked per process and epoch (0: none).
        val_eps, val_alpha, val_steps: the validation PGD.
        seed: seed of the random parts of the initialisation (random backbone, ranking head).
    """

    def __init__(self, net: str = "alex", pretrained_backbone: bool = True, weights_dir: Optional[str] = None,
                 init_heads: str = "lpips", train_trunk: bool = False, lr: float = 1e-4, adversarial: bool = True,
                 perturb: str = "both", eps: float = 8 / 255, alpha: Optional[float] = None, attack_steps: int = 3,
                 clean_weight: float = 0.0, val_attack_samples: int = 64, val_eps: float = 0.03,
                 val_alpha: float = 0.001, val_steps: int = 30, seed: int = 0) -> None:
        super().__init__()
        if init_heads not in ("lpips", "scratch"):
            raise ValueError(f"init_heads must be 'lpips' or 'scratch', got {init_heads!r}")
        if perturb not in PERTURB:
            raise ValueError(f"perturb must be one of {sorted(PERTURB)}, got {perturb!r}")
        if eps <= 0 or attack_steps < 1 or not 0 <= clean_weight <= 1:
            raise ValueError(f"need eps > 0, attack_steps >= 1, 0 <= clean_weight <= 1; got eps={eps}, "
                             f"attack_steps={attack_steps}, clean_weight={clean_weight}")
        self.save_hyperparameters()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = build_lpips(net, pretrained_backbone, weights_dir, metric=f"rlpips ({net})",
                                     heads=init_heads == "lpips")
            self.rank = RankingHead()
        if init_heads == "scratch":
            with torch.no_grad():
                for lin in self.model.lins:
                    w = lin.model[-1].weight  # (1, C, 1, 1)
                    w.fill_(1.0 / w.shape[1])
        self.model.train()  # lpips.LPIPS leaves itself in eval mode; the heads train with dropout, as LPIPS
        self.model.net.requires_grad_(train_trunk)
        self.model.lins.requires_grad_(True)
        self.val_2afc, self.val_acc, self.val_flips = (torchmetrics.MeanMetric() for _ in range(3))
        self._set_frozen(None)
        self._attacked = 0

    # ------------------------------------------------------------------ the metric
    def distance(self, ref: Tensor, x: Tensor) -> Tensor:
        """(B,) LPIPS distances of (B, 3, H, W) images in [-1, 1]."""
        return self.model(ref, x).flatten()

    def triplet_loss(self, ref: Tensor, p0: Tensor, p1: Tensor, judge: Tensor, reduction: str = "mean") -> Tensor:
        return ranking_loss(self.rank, self.distance(ref, p0), self.distance(ref, p1), judge, reduction)

    def clamp_heads(self) -> None:
        """LPIPS keeps the head weights non-negative (a distance must not reward differences)."""
        with torch.no_grad():
            for lin in self.model.lins:
                lin.model[-1].weight.clamp_(min=0)

    # ------------------------------------------------------------------ training
    def perturb_batch(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        """PGD on the images in ``perturb`` that maximises the ranking loss; eval mode, gradients to inputs only."""
        h = self.hparams
        alpha = h.alpha if h.alpha is not None else h.eps / 4
        names = PERTURB[h.perturb]
        clean = {n: batch[n] for n in ("ref", "p0", "p1")}
        adv = {n: clean[n].detach().clone() for n in names}
        was_training = self.model.training
        self.model.eval()
        with torch.enable_grad():
            for _ in range(h.attack_steps):
                for n in names:
                    adv[n].requires_grad_(True)
                imgs = {**clean, **adv}
                loss = self.triplet_loss(imgs["ref"], imgs["p0"], imgs["p1"], batch["judge"], reduction="sum")
                grads = torch.autograd.grad(loss, [adv[n] for n in names])
                for n, g in zip(names, grads):
                    adv[n] = project_linf(adv[n].detach() + alpha * g.sign(), clean[n], h.eps)
        self.model.train(was_training)
        return {**clean, **{n: a.detach() for n, a in adv.items()}}

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        h = self.hparams
        judge = batch["judge"].float()
        logs = {}
        if h.adversarial:
            adv = self.perturb_batch(batch)
            loss = (1 - h.clean_weight) * self.triplet_loss(adv["ref"], adv["p0"], adv["p1"], judge)
            logs["train/loss_adv"] = loss.detach() / max(1 - h.clean_weight, 1e-12)
            if h.clean_weight > 0:
                clean = self.triplet_loss(batch["ref"], batch["p0"], batch["p1"], judge)
                loss = loss + h.clean_weight * clean
                logs["train/loss_clean"] = clean.detach()
        else:
            loss = self.triplet_loss(batch["ref"], batch["p0"], batch["p1"], judge)
            logs["train/loss_clean"] = loss.detach()
        logs["train/loss"] = loss.detach()
        self.log_dict(logs, prog_bar=True, batch_size=len(judge))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.clamp_heads()

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, betas=(0.5, 0.999))

    # ------------------------------------------------------------------ validation
    def frozen_metric(self) -> TrainedLPIPSDistance:
        """A frozen copy of the current metric (what ``rlpips:<checkpoint>`` would load)."""
        return TrainedLPIPSDistance(copy.deepcopy(self.model), self.hparams.net, self.hparams.pretrained_backbone)

    def _set_frozen(self, metric: Optional[TrainedLPIPSDistance]) -> None:
        object.__setattr__(self, "_frozen", metric)  # not a submodule: kept out of state_dict and checkpoints

    def on_validation_epoch_start(self) -> None:
        self._set_frozen(self.frozen_metric().to(self.device))
        self._attacked = 0

    def on_validation_epoch_end(self) -> None:
        self._set_frozen(None)

    on_test_epoch_start = on_validation_epoch_start
    on_test_epoch_end = on_validation_epoch_end

    def validation_step(self, batch: Dict[str, Any], batch_idx: int, stage: str = "val") -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("RobustLPIPS validation runs PGD and needs gradients: build the Trainer with "
                               "inference_mode=False (train.py does)")
        metric = self._frozen if self._frozen is not None else self.frozen_metric().to(self.device)
        ref, p0, p1, judge = batch["ref"], batch["p0"], batch["p1"], batch["judge"].to(batch["ref"].dtype)
        with torch.no_grad():
            s0, s1 = metric(ref, p0, check=False), metric(ref, p1, check=False)
        score = torch.as_tensor(two_afc(s0.cpu(), s1.cpu(), judge.cpu()), device=ref.device)  # per-sample 2AFC
        unanimous = (judge == 0) | (judge == 1)
        self.val_2afc.update(score)
        if unanimous.any():
            self.val_acc.update(score[unanimous])
        flips = self.attack_subset(metric, ref, p0, p1, s0, s1, unanimous)
        if flips is not None:
            self.val_flips.update(flips)
        n = len(judge)
        self.log(f"{stage}/2afc", self.val_2afc, batch_size=n, prog_bar=True)
        self.log(f"{stage}/accuracy", self.val_acc, batch_size=n)
        self.log(f"{stage}/pgd_flip_rate", self.val_flips, batch_size=n, prog_bar=True)

    def attack_subset(self, metric, ref, p0, p1, s0, s1, unanimous) -> Optional[Tensor]:
        """(k,) 1.0 where the validation PGD flips the rank, for the next unanimous samples of the subset."""
        h = self.hparams
        left = h.val_attack_samples - self._attacked
        idx = unanimous.nonzero().flatten()[:max(left, 0)]
        if len(idx) == 0:
            return None
        self._attacked += len(idx)
        prey, _, _, s_other = split_prey(p0[idx], p1[idx], s0[idx], s1[idx])
        with torch.no_grad():
            bound = metric.bind(ref[idx])
        with torch.enable_grad():
            adv, _, _ = pgd(bound, prey, s_other, h.val_eps, h.val_alpha, h.val_steps)
        with torch.no_grad():
            return (metric(ref[idx], adv, check=False) > s_other).float()

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, stage="test")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        h = self.hparams
        checkpoint["lit_attacks"] = {"kind": CHECKPOINT_KIND, "net": h.net, "pretrained_backbone": h.pretrained_backbone,
                                     "adversarial": h.adversarial, "version": 1}

    def trainable_parameter_names(self) -> Tuple[str, ...]:
        return tuple(n for n, p in self.named_parameters() if p.requires_grad)
