"""``lit_attacks.evaluate``: any metric, one protocol, one call; the result is its leaderboard entry."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from lit_attacks.safe_files import InputError


class EvaluationError(InputError):
    """Bad input to :func:`evaluate` (metric, data, protocol, options); the message is bench.py's one line."""


def evaluate(metric: Any, data: Optional[str] = None, protocol: str = "leaderboard_quick", out: Optional[str] = None,
             name: Optional[str] = None, similarity: Optional[bool] = None, fresh: bool = False, quiet: bool = True,
             allow_code: bool = False, **options: Any) -> Dict[str, Any]:
    """Evaluate ``metric`` with ``protocol`` on ``data`` and return its results entry (the JSON it writes).

    Args:
        metric: a registered name (``lpips_alex``), ``py:package.module:factory``, or any ``torch.nn.Module`` or
            callable ``d(ref, x) -> Tensor[B]`` on (B, 3, H, W) images in [-1, 1], smaller = more similar. An
            object is wrapped once (checked on a probe batch, eval mode, frozen) and named ``user:<name>``.
        data: None or "builtin" (the built-in set), a BAPPS or NIGHTS folder, or converted shards.
        protocol: a preset with a ``leaderboard`` section (``leaderboard_quick``, ``rclip_nights``,
            ``worst_case_bapps``, ...) or a YAML path.
        out: the results folder (default ``results/evaluate/<protocol>/<metric>``); a rerun resumes from its completed
            cells. It holds this run only: give each metric its own (the default does), and build the leaderboard
            from all of them (``python -m lit_attacks.leaderboard build results/evaluate --out site``).
        name: the object's name in tables (default: its class or function name).
        similarity: the object returns a similarity (larger = more similar): its distance is ``1 - s``.
        fresh: recompute every cell.
        quiet: no progress lines.
        allow_code: run the code a protocol YAML names (``py:`` metrics in it); off, such a protocol is refused
            (``metric`` itself is yours and needs no permission).
        options: any other bench.py flag, by its config key (``batch_size=32``, ``pretrained=False``, ``gpus=1``).

    Returns:
        The entry: ``entry["results"]["robust"]``, ``entry["sanity"]``, ... (docs/leaderboard.md).
    """
    from lit_attacks.bench.cli import Stop, execute
    from lit_attacks.metrics.user import register_object
    from lit_attacks.report import json_safe
    from lit_attacks.tables.base import slug

    spec = metric if isinstance(metric, str) else register_object(metric, name, similarity)
    out = out or str(Path("results") / "evaluate" / Path(protocol).stem / slug(spec))  # one folder per metric:
    # a results folder holds one run, and a run on other metrics would replace its files
    argv = ["--config", str(protocol), "--metrics", spec, "--out", str(out)]  # also the command the run records
    if data is not None:
        argv += ["--data", str(data)]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    argv += (["--fresh"] if fresh else []) + (["--quiet"] if quiet else []) + (["--allow-code"] if allow_code else [])
    try:
        outcome = execute(argv)  # the bench run, in this process
    except Stop as e:
        raise EvaluationError(str(e)) from None
    if outcome.code == 130:
        raise KeyboardInterrupt
    entries = outcome.bench.results("leaderboard") if outcome.bench is not None else {}
    if spec not in entries:
        raise EvaluationError(f"protocol {protocol}: gave no leaderboard entry for {spec} (a protocol needs "
                              "robust: and leaderboard: sections; see configs/bench/leaderboard_quick.yaml)")
    return json.loads(json.dumps(json_safe(entries[spec]), default=str))  # as written: plain JSON types
