"""The paper's analyses (section 4, Fig. 2-5): numbers as plain Python/NumPy, figures as PNG files.

- Fig. 2, layer saliency: ``lsr_summary`` of ``saliency.layer_saliency`` results, ``plot_lsr_distribution``.
- Fig. 3, layer contribution: ``block_outputs`` (forward hooks), ``linear_cka`` / ``cka_matrix``
  (Kornblith et al. 2019), ``cka_correspondence``, ``plot_cka_heatmap``.
- Fig. 4, T->S influence: ``pvr`` (Eq. 3) per block and module, ``plot_pvr_heatmap``.
- Fig. 5, channel vs token similarity: ``scores_matrix``, ``plot_similarity_heatmaps``.
matplotlib is imported inside the ``plot_*`` functions only and draws on the non-interactive Agg canvas
(no pyplot, no global backend switch), so headless machines and tests can plot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from clda_deploy.models.blocks import BlockName
from clda_deploy.models.segmenter import Segmenter
from clda_deploy.uda.saliency import DEFAULT_LSR_THRESHOLD, split_batches

Matrix = Tensor | np.ndarray
Names = Sequence[str]
DEFAULT_MAX_TOKENS = 1024  # tokens kept per image and block in block_outputs (bounds the memory)


def _forward_order(names: Iterable[str]) -> list[str]:
    """Block names sorted by (stage, block) numbers: ``stage3.block02`` before ``stage3.block10``."""
    return sorted(set(names), key=BlockName.parse)


def _short(name: str) -> str:
    return name.replace("stage", "s").replace(".block", ".")  # "stage3.block05" -> "s3.05" for axis ticks


def lsr_summary(saliency: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of salient / non-salient blocks and LSR statistics of one model (Fig. 2's numbers)."""
    count, salient = len(saliency), sum(bool(entry["salient"]) for entry in saliency)
    lsr = [float(entry["lsr"]) for entry in saliency] or [0.0]
    return {
        "blocks": count,
        "salient": salient,
        "non_salient": count - salient,
        "non_salient_fraction": (count - salient) / max(count, 1),
        "mean_lsr": float(np.mean(lsr)),
        "max_lsr": max(lsr),
    }


def plot_lsr_distribution(
    teacher_saliency: Sequence[Mapping[str, Any]],
    student_saliency: Sequence[Mapping[str, Any]],
    path: str | Path,
    threshold: float = DEFAULT_LSR_THRESHOLD,
) -> Path:
    """Fig. 2: salient / non-salient block counts of both models, and every block's LSR (symlog axis)."""
    figure = _figure(14, 4)
    axes = figure.subplots(1, 3, width_ratios=[1, 2, 2])
    models = {"teacher": teacher_saliency, "student": student_saliency}
    summaries = {role: lsr_summary(entries) for role, entries in models.items()}
    salient, non_salient = ([summary[key] for summary in summaries.values()] for key in ("salient", "non_salient"))
    axes[0].bar(list(models), salient, color="tab:blue", label="salient")
    axes[0].bar(list(models), non_salient, bottom=salient, color="tab:red", label="non-salient")
    axes[0].set(ylabel="blocks", title="layer saliency")
    axes[0].legend()
    for axis, (role, entries) in zip(axes[1:], models.items(), strict=True):
        colors = ["tab:blue" if entry["salient"] else "tab:red" for entry in entries]
        axis.bar(range(len(entries)), [entry["lsr"] for entry in entries], color=colors)
        axis.axhline(threshold, color="black", linestyle="--", linewidth=1)
        axis.set_yscale("symlog", linthresh=threshold)
        axis.set_xticks(range(len(entries)), [_short(entry["block"]) for entry in entries], rotation=90, fontsize=6)
        summary = summaries[role]
        axis.set(ylabel="LSR (mIoU points)", title=f"{role}: {summary['non_salient']}/{summary['blocks']} non-salient")
    return _save(figure, path)


