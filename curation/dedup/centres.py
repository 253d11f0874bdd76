"""Clusters without chaining: greedy centres in quality order, decided in synchronous rounds.

Sequential definition: walk the images in quality order (best first); an image becomes a *centre* unless one
of its verified near-duplicates is already a centre, in which case it joins the best such centre. So every
image that is merged is within the threshold of the image it is merged into (no chains: the two ends of a
chain A-B-C with A and C far apart never meet unless C is itself close to its centre), and the result is
the same whatever order the data arrive in.

Distributed: each node (an image with at least one verified edge) knows its better and worse neighbours.
In a round, every node that decided in the previous round tells its worse neighbours; a node decides as
soon as it can: it joins the first centre among its better neighbours in quality order, provided every
better neighbour before that one has decided (they are then all members), or becomes a centre when every
better neighbour has decided to be a member. That is exactly the sequential walk. A node decides at the
latest in the round equal to the length of the longest path of falling quality that ends in it, so a
chain of 20 near-duplicates in falling quality needs 20 rounds; after ``cluster_rounds`` rounds any node
still undecided fails the run (`NotConverged`), never a crash or a silent split.

A decision is final, so a node leaves the rounds in the one where it decides (`step`: its final state out,
its decision to its worse neighbours): each round carries only the undecided nodes and the news for them,
and most nodes decide in the first two, so the ``cluster_rounds`` shuffles move about what two would, not
every node's state each time. News for a node that has already left is dropped (`receive`): a node can
decide before a better neighbour that comes after its centre in quality order.

Nodes are (quality key, pHash); quality keys sort best first and end with the uid.
Memory: one node with its neighbour lists (a node's degree; one image's near-duplicates).
"""

from __future__ import annotations

from typing import Any

CENTRE, MEMBER = "centre", "member"


class NotConverged(RuntimeError):
    pass


def new_state(me, neighbours) -> dict[str, Any]:
    """A node's state from its own node and its neighbours' nodes (any order, repeats allowed)."""
    neighbours = sorted(set(neighbours))
    state = {"me": me, "better": [n for n in neighbours if n[0] < me[0]],
             "worse": [n[0][-1] for n in neighbours if n[0] > me[0]],
             "known": {}, "decision": None, "centre": None}
    return decide(state)


def decide(state: dict[str, Any]) -> dict[str, Any]:
    """Decide if the better neighbours' known decisions allow it (see the module docstring)."""
    if state["decision"] is not None:
        return state
    for n in state["better"]:
        d = state["known"].get(n[0][-1])
        if d is None:
            return state
        if d == CENTRE:
            state.update(decision=MEMBER, centre=n)
            return state
    state.update(decision=CENTRE)
    return state


def step(uid: str, state: dict[str, Any]) -> tuple[dict[str, Any] | None, list]:
    """One round's output of a node -> (its final state if it has decided, else None; messages for the next
    round: its own state while it is undecided, else its decision to each worse neighbour)."""
    if state["decision"] is None:
        return None, [(uid, ("state", state))]
    return state, [(w, ("msg", (uid, state["decision"]))) for w in state["worse"]]


def receive(item) -> tuple[str, dict[str, Any]] | None:
    """(uid, its state and news) -> (uid, its state after the news); None for news to a node that has left."""
    uid, parts = item
    state = None
    news = {}
    for kind, value in parts:
        if kind == "state":
            state = value
        else:
            news[value[0]] = value[1]
    if state is None:
        return None
    state = {**state, "known": {**state["known"], **news}}
    return uid, decide(state)


def greedy_centres(nodes: list, edges: list[tuple]) -> dict[str, Any]:
    """Sequential reference: uid -> centre node (itself for a centre). ``edges``: (node, node) pairs."""
    adj: dict = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    out: dict[str, Any] = {}
    centres = set()
    for n in sorted(set(nodes) | set(adj)):
        better = sorted(m for m in adj.get(n, ()) if m < n and m in centres)
        if better:
            out[n[0][-1]] = better[0]
        else:
            centres.add(n)
            out[n[0][-1]] = n
    return out
