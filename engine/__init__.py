"""The training machinery behind the four scripts, one module per concern (README, "How the code is laid out").

errors      UserError, TrainingStopped and ``run_main``: bad input ends as one ``error:`` line
flags       the reference's flags and defaults, this project's additions, and their checks
runtime     device, torchrun process group, mixed precision, seeds and RNG state
checkpoint  atomic writes and links, safe loading, the run folder
data        the resumable sampler, loaders, splits
logger      TensorBoard scalars and progress bars
meters      AverageMeter, accuracy and the console fields
schedule    learning-rate schedules and the pretraining optimiser
loop        the step, the epoch, stop signals and the fit driver
knn         the weighted kNN monitor
probe       the linear probe

Modules import each other only downwards in this list's dependency order (errors first), never in a cycle.
"""
