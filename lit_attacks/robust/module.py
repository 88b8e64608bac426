"""Training LPIPS on 2AFC judgements, clean or adversarially (R-LPIPS, Ghazanfari et al. 2023)."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Tuple

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import Tensor

from lit_attacks.attacks.apgd import apgd_run, loss_and_grad
from lit_attacks.attacks.ensemble import WorstCase
from lit_attacks.attacks.objectives import split_prey
from lit_attacks.attacks.pgd import pgd
from lit_attacks.attacks.threat import NORMS, Threat, normalize, project
from lit_attacks.evaluation import two_afc
from lit_attacks.metrics.lpips import build_lpips
from lit_attacks.metrics.trained import CHECKPOINT_KIND, TrainedLPIPSDistance
from lit_attacks.robust.ranking import RankingHead, ranking_loss

def step_seed(seed: int, step: int) -> int:
    """The global seed of a training step (distinct for every (seed, step) pair of steps below 10^9)."""
    return (seed * 1_000_000_007 + step) % (2 ** 63 - 1)


PERTURB = {"x0": ("p0",), "x1": ("p1",), "ref": ("ref",), "both": ("p0", "p1")}
TRAIN_ATTACKS = ("pgd", "apgd")


class RobustLPIPS(pl.LightningModule):
    """LPIPS with trainable linear heads, trained with the 2AFC ranking loss; adversarial training optional.

    Each training batch, when ``adversarial``: an attack of ``attack_steps`` iterations within ``eps`` (l_inf or
    l_2, per perturbed image) perturbs the images named by ``perturb`` ("x0", "x1", "ref" or "both" distorted
    images, as R-LPIPS) to *maximise* the ranking loss, then the heads are trained on the adversarial triplets
    (``clean_weight`` mixes in the clean loss). The attack is ``pgd`` (R-LPIPS: signed steps for l_inf,
    l_2-normalised gradient steps for l_2, of size ``alpha``, eps / 4 by default) or ``apgd`` (APGD's
    step-size schedule and momentum, :func:`lit_attacks.attacks.apgd.apgd_run`, run for all its iterations on the
    ranking loss). ``adversarial=False`` is the same module trained on clean triplets only.

    Validation logs ``val/2afc`` (2AFC score over all samples), ``val/accuracy`` (unanimous samples)
    and ``val/pgd_flip_rate``: the paper's PGD (eps 0.03, alpha 0.001, 30 steps) against a frozen copy
    of the current metric, on the first ``val_attack_samples`` unanimous samples each process sees. With
    ``val_robust_eps`` set it also logs ``val/robust_accuracy`` on those samples: ranked like the humans and not
    flipped by the worst case over APGD-CE, APGD-margin (``val_robust_steps`` each) and Square
    (``val_robust_queries``) within ``val_robust_eps`` (``val_robust_norm``), the robust-2AFC accuracy of
    ``bench.py``'s robust table.

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
        eps: training attack budget in [-1, 1] units, per perturbed image (8/255 by default).
        alpha: training PGD step (default eps / 4; APGD sets its own).
        attack_steps: training attack iterations.
        attack: training attack, "pgd" or "apgd".
        attack_norm: "linf" or "l2".
        clean_weight: weight of the clean loss; the adversarial loss gets 1 - clean_weight.
        val_attack_samples: unanimous validation samples attacked per process and epoch (0: none).
        val_eps, val_alpha, val_steps: the validation PGD.
        val_robust_eps: budget of the validation worst case in [-1, 1] units (None: not run).
        val_robust_norm, val_robust_steps, val_robust_queries: its norm, APGD steps and Square queries.
        seed: seed of the random parts of the initialisation (random backbone, ranking head).
    """

    def __init__(self, net: str = "alex", pretrained_backbone: bool = True, weights_dir: Optional[str] = None,
                 init_heads: str = "lpips", train_trunk: bool = False, lr: float = 1e-4, adversarial: bool = True,
                 perturb: str = "both", eps: float = 8 / 255, alpha: Optional[float] = None, attack_steps: int = 3,
                 clean_weight: float = 0.0, val_attack_samples: int = 64, val_eps: float = 0.03,
                 val_alpha: float = 0.001, val_steps: int = 30, seed: int = 0, attack: str = "pgd",
                 attack_norm: str = "linf", val_robust_eps: Optional[float] = None, val_robust_norm: str = "linf",
                 val_robust_steps: int = 20, val_robust_queries: int = 100) -> None:
        super().__init__()
        if init_heads not in ("lpips", "scratch"):
            raise ValueError(f"init_heads must be 'lpips' or 'scratch', got {init_heads!r}")
        if perturb not in PERTURB:
            raise ValueError(f"perturb must be one of {sorted(PERTURB)}, got {perturb!r}")
        if attack not in TRAIN_ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(TRAIN_ATTACKS)}, got {attack!r}")
        if attack_norm not in NORMS or val_robust_norm not in NORMS:
            raise ValueError(f"attack_norm and val_robust_norm must be one of {', '.join(NORMS)}, got "
                             f"{attack_norm!r}, {val_robust_norm!r}")
        if val_robust_eps is not None and (val_robust_eps <= 0 or val_robust_steps < 1 or val_robust_queries < 1):
            raise ValueError(f"need val_robust_eps > 0, val_robust_steps >= 1, val_robust_queries >= 1; got "
                             f"{val_robust_eps}, {val_robust_steps}, {val_robust_queries}")
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
        self.val_2afc, self.val_acc, self.val_flips, self.val_robust = (torchmetrics.MeanMetric() for _ in range(4))
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
    def live_metric(self) -> TrainedLPIPSDistance:
        """The network being trained seen as a :class:`Distance` that shares its weights (for the training attack).
        Building a Distance freezes the module it wraps and puts it in eval mode: the trainable flags and the
        mode are restored here."""
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        mode = self.model.training
        metric = TrainedLPIPSDistance(self.model, self.hparams.net, self.hparams.pretrained_backbone)
        for p, flag in flags:
            p.requires_grad_(flag)
        self.model.train(mode)
        return metric

    def training_threat(self, batch: Dict[str, Any]) -> Tuple[Threat, Any, Any]:
        """(threat, loss, unpack): the images in ``perturb`` as one :class:`Threat` on the current network
        (eval mode, gradients to the inputs only), the per-sample ranking loss ``loss(s_adv, s_other, idx)`` it
        maximises, and ``unpack(x) -> {ref, p0, p1}``."""
        h = self.hparams
        ref, p0, p1 = batch["ref"], batch["p0"], batch["p1"]
        judge = batch["judge"].to(ref.dtype)
        metric = self.live_metric()
        target = {"x0": "prey", "x1": "prey", "ref": "ref", "both": "both"}[h.perturb]
        prey, other = (p1, p0) if h.perturb == "x1" else (p0, p1)  # the threat's "prey" is the perturbed image
        with torch.no_grad():
            s_other = metric(ref, other, check=False) if target == "prey" else torch.zeros_like(judge)
        threat = Threat(target, metric, ref, prey, other, s_other)
        swap = h.perturb == "x1"

        def loss(s_adv: Tensor, s_oth: Tensor, idx: Tensor) -> Tensor:
            d0, d1 = (s_oth, s_adv) if swap else (s_adv, s_oth)
            return ranking_loss(self.rank, d0, d1, judge[idx], reduction="none")

        def unpack(x: Tensor) -> Dict[str, Tensor]:
            r, a, b = threat.images(x)
            a, b = (b, a) if swap else (a, b)
            return {"ref": r.detach(), "p0": a.detach(), "p1": b.detach()}

        return threat, loss, unpack

    def perturb_batch(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        """The training attack on the images in ``perturb``, maximising the ranking loss (see the class docstring)."""
        h = self.hparams
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                threat, loss, unpack = self.training_threat(batch)
                c, parts = threat.centre, threat.parts
                if h.attack == "apgd":
                    x, _, _, _ = apgd_run(threat, c, h.eps, h.attack_norm, h.attack_steps, loss, stop_at_flip=False)
                else:
                    alpha = h.alpha if h.alpha is not None else h.eps / 4
                    x = c.detach().clone()
                    for _ in range(h.attack_steps):
                        _, _, _, g = loss_and_grad(threat, x, loss)
                        step = g.sign() if h.attack_norm == "linf" else normalize(g, "l2", parts)
                        x = project(x + alpha * step, c, h.eps, h.attack_norm, parts)
        finally:
            self.model.train(was_training)
        return unpack(x)

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

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """A training step's randomness (dropout in the heads) depends only on ``seed`` and the step: a run resumed from
        the checkpoint of its last finished epoch trains the next steps exactly as a run that was never stopped
        (whatever else drew from the global generator in between: Lightning's data iterators draw their seeds at
        different moments in a resumed run)."""
        torch.manual_seed(step_seed(self.hparams.seed, self.global_step))

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
        """The epoch's frozen metric and its validation worst case, built once per validation epoch."""
        object.__setattr__(self, "_frozen", metric)  # not submodules: kept out of state_dict and checkpoints
        object.__setattr__(self, "_worst_case", None if metric is None else self.worst_case(metric))

    def on_validation_epoch_start(self) -> None:
        self._set_frozen(self.frozen_metric().to(self.device))
        self._attacked = 0

    def on_validation_epoch_end(self) -> None:
        self._set_frozen(None)

    def worst_case(self, metric: TrainedLPIPSDistance) -> Optional[WorstCase]:
        """The validation ensemble (APGD-CE, APGD-margin, Square) on ``metric``, or None when off."""
        h = self.hparams
        if h.val_robust_eps is None:
            return None
        wc = WorstCase(metric="l2", eps=h.val_robust_eps, norm=h.val_robust_norm, pretrained=False, seed=h.seed,
                       attacks=[{"attack": "apgd", "params": {"loss": "ce", "steps": h.val_robust_steps}},
                                {"attack": "apgd", "params": {"loss": "margin", "steps": h.val_robust_steps}},
                                {"attack": "square", "params": {"queries": h.val_robust_queries}}])
        wc.metric = metric  # the sub-attacks only see the threat, which carries this metric
        for sub in wc._subs:
            sub.metric = metric
        return wc

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
        score = two_afc(s0, s1, judge)  # per-sample 2AFC (float64)
        unanimous = (judge == 0) | (judge == 1)
        self.val_2afc.update(score)
        if unanimous.any():
            self.val_acc.update(score[unanimous])
        flips, robust = self.attack_subset(metric, batch, s0, s1, unanimous)
        if flips is not None:
            self.val_flips.update(flips)
        if robust is not None:
            self.val_robust.update(robust)
        n = len(judge)
        self.log(f"{stage}/2afc", self.val_2afc, batch_size=n, prog_bar=True)
        self.log(f"{stage}/accuracy", self.val_acc, batch_size=n)
        self.log(f"{stage}/pgd_flip_rate", self.val_flips, batch_size=n, prog_bar=True)
        if self.hparams.val_robust_eps is not None:
            self.log(f"{stage}/robust_accuracy", self.val_robust, batch_size=n, prog_bar=True)

    def attack_subset(self, metric, batch: Dict[str, Any], s0: Tensor, s1: Tensor, unanimous: Tensor
                      ) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """For the next unanimous samples of the subset: (k,) 1.0 where the validation PGD flips the rank, and
        (k,) 1.0 where the sample is robust to the validation worst case (None when it is off)."""
        h = self.hparams
        left = h.val_attack_samples - self._attacked
        idx = unanimous.nonzero().flatten()[:max(left, 0)]
        if len(idx) == 0:
            return None, None
        self._attacked += len(idx)
        ref = batch["ref"][idx]
        prey, _, _, s_other = split_prey(batch["p0"][idx], batch["p1"][idx], s0[idx], s1[idx])
        with torch.no_grad():
            bound = metric.bind(ref)
        with torch.enable_grad():
            adv, _, _ = pgd(bound, prey, s_other, h.val_eps, h.val_alpha, h.val_steps)
        with torch.no_grad():
            flips = (metric(ref, adv, check=False) > s_other).float()
        wc = self._worst_case if metric is self._frozen else self.worst_case(metric)
        if wc is None:
            return flips, None
        sub = {k: (v[idx] if torch.is_tensor(v) else [v[int(i)] for i in idx]) for k, v in batch.items()}
        out = wc.predict_step(sub)
        ok = torch.tensor([st == "ok" for st in out.status], device=out.flipped.device)
        return flips, (out.agreed & ~out.flipped & ok).float().to(flips.device)

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, stage="test")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        h = self.hparams
        checkpoint["lit_attacks"] = {"kind": CHECKPOINT_KIND, "net": h.net,
                                     "pretrained_backbone": h.pretrained_backbone, "adversarial": h.adversarial,
                                     "version": 1}

    def trainable_parameter_names(self) -> Tuple[str, ...]:
        return tuple(n for n, p in self.named_parameters() if p.requires_grad)
