"""AM paper, CIFAR-10 fully connected nets (Figures 3-4, supplement D.2, Table 2).

2 hidden ReLU layers of 100 (default) or 500 units on flattened 32x32x3 images, minibatches
of 200; the first 40,000 training images train, the official test split is evaluated.
Options: ``500``, ``zoom`` (the first 250 minibatches, Figure 3), ``smoke``. The paper ran no
Taylor ADMM on CIFAR-10. Learning rates as in ``am_fc_mnist.py`` (Table 2).
"""

from experiments.configs import common

TABLE_2 = {
  100: {
    "adam": 0.0029,
    "sgd": 0.1500,
    "am_adam": 0.1974,
    "am_mem": 0.1746,
    "am_adam_offline": 0.5000,
    "am_mem_offline": 0.2343,
  },
  500: {
    "adam": 0.0002,
    "sgd": 0.1428,
    "am_adam": 0.1011,
    "am_mem": 0.1016,
    "am_adam_offline": 0.4844,
    "am_mem_offline": 0.2277,
  },
}


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, {"500", "zoom", "smoke"})
  width = 500 if "500" in options else 100
  zoom = "zoom" in options
  config = common.am_fc(
    dataset="cifar10",
    hidden=(width, width),
    methods=common.am_fc_methods(TABLE_2[width]),
    method_list=(
      common.AM_FC_ONLINE if zoom else (*common.AM_FC_ONLINE, "am_adam_offline", "am_mem_offline")
    ),
    epochs=1 if zoom else 50,
    zoom_batches=250 if zoom else 0,
  )
  return common.smoke(config) if "smoke" in options else config
