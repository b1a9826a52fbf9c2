"""The run report: Markdown and self-contained HTML (figures embedded), plus manifest.json, all
written through the artifact store (any fsspec URI)."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from pretextflow.core.evaluation.metrics import (
    EFFICIENCY_COLUMNS,
    FINETUNE,
    FIXMATCH_SCRATCH,
    FIXMATCH_SSL,
    KNN_TOP1,
    LINEAR_TOP1,
    LPFT,
    OPTIONAL_COLUMNS,
    PIXELS_LINEAR,
    RANDOM_INIT_LINEAR,
    SSL_BASED,
    SSL_KNN,
    SSL_LINEAR,
    SUPERVISED,
)
from pretextflow.core.runs.tables import escape, html_page, html_table, markdown_table
from pretextflow.core.security.redaction import redact
from pretextflow.core.store import ArtifactStore

RUNS = "runs"
MONITOR_FIGURE = "online_monitors.png"
_REPORT_CSS = ".lead{font-size:1.2em}img{max-width:100%;display:block;margin:0.5em 0}"


def init_label(metrics: dict[str, Any]) -> str:
    """What the ``random_init`` baseline is: the backbone before SSL, i.e. ``backbone.weights`` when set."""
    return "initial weights" if metrics.get("initial_weights") else "random init"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


HOW = {
    SSL_KNN.key: "kNN",
    LPFT.key: "LP-FT",
    FIXMATCH_SSL.key: "FixMatch from the SSL backbone",
    FINETUNE.key: "fine-tuning",
}
"""How each SSL-based method (``SSL_BASED``) is named in the report's first sentence."""


def label_efficiency_sentence(m: dict[str, Any]) -> str | None:
    """The answer to "how few labels do they need?": at the smallest labelled fraction, the best
    SSL-based method (frozen linear probe, kNN, LP-FT, FixMatch from SSL, fine-tuning: those that
    ran) vs supervised from scratch on the same labels, whichever way it goes."""
    rows = [r for r in m.get("label_efficiency", []) if r.get(SUPERVISED.key) is not None]
    if not rows:
        return None
    r = rows[0]
    ran = [c.key for c in SSL_BASED if r.get(c.key) is not None]
    best = max(ran, key=lambda k: (r[k], k == SSL_LINEAR.key))  # a tie names the linear probe
    d = (r[best] - r[SUPERVISED.key]) * 100
    how = (
        f"{r[best]:.1%} linear-probe top-1"
        if best == SSL_LINEAR.key
        else f"{r[best]:.1%} top-1 with {HOW[best]} (the best SSL-based method here; the linear probe: "
        f"{r[SSL_LINEAR.key]:.1%})"
    )
    return (
        f"With {_pct(r['fraction'])} of the labels ({r['num_labels']} images), SSL features reach "
        f"{how}, {abs(d):.1f} points {'above' if d >= 0 else 'below'} "
        f"supervised training from scratch on the same labels ({r[SUPERVISED.key]:.1%})."
    )


