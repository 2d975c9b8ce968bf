"""AM paper, HIGGS (Figure 5, supplement D.3, Table 3).

One hidden ReLU layer of 300 units on the 28 HIGGS features, minibatches of 200, one epoch
over the 10.5M training samples (52,500 minibatches), held-out accuracy on the last 500,000
rows every 500 minibatches; Adam, SGD and AM-Adam with Table 3's learning rates. Table 3
gives AM-Adam the same rate as Adam (0.001); we use it for all of AM-Adam's layers. The paper
reports one initialization (D.3); three seeds here give a spread. Option: ``smoke`` (CI size
on the bundled digits).
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, {"smoke"})
  config = common.am_fc(
    dataset="higgs",
    hidden=(300,),
    methods={
      "adam": {"lr": 0.001},
      "sgd": {"lr": 0.050},
      "am_adam": common.am_method(output_lr=0.001, output_optimizer="adam", weight_lr=0.001),
    },
    method_list=("am_adam", "sgd", "adam"),
    epochs=1,
    seeds=(0, 1, 2),
  )
  config.eval_every = 500
  config.max_rows = 0  # > 0: read only the first rows of HIGGS.csv.gz
  config.num_test = 0  # > 0: the last rows read that form the test set (0: the last 500,000)
  return common.smoke(config) if "smoke" in options else config
