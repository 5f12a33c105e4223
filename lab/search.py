"""
Random search with the same budget for every family. A search space maps a train.py setting to how
it is drawn: ("log", low, high) log-uniformly, ("uniform", low, high), or ("choice", [values]).

Trial k of every family draws what the families share (learning rate, dropout, weight decay) from
the same generator, seeded by (seed, k): the families meet the same shared settings, and differ
only in their loss and its own knob (λ, β), drawn from a second generator seeded by (seed, k, 1).
A choice that lands near an edge of a range (the outer tenth, on the scale it is drawn on) says
the range may not bracket the best. Random draws put the same trial there whatever the range (its
uniform number stays), so widening the range and drawing again cannot settle it; the search goes
past the choice instead (beyond): on a log range, two more trials of that family with that setting
moved past the edge by a factor of 3 and of 9 (divided at the low edge, multiplied at the high),
the rest of the choice kept. The best of all then is the choice; if it is the farthest of them,
the best still lies beyond what was tried, and the table shows it.
"""
import numpy as np

EDGE = 0.1  # the outer tenth of a range, on the scale it is drawn on
PAST = (3, 9)  # a choice at an edge of a log range is tried again this many times past it


def draw_value(rng, how):
    kind, *args = how
    if kind == "log":
        return float(np.exp(rng.uniform(np.log(args[0]), np.log(args[1]))))
    if kind == "uniform":
        return float(rng.uniform(*args))
    if kind == "choice":
        return args[0][rng.integers(len(args[0]))]
    raise ValueError(f"{how!r}: a range is ('log' | 'uniform', low, high) or ('choice', values)")


def draw(shared, own, trials, seed):
    """[{setting: value}] of one family's trials: the shared space's values of trial k (the same
    for every family), then its own knob's (own: a space, maybe empty). Floats to 3 significant
    digits, as the flags will write them."""
    drawn = []
    for k in range(trials):
        values = {}
        for space, rng in ((shared, np.random.default_rng([seed, k])),
                           (own, np.random.default_rng([seed, k, 1]))):
            for name, how in space.items():
                value = draw_value(rng, how)
                values[name] = float(f"{value:.3g}") if isinstance(value, float) else value
        drawn.append(values)
    return drawn


def position(value, how):
    """Where value lies in its range, 0 (low) to 1 (high), on the scale it is drawn on; a choice's
    index over its last."""
    kind, *args = how
    if kind == "choice":
        return args[0].index(value) / max(1, len(args[0]) - 1)
    low, high, v = (np.log(x) if kind == "log" else x for x in (args[0], args[1], value))
    return float((v - low) / (high - low))


def at_edges(values, space):
    """The settings of values (a chosen trial's) that lie in the outer EDGE of their range: 'name
    low' or 'name high'. A choice at 0 (no dropout, no weight decay) is a floor, not an edge."""
    edges = []
    for name, how in space.items():
        where = position(values[name], how)
        if where < EDGE and values[name] != 0:
            edges.append(f"{name} low")
        elif where > 1 - EDGE:
            edges.append(f"{name} high")
    return edges


def beyond(values, space):
    """The trials past the edges of a chosen trial's values (at_edges'): on a log range, the
    values with that setting divided (low edge) or multiplied (high) by each factor of PAST; []
    when none is at the edge of a log range."""
    past = []
    for edge in at_edges(values, space):
        name, side = edge.split()
        if space[name][0] == "log":
            for factor in PAST:
                value = values[name] / factor if side == "low" else values[name] * factor
                past.append({**values, name: float(f"{value:.3g}")})
    return past


def flag_value(value):
    """A drawn value as a flag writes it ('%g': 0.00202, 3.82e-05, 0)."""
    return f"{value:g}" if isinstance(value, float) else str(value)
