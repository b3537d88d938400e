"""Flax NNX wrapper around the functional :class:`seqjax.models.classify.Classifier`."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from seqjax.models.classify import Classifier

__all__ = ["SequenceClassifier"]


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


class SequenceClassifier(nnx.Module):
    """A many-to-one classifier as an ``nnx.Module``.

    Holds the params pytree of :meth:`seqjax.models.classify.Classifier.init` as one ``nnx.Param``
    per
    array, keyed by its path (``"embed"``, ``"seq/0/fw/w_x"``, ``"out/w"``; handy for optimiser
    masks, e.g. to freeze ``"embed"``), and calls :meth:`Classifier.apply`; see there for maths
    and shapes.

    Args:
        config: the static :class:`Classifier`.
        embeddings: optional ``[V, E]`` initial table (e.g. word2vec vectors).
        rngs: ``nnx.Rngs``; ``params`` initialises, a fork supplies ``dropout`` keys.
    """

    def __init__(self, config: Classifier, *, embeddings: np.ndarray | None = None,
                 rngs: nnx.Rngs) -> None:
        self.config = config
        params = config.init(rngs.params(), embeddings)
        leaves, self._treedef = jax.tree_util.tree_flatten_with_path(params)
        self._paths = tuple(_path_str(p) for p, _ in leaves)
        self.weights = nnx.data({k: nnx.Param(v) for k, (_, v) in zip(self._paths, leaves)})
        self.rngs = rngs.fork() if config.dropout > 0 else None

    def params_tree(self) -> dict[str, Any]:
        """The current parameters as the plain pytree :meth:`Classifier.apply` takes."""
        return jax.tree_util.tree_unflatten(
            self._treedef, [self.weights[k].get_value() for k in self._paths])

    def __call__(self, tokens: jax.Array, seq_lengths: jax.Array, *, train: bool = False,
                 key: jax.Array | None = None) -> jax.Array:
        """``tokens [B, T]``, ``seq_lengths [B]`` -> logits ``[B, C]``."""
        if train and key is None and self.rngs is not None:
            key = self.rngs.dropout()
        return self.config.apply(self.params_tree(), tokens, seq_lengths, train=train, key=key)
