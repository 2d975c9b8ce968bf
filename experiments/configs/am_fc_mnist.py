"""AM paper, MNIST fully connected nets (Figures 1-2, supplement D.1, Table 1).

2 hidden ReLU layers of 100 (default) or 500 units, minibatches of 200. Options after a
colon, comma separated: ``500`` (wider net), ``zoom`` (the first 50 minibatches, accuracy
after each: Figure 1, online methods only), ``smoke`` (CI size), ``bundled`` (the bundled
MNIST split instead of the full dataset, for runs without network).

The paper's single learning rate per method (Table 1) is the step size of SGD and Adam and,
for the AM methods, the step size eta of the output layer's SGD update (Algorithm 2.3,
line 1); AM-Adam's hidden layers use Adam (learning rate 2e-3 here: the paper does not
report it). Taylor's ADMM uses gamma_prod / gamma_nonlin from Table 1.
"""

from experiments.configs import common

TABLE_1 = {  # hidden units -> method -> lr (Taylor: gamma_prod, gamma_nonlin)
  100: {
    "adam": 0.0210,
    "sgd": 0.2030,
    "am_adam": 0.1973,
    "am_mem": 0.1737,
    "am_adam_offline": 0.5003,
    "am_mem_offline": 0.4664,
    "admm": (582.8, 54.15),
  },
  500: {
    "adam": 0.0005,
    "sgd": 0.1497,
    "am_adam": 0.1171,
    "am_mem": 0.1376,
    "am_adam_offline": 0.4834,
    "am_mem_offline": 0.2503,
    "admm": (444.2, 111.7),
  },
}


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, {"500", "zoom", "smoke", "bundled"})
  width = 500 if "500" in options else 100
  zoom = "zoom" in options
  config = common.am_fc(
    dataset="bundled_mnist" if "bundled" in options else "mnist",
    hidden=(width, width),
    methods=common.am_fc_methods(TABLE_1[width]),
    method_list=common.AM_FC_ONLINE if zoom else common.AM_FC_ONLINE + common.AM_FC_OFFLINE,
    epochs=1 if zoom else 50,
    zoom_batches=50 if zoom else 0,
  )
  return common.smoke(config) if "smoke" in options else config
