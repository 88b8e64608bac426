"""Builders of small hand-made BAPPS trees for tests."""
from __future__ import annotations

import contextlib
import errno
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def flat(value: int, size: int = 8) -> np.ndarray:
    """A (size, size, 3) uint8 image of one grey value."""
    return np.full((size, size, 3), value, dtype=np.uint8)


def add_sample(root: Path, split: str, cat: str, stem: str, ref, p0, p1, judge, judge_dtype=np.float32) -> None:
    d = Path(root) / "2afc" / split / cat
    for sub, img in (("ref", ref), ("p0", p0), ("p1", p1)):
        (d / sub).mkdir(parents=True, exist_ok=True)
        if img is not None:
            Image.fromarray(img).save(d / sub / f"{stem}.png")
    (d / "judge").mkdir(parents=True, exist_ok=True)
    np.save(d / "judge" / f"{stem}.npy", np.array([judge], dtype=judge_dtype))


def random_tree(root: Path, n: int = 20, split: str = "val", cats=("cnn", "traditional"), seed: int = 0) -> dict:
    """A tree of random 8x8 triplets with judges drawn from {0, 0.4, 0.6, 1}; returns key -> judge."""
    rng = np.random.default_rng(seed)
    judges = {}
    for c in cats:
        for i in range(n):
            imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
            j = float(rng.choice([0.0, 0.4, 0.6, 1.0]))
            add_sample(root, split, c, f"{i:06d}", *imgs, j)
            judges[f"{split}/{c}/{i:06d}"] = j
    return judges


def read_wandb_offline(run_dir) -> dict:
    """Config, summary and history of an offline W&B run, parsed from its ``run-*.wandb`` file.

    The file is a W&B header (7 bytes) followed by a LevelDB-style log: 32 KiB blocks of records, each
    with a 7-byte header (crc32c, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4) holding serialized
    ``wandb_internal_pb2.Record`` messages.
    """
    import json
    import struct
    from pathlib import Path

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, block, buf = 7, 32768, b""
    out = {"config": {}, "summary": {}, "history": []}

    def value(items):
        d = {}
        for it in items:
            keys = list(it.nested_key) or [it.key]
            cur = d
            for k in keys[:-1]:
                cur = cur.setdefault(k, {})
            cur[keys[-1]] = json.loads(it.value_json)
        return d

    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            kind_name = rec.WhichOneof("record_type")
            if kind_name == "run":
                out["config"].update(value(rec.run.config.update))
            elif kind_name == "config":
                out["config"].update(value(rec.config.update))
            elif kind_name == "summary":
                out["summary"].update(value(rec.summary.update))
            elif kind_name == "history":
                out["history"].append(value(rec.history.item))
    return out


SCORE_FIELDS = ("s_adv", "s_adv_uint8", "s0", "s1", "s_other")


