"""Write an evaluation report: report.json, report.md and PNG plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (backend first)

log = logging.getLogger(__name__)

# Published numbers on the same file and protocol (REFERENCE.md §3).
ANCHORS = {
    "SASRec+ CE, 3000 negatives (best published)": (0.3159, 0.1857),
    "gSASRec": (0.3003, 0.1726),
    "BERT4Rec": (0.2843, 0.1537),
}
SERVED = "irec served bundle, item-ID histories (fp32 item-text table + ONNX head + HNSW)"
OURS = "irec: text + ID sequence head (torch, exact)"
TARGET_NDCG = 0.195  # above LRURec (0.1930) on this split (issue 22)
TARGET_COLD_NDCG = 0.068  # 0.35 × the warm goal (issue 22; Pembek et al. keep 0.35–0.80)
TARGET_TEXT_HISTORY_NDCG = 0.12  # issue 22

# What the model in this report is made of, and what is known not to have helped
# (measured in this project; README "Quality" keeps the table of tries).
TRIED = [
    "{loss} at every position",
    "item text with year and genres through the encoder (its top layers fine-tuned with the "
    "head on the next-item objective for a few epochs, the item table refreshed every few "
    "steps, kept only if better on validation; then the head alone on the tuned table), "
    "projected, plus {delta}",
    "ID dropout: {id_dropout} (what written histories are trained on)",
    "most recent item at the last position of a causal transformer; the last hidden state "
    "is the user",
    "{recipe}; early stopping on validation NDCG@10 of {validation} (patience {patience} "
    "evaluations of {eval_every} epochs)",
    "retrieval within the user's cluster, multi-interest medoid queries and a blend "
    "(modes table below)",
]
NEXT = [
    "train to convergence: more epochs than a 2-core budget allows (a GPU when one is lent)",
    "longer joint fine-tuning of the encoder (more layers, more updates; a GPU when lent)",
    "several user vectors from the head (e.g. last positions of distinct sessions) for "
    "multi-interest retrieval, instead of item medoids",
    "a text tower with more capacity for cold items (a larger packaged encoder than MiniLM)",
]


def _head(report: dict[str, Any]) -> dict[str, Any]:
    """The run's loss, item vector and optimiser in words.

    Reports from before issue 22 lack the fields: full softmax, an uncapped ID residual, Adam.
    """
    head = report.get("config", {}).get("train", {}).get("head", {})
    negatives = head.get("negatives", 0)
    cap = head.get("delta_cap", 0.0)
    if "weight_decay" in head:
        recipe = (
            f"AdamW (lr {head['learning_rate']:g}, weight decay {head['weight_decay']:g}), "
            f"{head.get('heads')} attention head(s), feed-forward {head.get('feedforward')}×, "
            f"dropout {head.get('dropout')}, length {head.get('max_length')}"
            + (", bf16 autocast" if head.get("bf16") else "")
        )
    else:
        recipe = "Adam; the learning rate halves on each evaluation without improvement"
    return {
        "loss": "next-item cross-entropy over "
        + (
            f"{negatives} uniformly sampled negatives shared by the batch"
            if negatives
            else "the whole catalogue"
        ),
        "delta": f"an ID delta whose norm is at most {cap:g} × the text projection's (a new "
        "item: its text, delta 0)"
        if cap
        else "an uncapped, zero-initialised ID residual",
        "recipe": recipe,
        "patience": head.get("patience", 3),
        "eval_every": head.get("eval_every", 2),
    }


def _id_dropout(report: dict[str, Any]) -> str:
    """The run's ID dropout in words: which parts were read by text alone, how often."""
    head = report.get("config", {}).get("train", {}).get("head", {})
    parts = [
        ("history positions", "id_dropout"),
        ("whole histories", "text_only_histories"),
        ("output items", "item_id_dropout"),
    ]
    said = [f"{name} {head[field]:g}" for name, field in parts if head.get(field)]
    return "read by text alone: " + ", ".join(said) if said else "none"


