"""The training harness: models, data, the training loop, configs and the command line.

==================  ==========================================================
:mod:`.config`      the :class:`~eoi_jax.training.config.Config` dataclass,
                    presets and command-line overrides
:mod:`.models`      the paper's models in Flax NNX (MLP, deep CNN, ResNets,
                    VGG-16), each declaring its stacks and end layers
:mod:`.data`        datasets, provisioning and the on-device input pipeline
:mod:`.train`       pure jitted train/eval steps and ``train_and_evaluate``
:mod:`.checkpoints` checkpoints checked against a fingerprint on restore
:mod:`.rundir`      the run directory: lock, atomic files, metrics log
:mod:`.progress`    progress lines for long work
:mod:`.diagnostics` Jacobian singular values
:mod:`.cli`         ``eoi-jax train`` and ``eoi-jax data``
==================  ==========================================================

``import eoi_jax`` does not load this package; it needs Flax and Orbax.
"""
