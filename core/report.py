"""The run report: Markdown and self-contained HTML (figures embedded), plus manifest.json, all
written through the artifact store (any fsspec URI)."""
from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from .store import ArtifactStore

RUNS = "runs"


def headline(manifest: dict[str, Any]) -> str:
    m = manifest["metrics"]
    ds = manifest["dataset"]["name"]
    method, backbone = manifest["config"]["pretext"]["name"], manifest["config"]["backbone"]["name"]
    text = (f"Features learned without labels ({method} on {backbone}) reach {m['linear_top1']:.1%} linear-probe "
            f"top-1 on the {ds} test split")
    base = m.get("baselines", {})
    parts = []
    if "random_init" in base:
        d = (m["linear_top1"] - base["random_init"]["linear_top1"]) * 100
        parts.append(f"{abs(d):.1f} points {'above' if d >= 0 else 'below'} the same backbone at random "
                     f"initialisation ({base['random_init']['linear_top1']:.1%})")
    if "pixels" in base:
        d = (m["linear_top1"] - base["pixels"]["linear_top1"]) * 100
        parts.append(f"{abs(d):.1f} points {'above' if d >= 0 else 'below'} raw pixels "
                     f"({base['pixels']['linear_top1']:.1%})")
    return text + (", " + " and ".join(parts) if parts else "") + "."


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

    rows = [("SSL (frozen)", metrics["linear_top1"], metrics["knn_top1"])]
    for name, label in (("random_init", "random init"), ("pixels", "raw pixels")):
        if name in metrics.get("baselines", {}):
            b = metrics["baselines"][name]
            rows.append((label, b["linear_top1"], b["knn_top1"]))
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


def _tables(manifest: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    m = manifest["metrics"]
    k = m["knn"]["k"]
    acc = [["SSL backbone (frozen)", f"{m['linear_top1']:.4f}", f"{m['knn_top1']:.4f}"]]
    for name, label in (("random_init", "same backbone, random init"), ("pixels", "raw pixels")):
        if name in m.get("baselines", {}):
            b = m["baselines"][name]
            acc.append([label, f"{b['linear_top1']:.4f}", f"{b['knn_top1']:.4f}"])
    detail = manifest.get("metrics_detail", {})
    settings = [
        ["linear probe", f"standardised features, multinomial logistic regression (L-BFGS); weight decay chosen "
                         f"from {m['linear']['weight_decay_grid']} on {m['linear']['chosen_on']}; "
                         f"chosen: {detail.get('ssl', {}).get('linear', {}).get('weight_decay', '?')}"],
        ["kNN", f"k={k} (also {', '.join(str(x) for x in manifest['config']['probe']['knn_k'][1:]) or 'none'}), "
                f"T={m['knn']['temperature']}, cosine similarity on L2-normalised features, weights exp(sim/T)"],
        ["labelled images", f"{m['num_train']} train / {m['num_test']} test (scored once, on test)"],
    ]
    facts = [
        ["run", manifest["run_id"]],
        ["data version (data.dvc md5)", manifest["data_version"]],
        ["dataset", f"{manifest['dataset']['name']} ({manifest['dataset']['format']}, "
                    f"{manifest['dataset']['image_shape']}, fingerprint {manifest['dataset']['fingerprint']})"],
        ["code version", f"pretextflow {manifest['code_version']['pretextflow']}, commit "
                         f"{manifest['code_version'].get('commit') or 'n/a'}"
                         f"{' (dirty)' if manifest['code_version'].get('dirty') else ''}"],
        ["pretext / backbone", f"{manifest['plugins']['pretext']['name']} "
                               f"({manifest['plugins']['pretext']['package']} {manifest['plugins']['pretext']['version']}) / "
                               f"{manifest['plugins']['backbone']['name']}"],
        ["seed / device / threads", f"{manifest['seed']} / {manifest['device']} / {manifest['threads']}"],
        ["pretraining", f"{manifest['pretrain']['epochs']} epochs, final loss {manifest['pretrain']['final_loss']:.4f}, "
                        f"{(manifest['pretrain']['images_per_second'] or 0):.0f} images/s"],
        ["packages", ", ".join(f"{k} {v}" for k, v in manifest["packages"].items())],
    ]
    for stage, info in manifest.get("stages", {}).items():
        facts.append([f"stage {stage}", f"{info.get('seconds', 0):.1f}s{' (cached)' if info.get('cached') else ''}"])
    for stage, art in manifest["artifacts"].items():
        facts.append([f"artifact {stage}", art["uri"]])
    return [("Probe accuracy (test top-1)", ["features", "linear", f"kNN k={k}"], acc),
            ("Protocol", ["probe", "settings"], settings),
            ("Manifest", ["fact", "value"], facts)]


def render_markdown(manifest: dict[str, Any], figures: dict[str, bytes]) -> str:
    out = [f"# pretextflow report: {manifest['name']}", "", headline(manifest), ""]
    for title, header, rows in _tables(manifest):
        out += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        out.append("")
        if title.startswith("Probe"):
            out += [f"![{name}]({name})" for name in figures] + [""]
    return "\n".join(out)


def render_html(manifest: dict[str, Any], figures: dict[str, bytes]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>pretextflow: {e(manifest['name'])}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#223}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccd;padding:4px 8px;"
             "text-align:left;font-size:14px}th{background:#eef}.lead{font-size:1.2em}</style></head><body>",
             f"<h1>pretextflow report: {e(manifest['name'])}</h1>", f"<p class='lead'>{e(headline(manifest))}</p>"]
    for title, header, rows in _tables(manifest):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
        if title.startswith("Probe"):
            for name, png in figures.items():
                b64 = base64.b64encode(png).decode()
                parts.append(f"<img alt='{e(name)}' src='data:image/png;base64,{b64}' style='max-width:100%'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(store: ArtifactStore, run_id: str, manifest: dict[str, Any], history: dict, metrics: dict) -> str:
    figures = {"pretrain_loss.png": loss_figure(history), "probe_accuracy.png": probe_figure(metrics)}
    for name, png in figures.items():
        store.write_bytes(png, RUNS, run_id, name)
    manifest["artifacts"]["report"] = {"uri": store.uri_of(RUNS, run_id)}
    store.write_bytes(render_markdown(manifest, figures).encode(), RUNS, run_id, "report.md")
    store.write_bytes(render_html(manifest, figures).encode(), RUNS, run_id, "report.html")
    store.write_json(manifest, RUNS, run_id, "manifest.json")  # last: its presence means the run is complete
    return store.uri_of(RUNS, run_id)
