"""Task metrics for zoo models and anything that behaves like one.

Every function takes a *forward function* (a batch tensor in, outputs out), so a PyTorch module,
a compressed variant or an ONNX Runtime session are measured the same way.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from zoo.errors import MetricError

Forward = Callable[[torch.Tensor], torch.Tensor]
CONFIDENT = 0.9
GAN_EVAL_SAMPLES = 1000
GAN_EVAL_SEED = 0


@torch.no_grad()
def batched_outputs(forward: Forward, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Run ``forward`` over ``inputs`` in batches and concatenate the outputs as a float CPU tensor."""
    outs = [torch.as_tensor(forward(inputs[i : i + batch_size])).float().cpu() for i in range(0, len(inputs), batch_size)]
    return torch.cat(outs)


def require_finite(outputs: torch.Tensor, what: str = "the model's outputs") -> torch.Tensor:
    """``outputs`` unchanged, or MetricError when any is NaN or infinite (argmax would read NaN rows as class 0)."""
    bad = int((~torch.isfinite(outputs)).sum())
    if bad:
        raise MetricError(f"{what} hold {bad:,} NaN or infinite value(s) of {outputs.numel():,}, so no metric is defined: "
                          "the model (or a compression step) is broken; check its weights or the step's settings")
    return outputs


def looks_like_probability(outputs: torch.Tensor) -> bool:
    """Whether one-output ``outputs`` read as probabilities (all within [0, 1]) rather than logits."""
    return bool(((outputs >= 0) & (outputs <= 1)).all())


def decision_threshold(task: str) -> float:
    """Where a single output column decides: 0 for a discriminator's logit, 0.5 for a binary classifier's probability."""
    return 0.0 if task == "discrimination" else 0.5


def predicted_labels(outputs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Class indices from logits (batch, C), or from a single column (batch, 1) compared with ``threshold``."""
    if outputs.dim() == 2 and outputs.shape[1] == 1:
        return (outputs[:, 0] >= threshold).long()
    return outputs.argmax(dim=1)


def output_parity(reference: torch.Tensor, outputs: torch.Tensor, classifier: bool, threshold: float = 0.5) -> dict:
    """How far ``outputs`` are from ``reference`` on the same inputs: max abs difference and, for classifiers, prediction agreement."""
    outputs = outputs.reshape(reference.shape)
    # a broken reference makes every difference NaN too, and NaN rows of both would "agree" on class 0
    not_finite = int((~torch.isfinite(outputs)).sum()) + int((~torch.isfinite(reference)).sum())
    parity: dict = {"max_abs_diff": float((outputs.float() - reference.float()).abs().max()), "samples": len(reference)}
    if not_finite:  # NaN is no JSON number: say how many outputs were broken instead
        parity.update(max_abs_diff=None, not_finite_outputs=not_finite)
    if classifier:
        agree = predicted_labels(outputs, threshold) == predicted_labels(reference, threshold)
        parity["argmax_agreement"] = float(agree.float().mean())
    return parity


def classification_metrics(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Top-1 accuracy, macro-F1, per-class recall and the confusion matrix (rows: true, columns: predicted)."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    tp = confusion.diag().double()
    recall = tp / confusion.sum(1).clamp(min=1)
    precision = tp / confusion.sum(0).clamp(min=1)
    f1 = torch.where(recall + precision > 0, 2 * recall * precision / (recall + precision), torch.zeros_like(tp))
    return {
        "accuracy": float(tp.sum() / len(labels)),
        "macro_f1": float(f1.mean()),
        "per_class_recall": [round(float(r), 4) for r in recall],
        "confusion": confusion.tolist(),
    }


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples)."""
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(A B) computed as tr sqrt(A^½ B A^½): symmetric, so eigvalsh is exact and stable.
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def generator_metrics(
    generate: Forward,
    classifier: torch.nn.Module,
    real_images: torch.Tensor,
    latent_vectors: torch.Tensor,
    reference: Forward | None = None,
) -> dict:
    """Fréchet distance in the classifier's penultimate features, confident-digit fraction, and fidelity.

    ``classifier`` must expose ``features`` (penultimate activations) and ``head``; fidelity (mean
    squared pixel difference) is reported when a ``reference`` generator is given.
    """
    fake = require_finite(batched_outputs(generate, latent_vectors), "the generator's images")
    with torch.no_grad():
        real_feats = batched_outputs(classifier.features, real_images)
        fake_feats = batched_outputs(classifier.features, fake)
        probs = torch.softmax(classifier.head(fake_feats), dim=1)
    result = {
        "fd": frechet_distance(real_feats.numpy(), fake_feats.numpy()),
        "confident_fraction": float((probs.max(1).values >= CONFIDENT).float().mean()),
        "class_histogram": torch.bincount(probs.argmax(1), minlength=probs.shape[1]).tolist(),
    }
    if reference is not None:
        ref = batched_outputs(reference, latent_vectors)
        result["fidelity"] = float(((fake - ref) ** 2).mean())  # mean squared pixel difference: lower is more faithful
    return result


def discriminator_metrics(discriminate: Forward, real_images: torch.Tensor, fake_images: torch.Tensor) -> dict:
    """Balanced accuracy of a real-vs-generated discriminator (logit >= 0 means real, as ``predicted_labels`` reads it).

    The mean of the real and the fake recall, so the figure does not move with how many real images
    the split holds (1,000 bundled, 10,000 in full MNIST) against the fixed 1,000 generated ones.
    """
    threshold = decision_threshold("discrimination")
    real_hits = (require_finite(batched_outputs(discriminate, real_images), "the discriminator's outputs")[:, 0] >= threshold).float()
    fake_hits = (require_finite(batched_outputs(discriminate, fake_images), "the discriminator's outputs")[:, 0] < threshold).float()
    return {
        "accuracy": float((real_hits.mean() + fake_hits.mean()) / 2),
        "real_recall": float(real_hits.mean()),
        "fake_recall": float(fake_hits.mean()),
    }


def reconstruction_metrics(reconstruct: Forward, images: torch.Tensor) -> dict:
    """Mean squared error per pixel between images and their reconstructions."""
    recon = require_finite(batched_outputs(reconstruct, images), "the reconstructions")
    return {"mse": float(((recon.reshape(images.shape) - images) ** 2).mean())}
