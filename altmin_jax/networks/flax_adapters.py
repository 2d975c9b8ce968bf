"""Adapters that turn a Flax NNX model written as a sequence of layers into a
:class:`~altmin_jax.networks.LayeredNetwork`.

The adapted network's params are the model's own ``nnx.State`` of ``nnx.Param``
variables, so the optimizers of this package plug into
``nnx.Optimizer(model, tx, wrt=nnx.Param)`` unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

from altmin_jax.networks.layered import LayeredNetwork, Stage, as_arrays, identity


def _compose(fns: Sequence[Callable]) -> Callable:
  if not fns:
    return identity
  if len(fns) == 1:
    return fns[0]  # keep the function itself: methods recognise e.g. jax.nn.relu

  def composed(x):
    for f in fns:
      x = f(x)
    return x

  return composed


def _has_params(node) -> bool:
  return isinstance(node, nnx.Module) and bool(jax.tree.leaves(nnx.state(node, nnx.Param)))


def _path_of(model: nnx.Module, layer: nnx.Module) -> tuple:
  for path, node in nnx.iter_graph(model):
    if node is layer:
      return tuple(path)
  raise ValueError(f"layer {type(layer).__name__} is not part of the model")


def _stage_from_layer(
  layer: nnx.Module, input_map: Callable, activation: Callable, in_shape: tuple[int, ...], name: str
) -> Stage:
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
  if jax.tree.leaves(rest):
    kinds = sorted(
      {
        type(v).__name__
        for v in jax.tree.leaves(rest, is_leaf=lambda v: isinstance(v, nnx.Variable))
      }
    )
    raise ValueError(
      f"layer {name} ({type(layer).__name__}) carries non-parameter state ({', '.join(kinds)}); "
      "from_nnx supports layers whose only variables are nnx.Param"
    )

  def apply(p, a):
    return nnx.merge(graphdef, p)(input_map(a))

  pure = as_arrays(params)
  out = jax.eval_shape(
    lambda p, a: apply(p, a),
    pure,
    jax.ShapeDtypeStruct((1, *in_shape), jax.tree.leaves(pure)[0].dtype),
  )
  return Stage(
    init=lambda key: pure,
    apply=apply,
    output_shape=tuple(out.shape[1:]),
    activation=activation,
    dense=isinstance(layer, nnx.Linear) and input_map is identity,
    name=name,
  )


def from_nnx(
  model: nnx.Module,
  *,
  input_shape: Sequence[int] | None = None,
  layers: Sequence[nnx.Module | Callable] | None = None,
) -> LayeredNetwork:
  """A layered view of a Flax NNX model written as a sequence of layers.

  Each layer that owns ``nnx.Param`` variables starts a stage; the parameter-free
  callables that follow it (``jax.nn.relu``, pooling, flattening) form that
  stage's activation ``sigma_l``; callables before the first parameterised layer
  are applied to the input. The stage code ``c^l`` is the parameterised layer's
  output.

  Args:
    model: an ``nnx.Sequential``, or any module when ``layers`` is given.
    input_shape: per-sample input shape; inferred when the first layer is an
      ``nnx.Linear``.
    layers: the sequence of layers and callables, in order, when ``model`` is not
      an ``nnx.Sequential`` (every parameterised entry must be a submodule of
      ``model``).

  Returns:
    A :class:`LayeredNetwork` whose params are the pure ``nnx.State`` of the model's
    ``nnx.Param`` variables; ``net.init(None)`` returns the model's current ones
    (``nnx.as_pure(nnx.state(model, nnx.Param))``): the Flax model owns initialisation.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> import altmin_jax as amj
    >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), jax.nn.relu,
    ...                        nnx.Linear(8, 3, rngs=nnx.Rngs(1)))
    >>> net = amj.networks.from_nnx(model)
    >>> net.num_codes, net.input_shape
    (1, (4,))
  """
  if layers is None:
    if not isinstance(model, nnx.Sequential):
      raise ValueError(
        f"from_nnx needs an nnx.Sequential or an explicit layers=[...] list, got "
        f"{type(model).__name__}"
      )
    layers = list(model.layers)
  layers = list(layers)
  groups: list[tuple[nnx.Module, list[Callable]]] = []
  leading: list[Callable] = []
  for item in layers:
    if _has_params(item):
      groups.append((item, []))
    elif callable(item):
      (groups[-1][1] if groups else leading).append(item)
    else:
      raise ValueError(f"layer {item!r} is neither a parameterised module nor callable")
  if not groups:
    raise ValueError("the model has no layer with nnx.Param variables")

  if input_shape is None:
    first = groups[0][0]
    if isinstance(first, nnx.Linear) and not leading:
      input_shape = (first.in_features,)
    else:
      raise ValueError("input_shape is required unless the first layer is an nnx.Linear")
  input_shape = tuple(input_shape)

  stages, paths = [], []
  in_shape = input_shape
  for i, (layer, fns) in enumerate(groups):
    input_map = _compose(leading) if i == 0 else identity
    is_last = i == len(groups) - 1
    if is_last and fns:
      raise ValueError(
        "callables after the last parameterised layer are not supported: the "
        "last stage's output is the logits"
      )
    stage = _stage_from_layer(layer, input_map, _compose(fns), in_shape, f"stage_{i + 1}")
    stages.append(stage)
    paths.append(_path_of(model, layer))
    in_shape = jax.eval_shape(
      lambda c, f=stage.activation: f(c), jax.ShapeDtypeStruct((1, *stage.output_shape), "float32")
    ).shape[1:]

  def init_fn(key):
    if key is not None:
      raise ValueError(
        "a network adapted from a Flax model has the model's own parameters: call "
        "net.init(None) for the model's current params; for a fresh initialisation build "
        "a new model with new nnx.Rngs"
      )
    return as_arrays(nnx.state(model, nnx.Param))

  return LayeredNetwork(
    stages=tuple(stages), input_shape=input_shape, stage_paths=tuple(paths), init_fn=init_fn
  )
