"""A closed-form weighted ridge surrogate for Lime and KernelShap.

Captum's default surrogates (``SkLearnLasso``, ``SkLearnLinearRegression``) need scikit-learn,
which slimlens does not depend on, and Captum's SGD alternative trains for up to 100 epochs per
sample. Solving the weighted least-squares problem directly gives the same kind of linear
explanation, deterministically, in one ``torch.linalg.lstsq`` per sample.
"""

from __future__ import annotations

import torch
from captum._utils.models.linear_model import LinearModel
from torch.utils.data import DataLoader


def _weighted_ridge(model: LinearModel, dataloader: DataLoader, construct_kwargs: dict, alpha: float = 1e-3, **_: object) -> dict:
    xs, ys, ws = [], [], []
    for batch in dataloader:
        x, y = batch[0], batch[1]
        xs.append(x.float())
        ys.append(y.float().reshape(len(y), -1))
        ws.append(batch[2].float().reshape(-1) if len(batch) > 2 else torch.ones(len(x)))
    # float64 and least squares on sqrt(weight)-scaled rows, not normal equations: KernelShap gives the
    # empty and full coalitions weights near 1e6, which float32 normal equations cannot resolve.
    x, y, w = torch.cat(xs).double(), torch.cat(ys).double(), torch.cat(ws).double().clamp_min(0)
    root = w.sqrt()[:, None]
    design = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1) * root  # last column: the intercept
    target = y * root
    if alpha > 0:  # ridge as extra rows sqrt(alpha) * I; the intercept is not shrunk
        penalty = torch.eye(design.shape[1], dtype=torch.float64)[:-1] * alpha**0.5
        design = torch.cat([design, penalty])
        target = torch.cat([target, torch.zeros(len(penalty), target.shape[1], dtype=torch.float64)])
    coef = torch.linalg.lstsq(design, target, driver="gelsd").solution.float()  # gelsd: minimum-norm when features never vary
    model._construct_model_params(norm_type=None, weight_values=coef[:-1].T.contiguous(), bias_value=coef[-1].reshape(-1))
    return {"train_time": 0.0}


class WeightedRidge(LinearModel):
    """Captum interpretable model: weighted ridge regression solved in closed form (``alpha`` = L2 strength)."""

    def __init__(self, alpha: float = 1e-3) -> None:
        super().__init__(train_fn=_weighted_ridge)
        self.alpha = alpha

    def fit(self, train_data: DataLoader, **kwargs: object) -> dict:
        """Fit on Captum's (interpretable inputs, outputs, similarity weights) batches."""
        return self.train_fn(self, dataloader=train_data, construct_kwargs=self.construct_kwargs, alpha=self.alpha, **kwargs)
