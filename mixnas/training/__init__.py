"""Training: the one loop (``fit``) behind supernet training, standalone training and fine-tuning."""

from mixnas.training._loop import (
    CLIP_GRAD,
    LABEL_SMOOTHING,
    WARMUP_EPOCHS,
    WEIGHT_DECAY,
    DistributedContext,
    FitHooks,
    Schedule,
    StepInfo,
    StepResult,
    epoch_seed,
    fit,
    limit_batches,
    write_metrics_csv,
)
from mixnas.training.batchnorm import batchnorm_layers, evaluate_accuracy, recalibrate_batchnorm, subnet_accuracy
from mixnas.training.standalone import StandaloneConfig, check_out_dir, train_architecture
from mixnas.training.supernet import (
    SandwichLoss,
    TrainConfig,
    prepare_run_dir,
    read_config,
    read_preprocessing,
    read_space,
    resolve_num_classes,
    sandwich_archs,
    train_supernet,
)

__all__ = [
    "CLIP_GRAD", "LABEL_SMOOTHING", "WARMUP_EPOCHS", "WEIGHT_DECAY",
    "DistributedContext", "FitHooks", "SandwichLoss", "Schedule", "StandaloneConfig", "StepInfo", "StepResult",
    "TrainConfig",
    "batchnorm_layers", "check_out_dir", "epoch_seed", "evaluate_accuracy", "fit", "limit_batches",
    "prepare_run_dir", "read_config", "read_preprocessing",
    "read_space", "recalibrate_batchnorm", "resolve_num_classes",
    "sandwich_archs", "subnet_accuracy", "train_architecture", "train_supernet", "write_metrics_csv",
]
