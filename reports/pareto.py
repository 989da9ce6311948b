"""Pareto fronts: the variants no other variant beats on both cost and metric."""

from __future__ import annotations

from typing import Sequence


def pareto_front(costs: Sequence[float | None], metrics: Sequence[float | None], higher_is_better: bool = True) -> list[bool]:
    """For each point, whether it is Pareto-optimal (lower cost, better metric); points with a missing value are not."""
    sign = 1.0 if higher_is_better else -1.0
    points = [(c, sign * m) if c is not None and m is not None else None for c, m in zip(costs, metrics)]
    optimal = []
    for i, p in enumerate(points):
        if p is None:
            optimal.append(False)
            continue
        dominated = any(
            q is not None and j != i and q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])
            for j, q in enumerate(points)
        )
        optimal.append(not dominated)
    return optimal
