"""The layered network abstraction shared by alternating and surrogate minimization.

A network is a chain of stages (Choromanska et al. 2019, sec. 2)::

    a^0 = x;   c^l = f_l(W^l, a^{l-1});   a^l = sigma_l(c^l)   (l = 1..L);
    logits = f_{L+1}(W^{L+1}, a^L)

``c^l`` are the *codes* (pre-activations) that alternating minimization treats as
auxiliary variables. The last stage's output is the network output (logits); its
activation is the identity.

Parameters are either a tuple of per-stage pytrees (networks built by this package)
or a container pytree such as a Flax NNX ``State`` in which every stage owns the
subtree under a fixed key path (networks adapted from Flax models). The methods
:meth:`LayeredNetwork.stage_params` and :meth:`LayeredNetwork.merge_stage_params`
convert between the two views, so optimizers work on per-stage parameters while
users keep their own parameter structure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any


def identity(x: Array) -> Array:
  """The identity activation."""
  return x


@dataclasses.dataclass(frozen=True, eq=False)
class Stage:
  """One stage ``c = apply(params, a_prev)`` followed by ``a = activation(c)``.

  Attributes:
    init: ``init(key) -> params`` for this stage.
    apply: ``apply(params, a_prev) -> c`` on a batch (leading axis is the batch).
    activation: elementwise (or any shape-preserving-per-sample) map from codes to
      the activations fed to the next stage. Pooling and flattening may live here
      or in the next stage's ``apply``.
    output_shape: per-sample shape of ``c``.
    dense: ``True`` when ``apply`` is ``reshape(a, (B, -1)) @ kernel + bias`` with
      params holding ``kernel`` of shape ``(fan_in, fan_out)`` and optionally
      ``bias``. Dense stages admit closed-form weight updates (AM-mem).
    name: a label used in error messages and reports.
    per_sample: ``True`` (every builder's stages) when sample ``b``'s output depends on
      sample ``b``'s input alone; ``False`` for a stage that mixes samples (batch
      statistics), which surrogate minimization rejects.
  """

  init: Callable[[Array], Params]
  apply: Callable[[Params, Array], Array]
  output_shape: tuple[int, ...]
  activation: Callable[[Array], Array] = identity
  dense: bool = False
  name: str = ""
  per_sample: bool = True


def _key_of(entry) -> Any:
  for attr in ("key", "idx", "name"):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  raise TypeError(f"unsupported pytree path entry {entry!r}")


def _subtree(tree: Any, path: tuple) -> Any:
  for k in path:
    try:
      tree = tree[k]
    except (TypeError, KeyError, IndexError):
      tree = getattr(tree, k)
  return tree


@dataclasses.dataclass(frozen=True, eq=False)
class LayeredNetwork:
  """A feed-forward chain of :class:`Stage` objects.

  Attributes:
    stages: the ``L + 1`` stages; stage ``l`` (1-based) produces code ``c^l`` and
      the last one produces the logits.
    input_shape: per-sample input shape; batches are checked against it.
    stage_paths: ``None`` when params are a tuple of per-stage params; otherwise,
      for each stage, the key path of its params inside the user's container.
    init_fn: optional ``init(key) -> params`` replacing the per-stage default (used by
      adapters whose params live in a container).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import altmin_jax as amj
    >>> net = amj.networks.mlp([4, 8, 3], activation=jax.nn.relu)
    >>> params = net.init(jax.random.key(0))
    >>> codes, logits = net.forward(params, jnp.ones((2, 4)))
    >>> [c.shape for c in codes], logits.shape
    ([(2, 8)], (2, 3))
  """

  stages: tuple[Stage, ...]
  input_shape: tuple[int, ...]
  stage_paths: tuple[tuple, ...] | None = None
  init_fn: Callable[[Array], Params] | None = None

  def __post_init__(self):
    if len(self.stages) < 1:
      raise ValueError("a LayeredNetwork needs at least one stage, got 0")
    if self.stage_paths is not None and len(self.stage_paths) != len(self.stages):
      raise ValueError(
        f"stage_paths has {len(self.stage_paths)} entries for {len(self.stages)} stages"
      )

  # ----------------------------------------------------------------- structure
  @property
  def num_stages(self) -> int:
    """``L + 1``: the number of stages, output stage included."""
    return len(self.stages)

  @property
  def num_codes(self) -> int:
    """``L``: the number of hidden codes."""
    return len(self.stages) - 1

  @property
  def code_shapes(self) -> tuple[tuple[int, ...], ...]:
    """Per-sample shapes of the codes ``c^1..c^L``."""
    return tuple(s.output_shape for s in self.stages[:-1])

  @property
  def output_shape(self) -> tuple[int, ...]:
    return self.stages[-1].output_shape

  def activation(self, l: int) -> Callable[[Array], Array]:
    """``sigma_l`` for ``l = 0..L`` (``sigma_0`` is the identity on the input)."""
    return identity if l == 0 else self.stages[l - 1].activation

  # ------------------------------------------------------------- params views
  def init(self, key: Array) -> Params:
    """Initial parameters: a tuple with one pytree per stage, or the container of
    an adapted model."""
    if self.init_fn is not None:
      return self.init_fn(key)
    keys = jax.random.split(key, self.num_stages)
    return tuple(stage.init(k) for stage, k in zip(self.stages, keys))

  def stage_params(self, params: Params) -> tuple:
    """Splits ``params`` into one pytree per stage."""
    params = as_arrays(params)
    if self.stage_paths is None:
      if not isinstance(params, (tuple, list)) or len(params) != self.num_stages:
        raise ValueError(
          f"expected a tuple of {self.num_stages} per-stage params, got {type(params).__name__}"
        )
      return tuple(params)
    return tuple(_subtree(params, path) for path in self.stage_paths)

  def merge_stage_params(self, stage_params: Sequence[Params], like: Params) -> Params:
    """Inverse of :meth:`stage_params`: a params pytree structured like ``like``."""
    like = as_arrays(like)
    if self.stage_paths is None:
      return type(like)(stage_params) if isinstance(like, (tuple, list)) else tuple(stage_params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = [leaf for _, leaf in flat]
    keys = [tuple(_key_of(e) for e in path) for path, _ in flat]
    for path, new in zip(self.stage_paths, stage_params):
      positions = [i for i, k in enumerate(keys) if k[: len(path)] == tuple(path)]
      new_leaves = jax.tree.leaves(new)
      if len(new_leaves) != len(positions):
        raise ValueError(
          f"stage params at {path} have {len(new_leaves)} leaves, expected {len(positions)}"
        )
      for i, leaf in zip(positions, new_leaves):
        leaves[i] = leaf
    return jax.tree.unflatten(treedef, leaves)

  # ------------------------------------------------------------------ forward
  def check_input(self, x: Array, what: str = "x") -> None:
    """Raises ``ValueError`` unless ``x`` is a batch of ``input_shape`` samples."""
    shape = tuple(x.shape)
    if shape[1:] != tuple(self.input_shape):
      raise ValueError(
        f"{what} has shape {shape}; the network expects a batch of shape "
        f"(batch, {', '.join(map(str, self.input_shape))})"
      )

  def stage_apply(self, l: int, stage_params: Params, a_prev: Array) -> Array:
    """``f_l(W^l, a^{l-1})`` for ``l = 1..L+1``."""
    return self.stages[l - 1].apply(stage_params, a_prev)

  def forward(self, params: Params, x: Array) -> tuple[tuple[Array, ...], Array]:
    """Encodes ``x`` (Algorithm 2.2, ``encodeInput``): the codes ``(c^1..c^L)`` and the
    logits."""
    return self.forward_stages(self.stage_params(params), x)

  def forward_stages(
    self, stage_params: Sequence[Params], x: Array
  ) -> tuple[tuple[Array, ...], Array]:
    """:meth:`forward` on per-stage params."""
    ps = stage_params
    a = x
    codes = []
    for l, (stage, p) in enumerate(zip(self.stages, ps), start=1):
      c = stage.apply(p, a)
      if l <= self.num_codes:
        codes.append(c)
        a = stage.activation(c)
      else:
        return tuple(codes), c
    raise AssertionError("unreachable")

  def apply(self, params: Params, x: Array) -> Array:
    """The network output (logits) for a batch ``x``."""
    return self.forward(params, x)[1]

  __call__ = apply


def as_arrays(params: Params) -> Params:
  """Strips Flax NNX ``Variable`` wrappers so that every leaf is an array."""
  try:
    from flax import nnx
  except ImportError:  # pragma: no cover - flax is a dependency
    return params
  if any(
    isinstance(v, nnx.Variable)
    for v in jax.tree.leaves(params, is_leaf=lambda v: isinstance(v, nnx.Variable))
  ):
    return nnx.as_pure(params)
  return params


def dense_kernel_bias(params: Params) -> tuple[Array, Array | None]:
  """The ``kernel`` (fan_in, fan_out) and ``bias`` (or ``None``) of a dense stage."""
  kernel = bias = None
  for path, leaf in jax.tree_util.tree_flatten_with_path(as_arrays(params))[0]:
    name = _key_of(path[-1])
    if name == "kernel":
      kernel = leaf
    elif name == "bias":
      bias = leaf
  if kernel is None or kernel.ndim != 2:
    raise ValueError("a dense stage needs a 2-D 'kernel' parameter")
  return kernel, bias


def with_dense_kernel_bias(params: Params, kernel: Array, bias: Array | None) -> Params:
  """``params`` with its dense ``kernel`` and ``bias`` replaced."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(as_arrays(params))
  leaves = []
  for path, leaf in flat:
    name = _key_of(path[-1])
    leaves.append(kernel if name == "kernel" else bias if name == "bias" else leaf)
  return jax.tree.unflatten(treedef, leaves)


def flatten_batch(a: Array) -> Array:
  """Reshapes a batch to ``(batch, features)``."""
  return jnp.reshape(a, (a.shape[0], -1))