def plot_saliency_by_domain(
    saliency: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, threshold: float = DEFAULT_LSR_THRESHOLD
) -> Path:
    """Signed delta of Eq. 2 (R(full) - R(block skipped)) per block on the target and on the source, one
    panel per model: a block below zero on the target but above on the source is a domain-shift block,
    one near zero on both an unused one."""
    figure = _figure(14, 3.5 * len(saliency))
    axes = figure.subplots(len(saliency), 1, squeeze=False)[:, 0]
    for axis, (role, entries) in zip(axes, saliency.items(), strict=True):
        positions = range(len(entries))
        target = [float(entry["delta"]) for entry in entries]
        source = [float(entry["delta_source"]) if entry.get("delta_source") is not None else 0.0 for entry in entries]
        axis.bar([p - 0.2 for p in positions], target, width=0.4, color="tab:orange", label="target")
        axis.bar([p + 0.2 for p in positions], source, width=0.4, color="tab:gray", label="source")
        for line in (threshold, -threshold):
            axis.axhline(line, color="black", linestyle="--", linewidth=0.8)
        axis.axhline(0.0, color="black", linewidth=0.8)
        axis.set_yscale("symlog", linthresh=threshold)
        axis.set_xticks(list(positions), [_short(entry["block"]) for entry in entries], rotation=90, fontsize=6)
        hurting = sum(value < -threshold for value in target)
        axis.set(ylabel="Δ mIoU when skipped", title=f"{role}: {hurting} blocks whose removal raises target mIoU")
        axis.legend(loc="upper right")
    return _save(figure, path)


def _centered(features: Matrix) -> Tensor:
    """``[n, p]`` features as float64 on the CPU, each column centred (the H of HSIC)."""
    x = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if x.dim() != 2:
        raise ValueError(f"CKA features must be [n, p] (examples x neurons), got shape {tuple(x.shape)}")
    return x - x.mean(dim=0, keepdim=True)


def _gram_cka(gram_x: Tensor, gram_y: Tensor) -> float:
    """``<K, L>_F / (||K||_F ||L||_F)`` of centred linear Gram matrices (0 for a constant feature set)."""
    denominator = gram_x.norm() * gram_y.norm()
    return float((gram_x * gram_y).sum() / denominator) if denominator > 0 else 0.0