def headline(manifest: dict[str, Any]) -> str:
    m = manifest["metrics"]
    ds = manifest["dataset"]["name"]
    method, backbone = manifest["config"]["pretext"]["name"], manifest["config"]["backbone"]["name"]
    where = f"{method} on {backbone}"
    if "probe_dataset" in manifest:  # a transfer probe: pretrained on one dataset, judged on another
        where, ds = f"{where}, pretrained on {ds}", manifest["probe_dataset"]["name"]
    text = (
        f"With all {m['num_train']} labels, features learned without labels ({where}) reach "
        f"{m[LINEAR_TOP1]:.1%} linear-probe top-1 on the {ds} test split"
    )
    base = m.get("baselines", {})
    parts = []
    if "random_init" in base:
        d = (m[LINEAR_TOP1] - base["random_init"][LINEAR_TOP1]) * 100
        parts.append(
            f"{abs(d):.1f} points {'above' if d >= 0 else 'below'} the same backbone at "
            f"{'its initial weights' if m.get('initial_weights') else 'random initialisation'} "
            f"({base['random_init'][LINEAR_TOP1]:.1%})"
        )
    if "pixels" in base:
        d = (m[LINEAR_TOP1] - base["pixels"][LINEAR_TOP1]) * 100
        parts.append(
            f"{abs(d):.1f} points {'above' if d >= 0 else 'below'} raw pixels ({base['pixels'][LINEAR_TOP1]:.1%})"
        )
    full = [r for r in m.get("label_efficiency", []) if r["fraction"] >= 1 and r.get(SUPERVISED.key) is not None]
    if full:
        d = (m[LINEAR_TOP1] - full[0][SUPERVISED.key]) * 100
        parts.append(
            f"{abs(d):.1f} points {'above' if d >= 0 else 'below'} supervised training from scratch "
            f"({full[0][SUPERVISED.key]:.1%})"
        )
    text += (", " + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] if parts else "") + "."
    first = label_efficiency_sentence(m)
    return f"{first} {text}" if first else text


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def loss_figure(history: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(history.get("step_loss", []), dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if len(steps):
        ax.plot(np.arange(1, len(steps) + 1), steps, color="#9ab", lw=0.6, label="step")
        epochs = history.get("epoch_loss", [])
        per = len(steps) // max(1, len(epochs))
        ax.plot([per * (i + 1) for i in range(len(epochs))], epochs, "o-", color="#247", label="epoch mean")
    ax.set_xlabel("step")
    ax.set_ylabel("pretext loss")
    ax.set_title("Pretraining loss")
    ax.legend()
    ax.grid(alpha=0.3)
    data = _png(fig)
    plt.close(fig)
    return data


def probe_figure(metrics: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("SSL (frozen)", metrics[LINEAR_TOP1], metrics[KNN_TOP1])]
    for name, label in (("random_init", init_label(metrics)), ("pixels", "raw pixels")):
        if name in metrics.get("baselines", {}):
            b = metrics["baselines"][name]
            rows.append((label, b[LINEAR_TOP1], b[KNN_TOP1]))
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    lin = ax.bar(x - 0.2, [r[1] * 100 for r in rows], 0.4, label="linear probe", color="#247")
    knn = ax.bar(x + 0.2, [r[2] * 100 for r in rows], 0.4, label=f"kNN (k={metrics['knn']['k']})", color="#9ab")
    ax.bar_label(lin, fmt="%.1f", fontsize=8)
    ax.bar_label(knn, fmt="%.1f", fontsize=8)
    ax.set_xticks(x, [r[0] for r in rows])
    ax.set_ylabel("test top-1 (%)")
    lo = min(min(r[1], r[2]) for r in rows) * 100
    ax.set_ylim(max(0, lo - 10), 100)
    ax.set_title("Probe accuracy vs baselines")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    data = _png(fig)
    plt.close(fig)
    return data


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_efficiency_figure(metrics: dict[str, Any]) -> bytes:
    plt = _plt()
    rows = metrics["label_efficiency"]
    x = [r["fraction"] * 100 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    series = [
        (SSL_LINEAR.key, "SSL linear probe", "#247", "o-"),
        (SSL_KNN.key, f"SSL kNN (k={metrics['knn']['k']})", "#58a", "o--"),
        (LPFT.key, LPFT.label, "#172", "P-"),
        (FIXMATCH_SSL.key, FIXMATCH_SSL.label, "#6a2", "*-"),
        (FINETUNE.key, "SSL fine-tuned", "#2a6", "D-"),
        (SUPERVISED.key, "supervised from scratch", "#c52", "s-"),
        (FIXMATCH_SCRATCH.key, FIXMATCH_SCRATCH.label, "#e83", "x--"),
        (RANDOM_INIT_LINEAR.key, f"{init_label(metrics)}, linear", "#999", "^:"),
        (PIXELS_LINEAR.key, "raw pixels, linear", "#b8a", "v:"),
    ]
    for key, label, color, style in series:
        ran = [i for i, r in enumerate(rows) if r.get(key) is not None]  # FixMatch: below 100% only
        if not ran:
            continue
        err = [(rows[i].get(key + "_std") or 0) * 100 for i in ran]
        ax.errorbar(
            [x[i] for i in ran],
            [rows[i][key] * 100 for i in ran],
            yerr=err if any(err) else None,
            fmt=style,
            color=color,
            label=label,
            capsize=3,
            ms=5,
        )
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}%" for v in x])
    ax.set_xlabel("labelled fraction of the training set")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Label efficiency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    data = _png(fig)
    plt.close(fig)
    return data


def monitor_figure(records: list[dict[str, Any]], collapse_rank: float | None = None) -> bytes:
    """The online monitors (``history["monitor"]``: ``core.training.monitors``) against the epoch:
    kNN top-1 on the labelled training subset above, RankMe below (with ``collapse_rank`` dashed)."""
    plt = _plt()
    epochs = [r["epoch"] for r in records]
    knn = [np.nan if r.get("knn_top1") is None else r["knn_top1"] * 100 for r in records]
    rank = [np.nan if r.get("rankme") is None else r["rankme"] for r in records]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 4.4), sharex=True)
    if np.isfinite(knn).any():
        top.plot(epochs, knn, "o-", color="#247")
    else:
        top.text(
            0.5, 0.5, "no labelled training images: kNN skipped", ha="center", va="center", transform=top.transAxes
        )
        top.set_yticks([])
    top.set_ylabel("kNN top-1 (%)")
    top.set_title("Online monitors during pretraining (training-split subsets)")
    bottom.plot(epochs, rank, "s-", color="#c52", label="RankMe")
    if collapse_rank is not None:
        bottom.axhline(collapse_rank, color="#999", ls="--", lw=1, label=f"collapse_rank {collapse_rank:g}")
        bottom.legend(fontsize=8, loc="best")
    bottom.set_ylabel("RankMe (effective rank)")
    bottom.set_xlabel("epoch")
    bottom.set_ylim(bottom=0)
    bottom.xaxis.get_major_locator().set_params(integer=True)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    data = _png(fig)
    plt.close(fig)
    return data


