"""The training machinery behind the four scripts, one module per concern (README, "How the code is laid out"). It is
method-independent: it imports neither the data sets (``inputs``) nor the views (``views``) nor the methods, and is
handed what it needs (a data set, a view module, a method, a ``splits()`` callable).

errors      UserError, TrainingStopped and ``run_main``: bad input ends as one ``error:`` line
flags       the reference's flags and defaults, this project's additions, and their checks
runtime     device, torchrun process group, mixed precision, seeds and RNG state
checkpoint  atomic writes and links, safe loading, the run folder
data        the resumable sampler, the loaders, a data set's size against the flags
logger      TensorBoard scalars and progress bars
meters      AverageMeter, accuracy and the console fields
schedule    learning-rate schedules and the pretraining optimiser
signals     SIGTERM / SIGINT as a flag read after each step, agreed across processes
loop        the step (``Stepper``: view, then method -> ``StepResult``) and the epoch
fit         the fit driver (resume, epochs, TensorBoard, checkpoints, signals) and what configures it
knn         the weighted kNN monitor
probe       the linear probe

Modules import each other only downwards in this list's dependency order (errors first), never in a cycle.
"""
