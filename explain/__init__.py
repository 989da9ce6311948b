"""slimlens explanations: Captum attributions for zoo models and their compressed variants, heatmaps,
how far the maps can be trusted, and how compression moves them.

>>> import torch, zoo, explain
>>> model = zoo.load("seed-cnn")
>>> x = torch.stack([zoo.dataset("mnist", "test")[i][0] for i in range(2)])
>>> maps = explain.attribute(model, x, method="integrated_gradients")     # Captum's defaults
>>> fig = explain.heatmap(x[0], maps[0])                                    # a matplotlib Figure
>>> curves = explain.deletion_insertion(model, x, maps)                     # faithfulness
>>> explain.compare(maps, maps)["mean"]["spearman"]                          # drift: identical maps
1.0

Modules: ``methods`` (attribute, explainer), ``defaults`` (28x28 settings), ``heatmaps`` (figures),
``trust`` (faithfulness, sanity), ``drift`` (map similarity), ``families`` (LSTM, GAN,
autoencoder), ``inputs`` (samples and image files), ``run`` (the ``slimlens explain`` command).
"""

from explain.defaults import default_options
from explain.drift import compare, rank_correlation, ssim, topk_iou
from explain.errors import ExplainError, GradientsUnavailableError, MethodNotApplicableError, UnknownMethodError
from explain.families import code_attribution, discriminator_saliency, latent_attribution, lstm_attribution
from explain.heatmaps import grid, heatmap, row_heatmap, save_png
from explain.methods import METHODS, BinaryTarget, StandInWarning, attribute, available_methods, explainer, resolve
from explain.trust import convergence_delta, deletion_insertion, infidelity_score, randomisation_test, sensitivity

__all__ = [
    "METHODS",
    "BinaryTarget",
    "ExplainError",
    "GradientsUnavailableError",
    "MethodNotApplicableError",
    "StandInWarning",
    "UnknownMethodError",
    "attribute",
    "available_methods",
    "code_attribution",
    "compare",
    "convergence_delta",
    "default_options",
    "deletion_insertion",
    "discriminator_saliency",
    "explainer",
    "grid",
    "heatmap",
    "infidelity_score",
    "latent_attribution",
    "lstm_attribution",
    "randomisation_test",
    "rank_correlation",
    "resolve",
    "row_heatmap",
    "save_png",
    "sensitivity",
    "ssim",
    "topk_iou",
]