def confusion_figure(metrics: dict[str, Any]) -> bytes:
    plt = _plt()
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    names = [str(n) for n in metrics["class_names"]]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j] * 100:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "#223",
                )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("SSL linear probe, all labels: confusion (% of each true class)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    data = _png(fig)
    plt.close(fig)
    return data


def _as_display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    img = np.asarray(img)
    if img.shape[0] == 1:
        return img[0], "gray"
    return np.transpose(img[:3], (1, 2, 0)), None


def retrieval_figure(
    queries: np.ndarray,
    query_labels: np.ndarray,
    neighbours: np.ndarray,
    neighbour_labels: np.ndarray,
    class_names: list[str],
) -> bytes:
    """One row per query test image: the query, then its nearest training images in feature space
    (green frame: same class, red: another class)."""
    plt = _plt()
    rows, cols = neighbours.shape[0], neighbours.shape[1] + 1
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.95), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            img, label = (queries[i], query_labels[i]) if j == 0 else (neighbours[i, j - 1], neighbour_labels[i, j - 1])
            pixels, cmap = _as_display(img)
            ax.imshow(pixels, cmap=cmap, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            color = "#225" if j == 0 else ("#2a2" if label == query_labels[i] else "#d22")
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(2.5 if j else 1.5)
            if j == 0:
                ax.set_ylabel(str(class_names[int(label)])[:12], fontsize=7, rotation=0, ha="right", va="center")
    axes[0, 0].set_title("query", fontsize=8)
    axes[0, cols // 2].set_title("nearest training images (SSL features, cosine)", fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


def projection_figure(points: np.ndarray, labels: np.ndarray, class_names: list[str], method: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=4, color=cmap(int(c) % cmap.N), label=str(class_names[int(c)]))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"Test features of the frozen SSL backbone ({method}, coloured by class)")
    if len(class_names) <= 20:
        ax.legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    data = _png(fig)
    plt.close(fig)
    return data


def feature_figures(
    store: ArtifactStore,
    metrics: dict[str, Any],
    dataset,
    seed: int,
    queries_per_class: int = 1,
    neighbours: int = 8,
    projection_points: int = 1500,
) -> dict[str, bytes]:
    """The figures that need the cached features and the images: retrieval grid and 2-D projection."""
    from pretextflow.core.data.shards import ImageView
    from pretextflow.core.evaluation.features import load_cached_features

    key = metrics.get("feature_keys", {}).get("ssl")
    if not key or not store.is_complete("features", key):
        return {}
    cache = f"{key}-s{seed}-q{queries_per_class}-n{neighbours}-p{projection_points}"
    if store.is_complete("figures", cache):  # same features: same figures (the t-SNE is the slow part)
        return {name: store.read_bytes("figures", cache, name) for name in ("retrieval.png", "projection.png")}
    tr_mask, te_mask = dataset.train_labels >= 0, dataset.test_labels >= 0
    ftr, fte = load_cached_features(store, key, "train"), load_cached_features(store, key, "test")
    ytr, yte = np.asarray(dataset.train_labels[tr_mask]), np.asarray(dataset.test_labels[te_mask])
    names = [str(n) for n in metrics.get("class_names", range(dataset.num_classes))]
    rng = np.random.default_rng(seed)
    # retrieval: a seeded random test image of each class (up to 10 classes), its nearest training images
    classes = np.unique(yte)[:10]
    q = np.array([rng.choice(np.flatnonzero(yte == c)) for c in classes for _ in range(queries_per_class)])
    a = fte[q] / (np.linalg.norm(fte[q], axis=1, keepdims=True) + 1e-12)
    b = ftr / (np.linalg.norm(ftr, axis=1, keepdims=True) + 1e-12)
    nn = np.argsort(-(a @ b.T), axis=1, kind="stable")[:, :neighbours]
    # views: only the query and neighbour images are read, not every labelled image
    train_imgs = ImageView(dataset.train_images, np.flatnonzero(tr_mask))
    test_imgs = ImageView(dataset.test_images, np.flatnonzero(te_mask))
    figs = {
        "retrieval.png": retrieval_figure(
            np.asarray(test_imgs[q]),
            yte[q],
            np.asarray(train_imgs[nn.ravel()]).reshape(nn.shape + train_imgs.shape[1:]),
            ytr[nn],
            names,
        )
    }
    # projection: t-SNE of a seeded sample of the test features (PCA when there are too few points)
    sel = np.sort(rng.choice(len(fte), size=min(projection_points, len(fte)), replace=False))
    x = (fte[sel] - fte[sel].mean(0)) / (fte[sel].std(0) + 1e-6)
    if len(sel) > 60:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        x = PCA(n_components=min(50, x.shape[1]), random_state=seed).fit_transform(x)
        pts, method = TSNE(n_components=2, init="pca", random_state=seed, perplexity=30).fit_transform(x), "t-SNE"
    else:
        from sklearn.decomposition import PCA

        pts, method = PCA(n_components=2, random_state=seed).fit_transform(x), "PCA"
    figs["projection.png"] = projection_figure(pts, yte[sel], names, method)
    for name, png in figs.items():
        store.write_bytes(png, "figures", cache, name)
    store.mark_complete("figures", cache)
    return figs


def _acc(r: dict[str, Any], key: str) -> str:
    v = r.get(key)
    if v is None:
        return "-"
    std = r.get(key + "_std")
    return f"{v:.4f} ± {std:.4f}" if r.get("seeds", 1) > 1 and std is not None else f"{v:.4f}"


Section = tuple[str, list[str], list[list[str]], list[str]]  # title, header, rows, figures under the table


def _probe_section(m: dict[str, Any]) -> Section:
    acc = [["SSL backbone (frozen)", f"{m[LINEAR_TOP1]:.4f}", f"{m[KNN_TOP1]:.4f}"]]
    for name, label in (("random_init", f"same backbone, {init_label(m)}"), ("pixels", "raw pixels")):
        if name in m.get("baselines", {}):
            b = m["baselines"][name]
            acc.append([label, f"{b[LINEAR_TOP1]:.4f}", f"{b[KNN_TOP1]:.4f}"])
    return (
        "Probe accuracy, all labels (test top-1)",
        ["features", "linear", f"kNN k={m['knn']['k']}"],
        acc,
        ["probe_accuracy.png", "confusion.png"],
    )


def _label_efficiency_section(m: dict[str, Any]) -> Section | None:
    """One row per labelled fraction; a column per comparison that ran (the optional protocols:
    fine-tuning, LP-FT, FixMatch, only when configured)."""
    eff = m.get("label_efficiency", [])
    if not eff:
        return None
    labels = {SSL_KNN.key: f"{SSL_KNN.label} k={m['knn']['k']}"}
    labels[RANDOM_INIT_LINEAR.key] = RANDOM_INIT_LINEAR.label.replace("random init", init_label(m))
    columns = [c for c in EFFICIENCY_COLUMNS if c not in OPTIONAL_COLUMNS or any(r.get(c.key) is not None for r in eff)]
    header = ["labelled", "labels"] + [labels.get(c.key, c.label) for c in columns]
    rows = [[_pct(r["fraction"]), str(r["num_labels"])] + [_acc(r, c.key) for c in columns] for r in eff]
    return ("Label efficiency (test top-1)", header, rows, ["label_efficiency.png"])


def _previous_run_section(manifest: dict[str, Any]) -> Section | None:
    prev = manifest.get("previous_run")
    if not prev:
        return None
    note = (
        "same data version and stage keys: nothing was retrained"
        if prev.get("same_keys")
        else f"data version {prev['data_version']} -> {manifest['data_version']}"
    )
    rows = [
        [
            r["metric"],
            "-" if r["before"] is None else f"{r['before']:.4f}",
            "-" if r["after"] is None else f"{r['after']:.4f}",
            "-" if r["diff"] is None else f"{r['diff'] * 100:+.2f}",
        ]
        for r in prev["comparison"]
    ]
    return (
        f"Compared with the previous run {prev['run_id']} ({note})",
        ["metric", "previous", "this run", "change (points)"],
        rows,
        [],
    )


def _teacher_section(manifest: dict[str, Any]) -> Section | None:
    """A distillation run: the student (this run's backbone) beside the teacher it regressed, on the
    same probes (the teacher's numbers are its own run's, on the same test split when the data is)."""
    t = manifest.get("teacher")
    if not t:
        return None
    m, student = manifest["metrics"], manifest["config"]["backbone"]
    rows = [["teacher", t["uri"] + (f" (sha256 {t['sha256'][:12]})" if t.get("sha256") else ""), "-", "-", "-"]]
    if t.get("metrics"):
        rows[0][1] = f"run {t['run_id']}: {t['pretext']}, {_backbone_text(t['backbone'])}"
        rows[0][2:] = [
            _acc(t["metrics"], LINEAR_TOP1),
            _acc(t["metrics"], KNN_TOP1),
            _fewest_text(t["label_efficiency"]),
        ]
    rows.append(
        [
            "student (this run)",
            _backbone_text(student),
            _acc(m, LINEAR_TOP1),
            _acc(m, KNN_TOP1),
            _fewest_text(m.get("label_efficiency", [])),
        ]
    )
    header = ["", "backbone", "linear, all labels", f"kNN k={m['knn']['k']}", "SSL linear, fewest labels"]
    return ("Distilled from a teacher (test top-1)", header, rows, [])


def _backbone_text(backbone: dict[str, Any]) -> str:
    kwargs = ", ".join(f"{k} {v}" for k, v in (backbone.get("kwargs") or {}).items())
    return f"{backbone['name']}" + (f" ({kwargs})" if kwargs else "")


def _fewest_text(eff: list[dict[str, Any]]) -> str:
    """The SSL linear probe at the smallest labelled fraction of a label-efficiency table."""
    row = min(eff, key=lambda r: r["fraction"], default=None)
    if not row or row.get(SSL_LINEAR.key) is None:
        return "-"
    return f"{row[SSL_LINEAR.key]:.4f} ({_pct(row['fraction'])}, {row['num_labels']} labels)"


def _label_subsets_setting(eff: list[dict[str, Any]]) -> list[str]:
    seeds = max(r.get("seeds", 1) for r in eff)
    return [
        "label subsets",
        f"class-stratified, nested ({', '.join(_pct(r['fraction']) for r in eff)}), "
        f"drawn with the run's seed; {seeds} draw(s) per fraction below 100%"
        f"{' (mean ± std)' if seeds > 1 else ''}; the same subset for every method",
    ]


def _supervised_setting(recipe: dict[str, Any], eff: list[dict[str, Any]]) -> list[str]:
    budget = "; ".join(
        f"{_pct(r['fraction'])}: {r['supervised']['steps']} steps ({r['supervised']['epochs']:.0f} "
        f"epochs), train top-1 {r['supervised']['train_top1']:.3f}"
        for r in eff
        if r.get("supervised")
    )
    return [
        "supervised from scratch",
        f"same architecture + linear head, cross-entropy (label smoothing "
        f"{recipe['label_smoothing']}), AdamW lr {recipe['lr']} wd {recipe['weight_decay']}, warm-up + "
        f"cosine, batch {recipe['batch_size']}, random resized crop (scale {recipe['crop_scale_min']}-1) "
        f"+ flip p={recipe['flip_p']}; budget max({recipe['epochs']} epochs, {recipe['min_steps']} "
        f"steps) — {budget}",
    ]


def _trained_settings(probe_cfg: dict[str, Any], eff: list[dict[str, Any]]) -> list[list[str]]:
    """The LP-FT and FixMatch rows of the protocol, when those ran: recipe, budget, and per fraction
    the steps (FixMatch: the mean share of unlabelled images above the threshold)."""
    rows = []
    lpft = [r for r in eff if r.get("lpft")]
    if lpft:
        runs = "; ".join(f"{_pct(r['fraction'])}: {r['lpft']['steps']} steps, lr {r['lpft']['lr']:.2g}" for r in lpft)
        rows.append(
            [
                "LP-FT",
                f"the linear probe's head on the frozen SSL features, then backbone + head fine-tuned with the "
                f"supervised recipe at {probe_cfg['lpft_recipe']['lr_scale']} x its lr — {runs}",
            ]
        )
    fixmatch = [r for r in eff if r.get("fixmatch_ssl")]
    if fixmatch:
        sr = probe_cfg["semisupervised_recipe"]
        runs = "; ".join(
            f"{_pct(r['fraction'])}: mask rate {r['fixmatch_ssl'].get('mask_rate', 0):.2f} from SSL, "
            f"{(r.get('fixmatch_scratch') or {}).get('mask_rate', 0):.2f} from scratch"
            for r in fixmatch
        )
        rows.append(
            [
                "FixMatch",
                f"{sr['steps']} steps of {sr['batch_size']} labelled + {sr['mu']} x {sr['batch_size']} unlabelled "
                f"images (every training image), pseudo labels from a weak view (crop {sr['weak_crop_scale_min']}-1 "
                f"+ flip) at confidence >= {sr['threshold']} for a strong one (crop {sr['strong_crop_scale_min']}-1, "
                f"jitter, grey), AdamW lr {sr['lr']}; from the SSL backbone and from scratch alike — {runs}",
            ]
        )
    return rows


def _protocol_section(manifest: dict[str, Any]) -> Section:
    m, k = manifest["metrics"], manifest["metrics"]["knn"]["k"]
    detail = manifest.get("metrics_detail", {})
    settings = [
        [
            "linear probe",
            f"standardised features, multinomial logistic regression (L-BFGS); weight decay chosen "
            f"from {m['linear']['weight_decay_grid']} on {m['linear']['chosen_on']}; "
            f"chosen: {detail.get('ssl', {}).get('linear', {}).get('weight_decay', '?')}",
        ],
        [
            "kNN",
            f"k={k} (also {', '.join(str(x) for x in manifest['config']['probe']['knn_k'][1:]) or 'none'}), "
            f"T={m['knn']['temperature']}, cosine similarity on L2-normalised features, weights exp(sim/T)",
        ],
        ["labelled images", f"{m['num_train']} train / {m['num_test']} test (scored once, on test)"],
    ]
    eff = m.get("label_efficiency", [])
    if eff:
        settings.append(_label_subsets_setting(eff))
    recipe = m.get("supervised_recipe")
    if recipe:
        settings.append(_supervised_setting(recipe, eff))
    settings += _trained_settings(manifest["config"]["probe"], eff)
    return ("Protocol", ["probe", "settings"], settings, [])


def _manifest_section(manifest: dict[str, Any]) -> Section:
    code, plugins, pretrain = manifest["code_version"], manifest["plugins"], manifest["pretrain"]
    facts = [
        ["run", manifest["run_id"]],
        ["data version (data.dvc md5)", manifest["data_version"]],
        [
            "dataset",
            f"{manifest['dataset']['name']} ({manifest['dataset']['format']}, "
            f"{manifest['dataset']['image_shape']}, fingerprint {manifest['dataset']['fingerprint']})",
        ],
        ["dataset's last ingest", manifest["dataset"].get("last_change", "n/a")],
        [
            "code version",
            f"pretextflow {code['pretextflow']}, commit {code.get('commit') or 'n/a'}"
            f"{' (dirty)' if code.get('dirty') else ''}",
        ],
        [
            "pretext / backbone",
            f"{plugins['pretext']['name']} ({plugins['pretext']['package']} {plugins['pretext']['version']}) / "
            f"{plugins['backbone']['name']}",
        ],
        ["seed / device / threads", f"{manifest['seed']} / {manifest['device']} / {manifest['threads']}"],
        [
            "pretraining",
            f"{pretrain['epochs']} epochs, final loss {pretrain['final_loss']:.4f}, "
            f"{(pretrain['images_per_second'] or 0):.0f} images/s" + _rollback_text(pretrain.get("rollbacks") or []),
        ],
        ["packages", ", ".join(f"{k} {v}" for k, v in manifest["packages"].items())],
    ]
    for stage, info in manifest.get("stages", {}).items():
        facts.append([f"stage {stage}", f"{info.get('seconds', 0):.1f}s{' (cached)' if info.get('cached') else ''}"])
    for stage, art in manifest["artifacts"].items():
        facts.append([f"artifact {stage}", art["uri"]])
    return ("Manifest", ["fact", "value"], facts, [])


def _sections(manifest: dict[str, Any]) -> list[Section]:
    """The report's sections, in order: those without data for this run are left out."""
    m = manifest["metrics"]
    sections = [
        _probe_section(m),
        _label_efficiency_section(m),
        _teacher_section(manifest),
        _previous_run_section(manifest),
        ("Pretraining", ["", ""], [], ["pretrain_loss.png", MONITOR_FIGURE]),
        ("What the features capture", ["", ""], [], ["retrieval.png", "projection.png"]),
        _protocol_section(manifest),
        _manifest_section(manifest),
    ]
    return [s for s in sections if s is not None]


def _shown(manifest: dict[str, Any], figures: dict[str, bytes]) -> list[Section]:
    """The sections with a table or a figure to show; each with only the figures there are."""
    shown = []
    for title, header, rows, figs in _sections(manifest):
        figs = [f for f in figs if f in figures]
        if rows or figs:
            shown.append((title, header, rows, figs))
    return shown


def render_markdown(manifest: dict[str, Any], figures: dict[str, bytes]) -> str:
    out = [f"# pretextflow report: {manifest['name']}", "", headline(manifest), ""]
    if manifest.get("regression"):
        out += [f"**Regression: {manifest['regression']}**", ""]
    for title, header, rows, figs in _shown(manifest, figures):
        out += [f"## {title}", ""]
        if rows:
            out += [*markdown_table(header, rows), ""]
        out += [f"![{name}]({name})" for name in figs] + ([""] if figs else [])
    return "\n".join(out)


def _rollback_text(rollbacks: list[dict[str, Any]]) -> str:
    """``; 2 rollbacks (non-finite loss at step 40 -> back to step 30, lr x0.5; ...)``: a run that
    needed them is not the same as one that did not, and the report says so."""
    if not rollbacks:
        return ""
    each = "; ".join(
        f"{r['problem']} at step {r['step']} -> back to step {r['restored_step']}, lr x{r['lr_scale']:g}"
        for r in rollbacks
    )
    return f"; {len(rollbacks)} rollback{'s' if len(rollbacks) > 1 else ''} ({each})"


def render_html(manifest: dict[str, Any], figures: dict[str, bytes]) -> str:
    e = escape
    body = [f"<h1>pretextflow report: {e(manifest['name'])}</h1>", f"<p class='lead'>{e(headline(manifest))}</p>"]
    if manifest.get("regression"):
        body.append(f"<p style='color:#b00;font-weight:bold'>Regression: {e(manifest['regression'])}</p>")
    for title, header, rows, figs in _shown(manifest, figures):
        body.append(f"<h2>{e(title)}</h2>")
        if rows:
            body += html_table(header, rows)
        for name in figs:
            b64 = base64.b64encode(figures[name]).decode()
            body.append(f"<img alt='{e(name)}' src='data:image/png;base64,{b64}'>")
    return html_page(f"pretextflow: {manifest['name']}", body, width=1000, css=_REPORT_CSS)


def write_report(
    store: ArtifactStore, run_id: str, manifest: dict[str, Any], history: dict, metrics: dict, dataset=None
) -> str:
    figures = {"pretrain_loss.png": loss_figure(history), "probe_accuracy.png": probe_figure(metrics)}
    if history.get("monitor"):  # the online monitors' records, when the run had them
        monitor = (manifest.get("config") or {}).get("monitor") or {}
        figures[MONITOR_FIGURE] = monitor_figure(history["monitor"], monitor.get("collapse_rank"))
    if metrics.get("label_efficiency"):
        figures["label_efficiency.png"] = label_efficiency_figure(metrics)
    if metrics.get("confusion_matrix"):
        figures["confusion.png"] = confusion_figure(metrics)
    if dataset is not None:
        figures.update(feature_figures(store, metrics, dataset, manifest["seed"]))
    for name, png in figures.items():
        store.write_bytes(png, RUNS, run_id, name)
    manifest["artifacts"]["report"] = {"uri": redact(store.uri_of(RUNS, run_id))}  # never credentials in a URI
    store.write_bytes(render_markdown(manifest, figures).encode(), RUNS, run_id, "report.md")
    store.write_bytes(render_html(manifest, figures).encode(), RUNS, run_id, "report.html")
    store.write_json(manifest, RUNS, run_id, "manifest.json")  # last: its presence means the run is complete
    return store.uri_of(RUNS, run_id)