def _gram(features: Matrix, debiased: bool = False) -> Tensor:
    """Centred linear Gram matrix ``[n, n]``; ``debiased``: U-centred (Kornblith's ``center_gram(unbiased=True)``,
    the unbiased HSIC estimator of Song et al. 2012), which removes the bias towards 1 when n << p."""
    x = _centered(features)
    gram = x @ x.T
    if not debiased:
        return gram
    n = gram.shape[0]
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 examples, got {n}")
    gram.fill_diagonal_(0.0)
    means = gram.sum(dim=0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    return (gram - means[:, None] - means[None, :]).fill_diagonal_(0.0)


def linear_cka(x: Matrix, y: Matrix, debiased: bool = False) -> float:
    """Linear CKA ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` of centred ``x [n, p1]``, ``y [n, p2]``.

    Float64; in [0, 1]; invariant to orthogonal transforms and isotropic scaling of either side. Uses the
    ``[n, n]`` Gram form (``||Y^T X||_F^2 = <X X^T, Y Y^T>_F``) when n is smaller than the widths.
    With few examples (n << p) plain CKA is biased towards 1: ``debiased=True`` uses U-centred Grams.
    """
    x, y = _centered(x), _centered(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same n examples on both sides, got {x.shape[0]} and {y.shape[0]}")
    if debiased or x.shape[0] < min(x.shape[1], y.shape[1]):
        return _gram_cka(_gram(x, debiased), _gram(y, debiased))
    denominator = (x.T @ x).norm() * (y.T @ y).norm()
    return float((y.T @ x).square().sum() / denominator) if denominator > 0 else 0.0


def cka_matrix(
    teacher_features: Mapping[str, Matrix], student_features: Mapping[str, Matrix], debiased: bool = False
) -> tuple[np.ndarray, list[str], list[str]]:
    """Fig. 3: linear CKA of every (teacher block, student block) pair -> ``([Lt, Ls] float64, teacher
    names, student names)``, names in the mappings' order; each centred Gram matrix is built once."""
    sides = (teacher_features, student_features)
    grams = [{name: _gram(features, debiased) for name, features in side.items()} for side in sides]
    sizes = {gram.shape[0] for side in grams for gram in side.values()}
    if len(sizes) > 1:
        raise ValueError(f"every block needs the same n examples for CKA, got {sorted(sizes)}")
    matrix = np.array([[_gram_cka(t, s) for s in grams[1].values()] for t in grams[0].values()], dtype=np.float64)
    return matrix.reshape(len(grams[0]), len(grams[1])), list(grams[0]), list(grams[1])


def cka_correspondence(
    matrix: np.ndarray, teacher_names: Sequence[str], student_names: Sequence[str]
) -> dict[str, tuple[str, float]]:
    """For every student block, the teacher block with the highest CKA: ``{student: (teacher, cka)}``."""
    best = np.asarray(matrix).argmax(axis=0)
    pairs = enumerate(zip(student_names, best, strict=True))
    return {s: (teacher_names[row], float(matrix[row, col])) for col, (s, row) in pairs}


@torch.no_grad()
def block_outputs(
    model: Segmenter,
    images: Any,
    names: Sequence[str] | None = None,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    pool: Literal["flatten", "mean"] = "flatten",
) -> dict[str, Tensor]:
    """Per-image block outputs ``{name: [n, p]}`` (float32, CPU) for CKA, read by forward hooks.

    ``images``: one ``[B,3,H,W]`` batch or an iterable of batches (``saliency.split_batches``; labels are
    ignored); n = the number of images. A block's output ``[B, N, C]`` becomes ``[B, N' * C]``
    (``pool="flatten"``, N' = at most ``max_tokens`` tokens evenly spaced in raster order, the same for
    every image) or ``[B, C]`` (``pool="mean"``, mean over the tokens).
    """
    if pool not in ("flatten", "mean"):
        raise ValueError(f"pool must be 'flatten' or 'mean', got {pool!r}")
    names = list(model.block_names() if names is None else names)
    chunks: dict[str, list[Tensor]] = {name: [] for name in names}

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            tokens = output
            if pool == "mean":
                tokens = tokens.mean(dim=1, keepdim=True)
            elif max_tokens is not None and tokens.shape[1] > max_tokens:
                index = torch.linspace(0, tokens.shape[1] - 1, max_tokens, device=tokens.device).round().long()
                tokens = tokens[:, index]
            chunks[name].append(tokens.reshape(tokens.shape[0], -1).float().cpu())

        return hook

    blocks = {name: model.block(name) for name in names}  # every name resolved before any hook is placed
    handles = [block.register_forward_hook(hook_for(name)) for name, block in blocks.items()]
    was_training, device = model.training, next(model.parameters()).device
    try:
        model.eval()
        for image, _ in split_batches(images):
            model(image.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def plot_cka_heatmap(
    matrix: np.ndarray, teacher_names: Sequence[str], student_names: Sequence[str], path: str | Path
) -> Path:
    """Fig. 3: CKA heatmap, teacher blocks on the y axis (bottom = first), student blocks on the x axis."""
    figure = _figure(2 + 0.3 * len(student_names), 2 + 0.22 * len(teacher_names))
    axis = figure.subplots()
    _heatmap(figure, axis, np.asarray(matrix), teacher_names, student_names, vmin=0.0, vmax=1.0, label="linear CKA")
    axis.set(xlabel="student block", ylabel="teacher block", title="teacher x student CKA")
    return _save(figure, path)


def module_pvr(module_a: nn.Module, module_b: nn.Module) -> float:
    """Eq. 3 for one module: ``sum_d |phi_a,d - phi_b,d| / D`` over its D parameter elements (all its
    parameter tensors, paired by name), in float64."""
    a, b = dict(module_a.named_parameters()), dict(module_b.named_parameters())
    if list(a) != list(b) or any(a[key].shape != b[key].shape for key in a):
        shapes = {key: tuple(value.shape) for key, value in a.items()}, {k: tuple(v.shape) for k, v in b.items()}
        raise ValueError(f"PVR needs modules of the same structure, got {shapes[0]} and {shapes[1]}")
    count = sum(value.numel() for value in a.values())
    if count == 0:
        raise ValueError("PVR of a module without parameters is undefined")
    total = sum((a[key].detach().double().cpu() - b[key].detach().double().cpu()).abs().sum() for key in a)
    return float(total) / count


def pvr(
    model_a: Segmenter, model_b: Segmenter, modules: Sequence[str] | None = None, names: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Fig. 4 (Eq. 3): ``{block: {module: PVR}}`` between two models of one architecture (the distilled
    and the independently trained student). ``modules``: submodule paths inside each block; by default
    the block's residual branches as the encoder names them (``{"attn", "mlp"}`` for MiT)."""
    if names is None:
        names = model_a.block_names()
        if names != model_b.block_names():
            raise ValueError("PVR compares models of the same architecture; their block lists differ")
    values = {}
    for name in names:
        a, b = (_pvr_modules(model, name, modules) for model in (model_a, model_b))
        values[name] = {m: module_pvr(a[m], b[m]) for m in a}
    return values


def _pvr_modules(model: Segmenter, name: str, modules: Sequence[str] | None) -> dict[str, nn.Module]:
    if modules is None:
        return model.encoder.branches(name)
    block = model.block(name)
    return {m: block.get_submodule(m) for m in modules}


def plot_pvr_heatmap(values: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Fig. 4: PVR heatmap, modules on the y axis, blocks in forward order on the x axis."""
    blocks = list(values)
    modules = list(next(iter(values.values()), {}))
    matrix = np.array([[values[block][m] for block in blocks] for m in modules], dtype=np.float64)
    figure = _figure(2 + 0.3 * len(blocks), 1.5 + 0.5 * len(modules))
    axis = figure.subplots()
    _heatmap(figure, axis, matrix, modules, blocks, label="PVR (mean |difference|)")
    axis.set(xlabel="block", title="distilled vs independent student")
    return _save(figure, path)


def scores_matrix(scores: Mapping[str, Mapping[str, float]]) -> tuple[np.ndarray, list[str], list[str]]:
    """Nested ``{teacher: {student: score}}`` -> ``([T, S] with NaN where a pair was not compared,
    teacher blocks, student blocks)``, both in forward order."""
    rows = _forward_order(scores)
    cols = _forward_order(s for row in scores.values() for s in row)
    matrix = np.array([[scores[t].get(s, np.nan) for s in cols] for t in rows], dtype=np.float64)
    return matrix.reshape(len(rows), len(cols)), rows, cols


def plot_similarity_heatmaps(
    channel_scores: Mapping[str, Mapping[str, float]], token_scores: Mapping[str, Mapping[str, float]], path: str | Path
) -> Path:
    """Fig. 5: (a) channel-wise and (b) token-wise similarity heatmaps side by side (pass
    ``SimilarityAccumulator.mean_scores()`` for mean cosines on one scale, or ``scores`` for the sums)."""
    panels = {"(a) channel": scores_matrix(channel_scores), "(b) token": scores_matrix(token_scores)}
    width = max(len(cols) for _, _, cols in panels.values())
    height = max(len(rows) for _, rows, _ in panels.values())
    figure = _figure(4 + 0.6 * width * 2, 2 + 0.35 * height)
    for axis, (title, (matrix, rows, cols)) in zip(figure.subplots(1, 2), panels.items(), strict=True):
        _heatmap(figure, axis, matrix, rows, cols, label="cosine similarity")
        axis.set(xlabel="student block", ylabel="teacher block", title=title)
    return _save(figure, path)


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (imported lazily: matplotlib is only needed for plots)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the analysis plots need matplotlib: pip install matplotlib") from error
    figure = Figure(figsize=(min(width, 40.0), min(height, 40.0)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _heatmap(figure: Any, axis: Any, matrix: np.ndarray, rows: Names, cols: Names, label: str, **limits: float) -> None:
    """``matrix [rows, cols]`` (NaN left blank), first row at the bottom; ``limits``: vmin / vmax."""
    image = axis.imshow(np.ma.masked_invalid(matrix), aspect="auto", origin="lower", **limits)
    axis.set_xticks(range(len(cols)), [_short(c) for c in cols], rotation=90, fontsize=7)
    axis.set_yticks(range(len(rows)), [_short(r) for r in rows], fontsize=7)
    figure.colorbar(image, ax=axis, label=label)


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