def _validation_slice(report: dict[str, Any]) -> str:
    """Whose second-to-last items validated: "all users" or "N users"."""
    from training.run import TrainConfig  # the default, for reports that do not say

    asked = (
        report.get("config", {})
        .get("train", {})
        .get("validation_users", TrainConfig.validation_users)
    )
    users = report.get("data", {}).get("users")
    return "all users" if users is not None and asked >= users else f"{asked:,} users"


def _tracks(report: dict[str, Any]) -> list[str]:
    """The three tracks: warm (seeds), cold items, text histories through a live server."""
    tracks = report.get("tracks")
    if not tracks:
        return []
    encoder = report.get("encoder", {})
    warm = tracks.get(
        "warm", {"seeds": [], "ndcg10_mean": float("nan"), "ndcg10_sd": 0.0, "ndcg10_per_seed": {}}
    )
    lines = [
        "",
        "## Tracks",
        "",
        f"Encoder `{encoder.get('name')}`, treatment `{encoder.get('treatment')}`, "
        f"fine-tuned weights shipped: **{encoder.get('finetuned')}** "
        f"({encoder.get('updates_kept')} of {encoder.get('updates_total')} encoder updates "
        f"kept by validation). Shipped: {encoder.get('shipped')} — "
        f"{encoder.get('shipped_because')}.",
        "",
        "| track | NDCG@10 | goal | path |",
        "|---|---|---|---|",
        f"| warm (all test users), mean ± sd over seeds {warm['seeds']} | "
        f"{warm['ndcg10_mean']:.4f} ± {warm['ndcg10_sd']:.4f} | ≥ {TARGET_NDCG} | "
        "item IDs + texts, torch, exact |",
    ]
    id_only = warm.get("id_only")
    if id_only:
        lines.append(
            f"| warm, ID-only SASRec (the same code, text off, the same budget and seeds) | "
            f"{id_only['ndcg10_mean']:.4f} ± {id_only['ndcg10_sd']:.4f} | irec ≥ this | "
            "item IDs only, torch, exact |"
        )
    cold = tracks.get("cold")
    if cold and cold.get("users"):
        lines.append(
            f"| cold items ({cold['users']} users, {cold['held_out_items']} items held out) | "
            f"{cold['ndcg10']:.4f} (every item by text alone "
            f"{cold.get('text_only_ndcg10', float('nan')):.4f}; random "
            f"{cold['random_ndcg10']:.4f}) | ≥ {TARGET_COLD_NDCG} "
            "| warm items with their ID part, cold items by text (+ imputed ID part), torch |"
        )
    text = tracks.get("text_history")
    if text:
        lines.append(
            f"| text histories ({text['users']} users, last {text['titles_per_user']} titles, "
            f"no IDs) | {_cell(text['metrics']['ndcg@10'])} | ≥ {TARGET_TEXT_HISTORY_NDCG} | "
            f"{text['path']} |"
        )
    lines.append(
        "\nWarm NDCG@10 per seed: "
        + ", ".join(f"seed {k}: {v:.4f}" for k, v in warm["ndcg10_per_seed"].items())
        + "."
    )
    training = report.get("training")
    if training and training.get("seconds_per_epoch"):
        epochs = ", ".join(f"seed {k}: {v}" for k, v in training["epochs"].items())
        lines.append(
            f"Training: {training['seconds_per_epoch']:.1f} s per epoch (median of irec's "
            f"warm epochs); epochs run per seed: {epochs}. Learning curves in training.png "
            "and TensorBoard."
        )
    if cold and cold.get("rows"):
        lines += [
            "",
            "### Cold items",
            "",
            f"{cold['held_out_items']} items lose every training interaction; the "
            f"{cold['users']} users whose test item is one of them are ranked over the whole "
            "catalogue. Random is the expectation of a uniform ranking of unseen items.",
            "",
            "| model | HR@10 | NDCG@10 | HR@50 | NDCG@50 |",
            "|---|---|---|---|---|",
        ]
        for name, m in cold["rows"].items():
            lines.append(
                f"| {name} | {_cell(m['hr@10'])} | {_cell(m['ndcg@10'])} | "
                f"{_cell(m['hr@50'])} | {_cell(m['ndcg@50'])} |"
            )
    return lines