def run_one_and_two_processes(cmd, tmp_path, env, two=("--accelerator", "cpu", "--devices", "2")):
    """Run ``cmd`` (a bench.py command line) into ``tmp_path/one`` and, with ``two``, as 2-process DDP into
    ``tmp_path/two``; both must succeed. Returns the two results folders."""
    import subprocess

    outs = []
    for name, extra in (("one", []), ("two", list(two))):
        out = tmp_path / name
        r = subprocess.run(list(cmd) + ["--out", str(out)] + extra, env=env, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(out)
    return outs


def assert_same_rows(one, two, where, rel=1e-6):
    """Same keys in the same order; scores (:data:`SCORE_FIELDS`) equal to ``rel``, every other field identical."""
    import pytest

    assert [r.get("key") for r in one] == [r.get("key") for r in two], where
    for a, b in zip(one, two):
        for k in a:
            if k in SCORE_FIELDS:
                assert float(a[k]) == pytest.approx(float(b[k]), rel=rel), (where, a.get("key"), k)
            else:
                assert a[k] == b[k], (where, a.get("key"), k)


def _rnd(g, *shape, std=1.0, mean=0.0):
    import torch

    return torch.randn(*shape, generator=g) * std + mean


def generated_vit(g, patch: int, kind: str) -> dict:
    """A ViT-B/``patch`` state dict in DINO's layout (DreamSim's; with ``pos_drop`` = ln_pre and ``proj`` unless
    ``kind`` is "dino"), drawn from the generator ``g`` with scales that keep every layer active."""
    dim = 768

    def rnd(*shape, std=1.0, mean=0.0):
        return _rnd(g, *shape, std=std, mean=mean)

    sd = {"cls_token": rnd(1, 1, dim, std=0.5), "pos_embed": rnd(1, (224 // patch) ** 2 + 1, dim, std=0.2),
          "patch_embed.proj.weight": rnd(dim, 3, patch, patch, std=(3 * patch * patch) ** -0.5),
          "patch_embed.proj.bias": rnd(dim, std=0.02)}
    if kind != "dino":
        sd.update({"pos_drop.weight": rnd(dim, std=0.1, mean=1.0), "pos_drop.bias": rnd(dim, std=0.05)})
    for j in range(12):
        b = f"blocks.{j}."
        for ln in ("norm1", "norm2"):
            sd.update({b + ln + ".weight": rnd(dim, std=0.1, mean=1.0), b + ln + ".bias": rnd(dim, std=0.05)})
        for name, (o, i), std in (("attn.qkv", (3 * dim, dim), 1.0), ("attn.proj", (dim, dim), 0.5),
                                  ("mlp.fc1", (4 * dim, dim), 1.0), ("mlp.fc2", (dim, 4 * dim), 0.5)):
            sd[b + name + ".weight"] = rnd(o, i, std=std * i ** -0.5)
            sd[b + name + ".bias"] = rnd(o, std=0.02)
    sd.update({"norm.weight": rnd(dim, std=0.1, mean=1.0), "norm.bias": rnd(dim, std=0.05)})
    if kind != "dino":
        sd["proj"] = rnd(dim, 512, std=dim ** -0.5)
    return sd


def write_open_clip_visual(path, seed: int = 0, full_model: bool = False) -> Path:
    """An OpenCLIP ViT-B-16 image tower with generated weights, in OpenCLIP's names (``model.visual.state_dict()``,
    as the R-CLIP checkpoints; ``full_model``: prefixed ``visual.`` next to a text-tower key, as the Hugging Face
    file of the whole model). ``conv1`` has no bias. Deterministic in ``seed``."""
    import torch

    sd = generated_vit(torch.Generator().manual_seed(seed), 16, "open_clip")
    sd.pop("patch_embed.proj.bias")
    out = {"conv1.weight": sd.pop("patch_embed.proj.weight"), "class_embedding": sd.pop("cls_token").flatten(),
           "positional_embedding": sd.pop("pos_embed")[0], "proj": sd.pop("proj")}
    for k, v in sd.items():
        for a, b in (("pos_drop.", "ln_pre."), ("norm.", "ln_post."), ("blocks.", "transformer.resblocks."),
                     (".norm1.", ".ln_1."), (".norm2.", ".ln_2."), (".attn.qkv.", ".attn.in_proj_"),
                     (".attn.proj.", ".attn.out_proj."), (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj.")):
            if k.startswith(a) or (a.startswith(".") and a in k):
                k = k.replace(a, b, 1)
        out[k] = v
    if full_model:
        out = {**{f"visual.{k}": v for k, v in out.items()}, "logit_scale": torch.tensor(4.6)}
    torch.save(out, path)
    return Path(path)


def write_dreamsim_release(folder, variant: str, seed: int = 0, dino_head: bool = False) -> Path:
    """A DreamSim release of ``variant`` in the authors' layout, with generated weights of the real shapes:
    ``folder/dino_vitbase16_pretrain.pth`` (DINO's hub checkpoint, for variants with DINO) and
    ``folder/dreamsim_<variant>/`` (what the release zip unpacks to: converted CLIP backbones with their ``proj``,
    ``<lora folder>/adapter_config.json`` and ``adapter_model.bin`` in peft's naming). ``dino_head``: also the DINO
    projection head the package loads (and never uses for DreamSim's CLS feature). Deterministic in ``seed``
    across machines (one CPU generator), so tests/reference/make_dreamsim_fixture.py and the tests build the same
    files. Returns the release folder."""
    import json

    import torch

    from lit_attacks.metrics.dreamsim import BACKBONES, DINO_FILE, VARIANTS, lora_folder

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0, mean=0.0):
        return _rnd(g, *shape, std=std, mean=mean)

    def vit(patch, kind):
        return generated_vit(g, patch, kind)

    folder = Path(folder)
    release = folder / f"dreamsim_{variant}"
    lora = release / lora_folder(variant)
    lora.mkdir(parents=True, exist_ok=True)
    r, alpha = (16, 8.0) if variant == "ensemble" else (8, 16.0)
    adapter = {}
    for i, (b, _) in enumerate(VARIANTS[variant]):
        patch, _, kind = BACKBONES[b]
        sd = vit(patch, kind)
        if kind == "dino":
            torch.save(sd, folder / DINO_FILE)
            if dino_head:  # from its own generator, so the other files do not depend on dino_head
                h = torch.Generator().manual_seed(seed + 1)
                head = {f"module.head.mlp.{k}.{p}": torch.randn(*shape, generator=h) * 0.02 for k, shapes in
                        ((0, ((2048, 768), (2048,))), (2, ((2048, 2048), (2048,))), (4, ((256, 2048), (256,))))
                        for p, shape in zip(("weight", "bias"), shapes)}
                head["module.head.last_layer.weight"] = torch.randn(65536, 256, generator=h) * 0.02
                torch.save({"student": head}, release / "dino_vitb16_pretrain.pth")
        else:
            torch.save({"state_dict": sd}, release / f"{b}_pretrain.pth.tar")
        for j in range(12):
            key = f"base_model.model.extractor_list.{i}.model.blocks.{j}.attn.qkv."
            adapter[key + "lora_A.weight"] = rnd(r, 768, std=768 ** -0.5)
            adapter[key + "lora_B.weight"] = rnd(3 * 768, r, std=0.5 * r ** -0.5)
    torch.save(adapter, lora / "adapter_model.bin")
    (lora / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "inference_mode": True, "r": r,
        "lora_alpha": alpha, "lora_dropout": 0.3, "bias": "none", "target_modules": ["qkv"], "fan_in_fan_out": False,
        "modules_to_save": None}, indent=1))
    return release


def write_lipsim_checkpoint(path, seed: int = 0) -> Path:
    """A LipSim 'small' checkpoint with generated weights, as the authors' trainer saves it:
    ``{'model_state_dict': DataParallel(NormalizedModel(net)).state_dict(), 'epoch': 1}`` (keys ``module.model.``,
    with the aliases under ``module.model.base.``). Deterministic in ``seed``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(20):
        sd.update({f"convs.{i}.kernel": _rnd(g, 5, 45, 3, 3, std=(2 / (45 * 9 + 5 * 9)) ** 0.5),
                   f"convs.{i}.bias": _rnd(g, 1, 5, 1, 1, std=0.1), f"convs.{i}.q": _rnd(g, 5, std=0.5)})
    for j in range(1, 8):
        sd.update({f"linear.{j}.weight": _rnd(g, 1024, 8820, std=(2 / (1024 + 8820)) ** 0.5),
                   f"linear.{j}.bias": _rnd(g, 1, 1024, std=0.01), f"linear.{j}.q": _rnd(g, 1024, std=0.5)})
    full = {}
    for k, v in sd.items():
        full[f"module.model.{k}"] = v
        head, idx, rest = k.split(".", 2)
        full[f"module.model.base.{1 if head == 'convs' else 2}.{idx}.{rest}"] = v
    torch.save({"model_state_dict": full, "epoch": 1}, path)
    return Path(path)


def write_open_clip_convnext(path, seed: int = 0, full_model: bool = False) -> Path:
    """OpenCLIP's ``convnext_base_w`` image tower with generated weights in OpenCLIP's names (``model.visual``; with
    ``full_model`` prefixed ``visual.`` as the Hugging Face file of the whole model). Layer scales drawn around 0.3
    so every block matters. Deterministic in ``seed``."""
    import torch

    from lit_attacks.metrics.convnext import ConvNeXtTower

    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in ConvNeXtTower().state_dict().items():
        if k.endswith("gamma"):
            out[k] = _rnd(g, *v.shape, std=0.1, mean=0.3)
        elif k.endswith("bias"):
            out[k] = _rnd(g, *v.shape, std=0.02)
        elif v.dim() == 1:  # LayerNorm weights
            out[k] = _rnd(g, *v.shape, std=0.1, mean=1.0)
        else:
            out[k] = _rnd(g, *v.shape, std=v[0].numel() ** -0.5)
    if full_model:
        out = {**{f"visual.{k}": v for k, v in out.items()}, "logit_scale": torch.tensor(4.6)}
    torch.save(out, path)
    return Path(path)


def official_looking_tree(root: Path, subset_npy: Path, n: int = 6) -> list:
    """Samples at official keys (the first ``n`` of the official subset list) with made-up smooth images (64 px)
    and unanimous judges."""
    from lit_attacks import official as off

    keys = [off.key_of_judge_path(str(p)) for p in np.load(subset_npy)[:n]]
    rng = np.random.default_rng(0)
    for i, key in enumerate(keys):
        _, cat, stem = key.split("/")
        base = rng.random((8, 8, 3))
        imgs = []
        for noise in (0.0, 0.05, 0.3):
            im = np.clip(base + noise * rng.standard_normal(base.shape), 0, 1)
            imgs.append(np.asarray(Image.fromarray((im * 255).astype(np.uint8)).resize((64, 64), Image.BILINEAR)))
        add_sample(root, "val", cat, stem, imgs[0], imgs[1], imgs[2], float(i % 2))
    return keys


def fake_official(run: Path, folder: Path) -> None:
    """Official-format CSVs (lpipsAlex_pgd.csv, <metric>_transferableAdv.csv) written from our own run."""
    import csv

    from lit_attacks import official as off
    from lit_attacks.report import read_csv

    folder.mkdir(parents=True, exist_ok=True)
    pgd = read_csv(run / "samples" / "pgd-lpips_alex.csv")
    with open(folder / "lpipsAlex_pgd.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "new_h", "orig_h", "i", "rmse", "d0", "d1", "di"])
        for r in pgd:
            _, cat, stem = r["key"].split("/")
            prey, flipped = int(r["prey"]), r["flipped_official"] == "True"
            w.writerow([f"val/{cat}/judge/{stem}.npy", 1 - prey if flipped else prey, prey, r["iterations_official"],
                        round(float(r["rmse_official"]), 3), round(float(r["s0"]), 3), round(float(r["s1"]), 3),
                        round(float(r["s_adv"]), 3)])
    for name, metric in off.TRANSFER_METRICS.items():
        scores = read_csv(run / "scores" / f"{metric}.csv")
        with open(folder / f"{name}_transferableAdv.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sample", "d0", "d1"] + list(off.NOTEBOOK_COLUMNS.values()))
            for r in scores:
                _, cat, stem = r["key"].split("/")
                w.writerow([f"{cat}_{stem}", r["s0"], r["s1"]] + [float(r["s0"]) + 1] * len(off.NOTEBOOK_COLUMNS))


class PyStream:
    """lit_attacks.attacks.streams restated in plain Python integers (one sample's stream): lowbias32 with the 2022
    constants over (counter, key) words, uniforms (w + 0.5) / 2^32, Box-Muller from one counter's word."""

    def __init__(self, key: int) -> None:
        self.key, self.used = key, 0

    @staticmethod
    def mix(h: int) -> int:
        h ^= h >> 16
        h = (h * 0x21F0AAAD) % 2 ** 32
        h ^= h >> 15
        h = (h * 0x735A2D97) % 2 ** 32
        return h ^ (h >> 15)

    def word(self, counter: int) -> int:
        lo, hi = self.key % 2 ** 32, self.key >> 32
        return self.mix(self.mix((counter % 2 ** 32) ^ lo) ^ (counter >> 32) ^ hi)

    def uniforms(self, n: int) -> list:
        out = [(self.word(self.used + i) + 0.5) / 2 ** 32 for i in range(n)]
        self.used += n
        return out

    def normals(self, n: int) -> list:
        import math
        w = [self.word(self.used + i) for i in range(n)]
        self.used += n
        return [math.sqrt(-2 * math.log((a + 0.5) / 2 ** 32)) * math.cos(2 * math.pi * (self.mix(a ^ 0x9E3779B9) + 0.5)
                                                                           / 2 ** 32) for a in w]


def procedural_batch(cache_dir, batch_size: int = 12) -> dict:
    """The first ``batch_size`` samples of the built-in procedural set (4 per category) in float64: batched kernels'
    dependence on batch composition is ~1e-19 there (1e-8 in float32, which sign() can amplify), so batched and
    per-sample runs must agree."""
    import torch

    from lit_attacks.datamodules.bapps import BappsDataModule

    dm = BappsDataModule(batch_size=batch_size, builtin_n=4, cache_dir=str(cache_dir), builtin="procedural")
    b = next(iter(dm.predict_dataloader()))
    return {k: v.double() if torch.is_tensor(v) else v for k, v in b.items()}


def one_line_error(capsys, argv, code=2):
    """Run ``bench.main(argv)``, which must stop with exit status ``code`` and exactly one line on stderr starting
    ``bench.py: error: ``; returns the line."""
    import bench

    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == code, err
    assert err.startswith("bench.py: error: ") and "\n" not in err, err
    return err


@contextlib.contextmanager
def full_disk_at(monkeypatch, module, name: str):
    """``module.atomic_write`` raising ENOSPC (a full disk) for files called ``name``, as the real one otherwise."""
    real = module.atomic_write

    def full(path, text):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(module, "atomic_write", full)
    yield
    monkeypatch.setattr(module, "atomic_write", real)


CHROMIUM = __import__("shutil").which("chromium") or __import__("shutil").which("chromium-browser")


def chromium(tmp_path: Path, *args: str) -> str:
    """Headless Chromium on ``args`` (``--dump-dom URL``, ``--screenshot=...``); its profile, crash reports and desktop
    settings all under ``tmp_path`` (it writes ~/.config/chromium and ~/.cache/dconf otherwise). Returns stdout."""
    import os
    import subprocess

    home = tmp_path / "chromium-home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", "--disable-crash-reporter",
             f"--user-data-dir={home / 'profile'}", "--virtual-time-budget=5000", "--window-size=1280,900"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, env=env).stdout
