"""VP SDE on the two-mode mixture (data/toy.py 'two_gaussians': modes at (+-2, 0), std
0.3) with a noise-conditional MLP classifier of the mode (data/toy_labels.py: label 1 for
(+2, 0)) for classifier guidance.

Run:  python main.py --config configs/toy/two_gaussians_vpsde_classifier.py \\
        --workdir runs/tg_vp                          # the score model
      python main.py --config configs/toy/two_gaussians_vpsde_classifier.py \\
        --workdir runs/tg_vp --mode train_classifier  # the classifier, runs/tg_vp/classifier
"""
from configs.classifier import toy_classifier, with_classifier
from configs.default_toy import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = "vpsde"
  config.data.dataset = "two_gaussians"
  return with_classifier(config, toy_classifier(num_classes=2))