def _cell(metric: dict[str, float] | float | None) -> str:
    if metric is None:
        return "–"
    if isinstance(metric, dict):
        return f"{metric['mean']:.4f} [{metric['low']:.4f}, {metric['high']:.4f}]"
    return f"{metric:.4f}"


def _model_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = list(report["models"].items())
    served = report.get("served")
    if served:
        rows.append((SERVED, served["metrics"] | {"coverage@10": served["coverage@10"]}))
    return rows


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = _models_table(report)
    lines += _tracks(report)
    lines += _reached(report)
    lines += _served_note(report)
    lines += _interests_section(report)
    lines += _modes_section(report)
    lines += _clusters_section(report)
    lines += _validation_section(report)
    lines += [
        "",
        "## Stage times (s)",
        "",
        ", ".join(f"{k} {v:.0f}" for k, v in report.get("timings_s", {}).items()),
        "",
        "![metrics](metrics.png) ![clusters](clusters.png) ![training](training.png)",
    ]
    return "\n".join(lines) + "\n"


def _models_table(report: dict[str, Any]) -> list[str]:
    """The data, the protocol, and every model's metrics beside the published anchors."""
    data = report["data"]
    lines = [
        "# irec quality report",
        "",
        f"Data `{data['spec']}`: {data['users']} users, {data['items']} items, "
        f"{data['interactions']} interactions. Leave-one-out (last item = test, second to last "
        "= validation), all items ranked, history excluded. 95% intervals: bootstrap over "
        f"users (seed {report['config']['seed']}).",
        "",
        "| model | HR@10 | NDCG@10 | HR@50 | NDCG@50 | MRR | coverage@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in _model_rows(report):
        lines.append(
            f"| {name} | {_cell(m['hr@10'])} | {_cell(m['ndcg@10'])} | {_cell(m['hr@50'])} | "
            f"{_cell(m['ndcg@50'])} | {_cell(m.get('mrr'))} | {_cell(m.get('coverage@10'))} |"
        )
    for name, (hr, ndcg) in ANCHORS.items():
        lines.append(f"| *{name}* (published) | {hr:.4f} | {ndcg:.4f} | – | – | – | – |")
    return lines


def _reached(report: dict[str, Any]) -> list[str]:
    """Our NDCG@10 against the target, what the model is made of, and what comes next."""
    ours = report["models"].get(OURS)
    if not ours:
        return []
    reached = ours["ndcg@10"]["mean"]
    return [
        "",
        f"Reached NDCG@10 **{reached:.4f}** (target {TARGET_NDCG}; best published "
        f"{max(v[1] for v in ANCHORS.values()):.4f}): "
        + ("target reached." if reached >= TARGET_NDCG else f"{TARGET_NDCG - reached:.4f} short.")
        + " This model: "
        + "; ".join(TRIED).format(
            validation=_validation_slice(report), id_dropout=_id_dropout(report), **_head(report)
        )
        + ". Next: "
        + "; ".join(NEXT)
        + ".",
    ]


def _served_note(report: dict[str, Any]) -> list[str]:
    """The served bundle against torch exact: loss, latency, recall, parity."""
    served = report.get("served")
    if not served:
        return []
    return [
        "",
        f"Served bundle `{served['bundle_version']}` "
        f"(default mode `{served['default_mode']}`): "
        f"relative NDCG@10 loss vs torch exact **{served['relative_ndcg@10_loss']:+.2%}**, "
        f"{served['ms_per_request']:.2f} ms per request through the engine (1 thread), "
        f"HNSW recall@10 {served['hnsw_recall@10']}, head parity min cosine "
        f"{served['head_parity_min_cosine']}, text encoder parity "
        + ", ".join(
            f"{k} mean {v['cosine_mean']:.4f} / min {v['cosine_min']:.4f}"
            for k, v in served["parity"].items()
        )
        + ". MRR is not reported for the served path (it returns the top 50 only).",
    ]


def _interests_section(report: dict[str, Any]) -> list[str]:
    """Per-interest answers against the single user vector."""
    interests = report.get("interests")
    if not interests:
        return []
    lines = [
        "",
        "## Several interests per user (served engine, same budget k = 50)",
        "",
        f"{interests['users']} sampled users. `num_interests`: the history split by interest "
        "group (recency-weighted), each part read by the ONNX head, items merged by weight. "
        f"Served default chosen on validation: **{interests['winner']}** "
        f"({interests['rule']}); the served bundle answers with it when a request does "
        "not set `num_interests`. Goal on test (HR@50 ≥ single, categories +20%, NDCG@10 "
        f"within 3%): **{'met' if interests['test_goal_met'] else 'not met'}**.",
        "",
        "| variant | split | NDCG@10 | HR@50 | categories in top 10 | intra-list distance |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_split in interests["variants"].items():
        for split, m in by_split.items():
            lines.append(
                f"| {name} | {split} | {m['ndcg@10']:.4f} | {m['hr@50']:.4f} | "
                f"{m['categories@10']:.2f} | {m['ild@10']:.3f} |"
            )
    return lines


def _modes_section(report: dict[str, Any]) -> list[str]:
    """Retrieval modes at the same budget, the winner, and the bundle's default mode."""
    modes = report.get("modes")
    if not modes:
        return []
    lines = [
        "",
        "## Retrieval modes (same candidate budget)",
        "",
        "| mode | HR@10 | NDCG@10 | HR@50 | NDCG@50 |",
        "|---|---|---|---|---|",
    ]
    for name, m in modes["metrics"].items():
        lines.append(
            f"| {name} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {m['hr@50']:.4f} | "
            f"{m['ndcg@50']:.4f} |"
        )
    chosen_on = modes.get("chosen_on", "test")
    lines.append(
        f"\nWinner by {chosen_on} NDCG@10: **{modes['winner']}**"
        + (
            " (chosen on validation, reported on test)."
            if chosen_on == "validation"
            else " (this run chose on test; irec eval now chooses on validation)."
        )
    )
    served = report.get("served")
    if served:
        chosen = served["default_mode"]
        why = (
            "the winner"
            if modes["winner"] in ("all items", "user's cluster")
            else "the best mode the server implements (multi-interest and blend are "
            "measured here, not served)"
        )
        lines.append(f"The bundle's default retrieval mode is `{chosen}`: {why}.")
    return lines


def _clusters_section(report: dict[str, Any]) -> list[str]:
    """How the clustering was chosen, its scores, the methods compared, every cluster."""
    clusters = report.get("clusters")
    if not clusters:
        return []
    lines = [
        "",
        "## Clusters",
        "",
        (
            f"Chosen by measure: {clusters['choice']}"
            if clusters.get("choice")
            else f"{clusters.get('method', 'k-means')}, K = {clusters['k']}"
        )
        + f". Silhouette (cosine) {clusters['silhouette']:.3f}, Davies–Bouldin "
        f"{clusters['davies_bouldin']:.3f}, NMI vs dominant genre "
        f"{clusters['nmi_vs_dominant_genre']:.3f}, "
        f"ARI {clusters['ari_vs_dominant_genre']:.3f}.",
    ]
    if clusters.get("comparison"):
        lines += [
            "",
            "Clusterings compared on the same user vectors (stability: adjusted Rand index "
            "between two overlapping 80% subsamples fitted with different seeds):",
            "",
            "| method | K | silhouette ↑ | Davies–Bouldin ↓ | stability ARI ↑ | NMI vs genre ↑ |",
            "|---|---|---|---|---|---|",
        ]
        for row in clusters["comparison"]:
            nmi = row["nmi_known"]
            lines.append(
                f"| {row['method']} | {row['k']} | {row['silhouette']:.3f} | "
                f"{row['davies_bouldin']:.3f} | {row['stability_ari']:.3f} | "
                + (f"{nmi:.3f} |" if nmi is not None else "– |")
            )
    lines += ["", "| cluster | users | description |", "|---|---|---|"]
    for c, (size, description) in enumerate(
        zip(clusters["sizes"], clusters["descriptions"], strict=True)
    ):
        lines.append(f"| {c} | {size} | {description} |")
    return lines


def _validation_section(report: dict[str, Any]) -> list[str]:
    """What validation chose with: the head's curve, then every validated choice."""
    if "validation" not in report:
        return []
    lines = ["", "## Validation (tuning only)", ""]
    head = report.get("head_training", {})
    if head.get("epoch"):
        lines.append(
            "Sequence head, validation NDCG@10 by epoch: "
            + ", ".join(
                f"{e}: {v:.4f}" for e, v in zip(head["epoch"], head["val_ndcg@10"], strict=True)
            )
        )
    for name, values in report["validation"].items():
        lines.append(f"\n{name}: " + ", ".join(f"{k}: {v:.4f}" for k, v in values.items()))
    return lines


def plot_metrics(report: dict[str, Any], path: Path) -> None:
    """NDCG@10 and HR@10 per model with 95% intervals."""
    rows = [(n, m) for n, m in _model_rows(report)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.5 * len(rows) + 2))
    for ax, metric in zip(axes, ("ndcg@10", "hr@10"), strict=True):
        means = [m[metric]["mean"] for _, m in rows]
        err = [
            [m[metric]["mean"] - m[metric]["low"] for _, m in rows],
            [m[metric]["high"] - m[metric]["mean"] for _, m in rows],
        ]
        ax.barh(range(len(rows)), means, xerr=err, color="#4C72B0", capsize=3)
        ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=8)
        ax.invert_yaxis()
        best = max(v[1 if metric == "ndcg@10" else 0] for v in ANCHORS.values())
        ax.axvline(best, color="#C44E52", linestyle="--", label="best published")
        ax.set_xlabel(metric.upper())
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_clusters(report: dict[str, Any], path: Path) -> None:
    """Cluster sizes and a 2-D (PCA) map of user embeddings coloured by cluster."""
    clusters, xy = report["clusters"], report["embedding_2d"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    left.bar(range(len(clusters["sizes"])), clusters["sizes"], color="#55A868")
    left.set_xlabel("cluster")
    left.set_ylabel("users")
    left.set_title("cluster sizes")
    right.scatter(xy["x"], xy["y"], c=xy["cluster"], cmap="tab20", s=4)
    right.set_title("users (PCA of embeddings), coloured by cluster")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(report: dict[str, Any], path: Path) -> None:
    """Training loss per step, and validation NDCG@10 per epoch of every warm model."""
    head = report["head_training"]
    curves = report.get("training", {}).get("curves") or {"irec": head}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4))
    left.plot(head["loss"], linewidth=0.8)
    left.set_xlabel("step")
    left.set_ylabel("cross-entropy")
    left.set_title("sequence head training loss (first seed)")
    for name, curve in curves.items():
        style = "-" if name.startswith("irec") else "--"
        right.plot(curve["epoch"], curve["val_ndcg@10"], style, marker=".", label=name)
    right.set_xlabel("epoch")
    right.set_ylabel("validation NDCG@10")
    right.set_title("learning curves (irec solid, ID-only SASRec dashed)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> None:
    """report.json, report.md, metrics.png, clusters.png, training.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "report.md").write_text(markdown(report))
    plot_metrics(report, out / "metrics.png")
    if "clusters" in report:
        plot_clusters(report, out / "clusters.png")
    if "head_training" in report:
        plot_training(report, out / "training.png")
    log.info("report written to %s", out / "report.md")


def main() -> None:
    """Re-render report.md and the plots of a report folder from its report.json."""
    import sys

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    out = Path(sys.argv[1])
    write_report(json.loads((out / "report.json").read_text()), out)


if __name__ == "__main__":
    main()
