"""Labels by name: the run's class names decide which output a label of any split is scored against.

Every split a command reads is labelled through the run's class names (the class of each model output, in order):
image folders through :func:`timm_mimo.data.apply_class_names`, and here

* :func:`check_unique_names`: a class list naming one class twice is refused (two outputs for one class);
* :func:`label_names_list`: an export's ``label_names`` (a list in output order; older exports wrote
  ``{index: name}``) as the list of the class of each output;
* :func:`release_label_map`: the labels of a released CIFAR-10-C / CIFAR-100-C array (indices into the data set's own
  class list: CIFAR's, or the clean split's sorted folder classes) to the run's outputs, refusing negative labels,
  labels past the release's list and classes the run never had;
* :func:`check_ensemble_names`: the networks of a deep ensemble name their classes alike (an older checkpoint
  without names beside a named run is refused: its outputs' order is unknown).
"""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from timm_mimo.cli.args import CliError

__all__ = ['CIFAR10_CLASSES', 'CIFAR100_CLASSES', 'check_unique_names', 'label_names_list', 'release_class_names',
           'release_label_map', 'check_ensemble_names']

# the class order of CIFAR-10 / CIFAR-100 (the label indices of the data sets and of their -C releases)
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree
wolf woman worm""".split())


def check_unique_names(names: Optional[Sequence[Optional[str]]], flag: str = '--class-names') -> None:
    """Refuse a class list that names a class twice (the split would be scored against only one of its outputs)."""
    seen: Dict[str, int] = {}
    for index, name in enumerate(names or []):
        if name is None:
            continue
        if str(name) in seen:
            raise CliError(f'{flag} names {str(name)!r} twice (outputs {seen[str(name)]} and {index}): every output '
                           'is one class; give each class once')
        seen[str(name)] = index


def label_names_list(label_names: Any, num_classes: int) -> Optional[List[Optional[str]]]:
    """An export's ``label_names`` as the class of each output, in output order (``None`` for an output without a
    class); ``None`` when it names nothing usable (missing, or more names than outputs)."""
    if isinstance(label_names, dict):  # older exports: {index: name} when the head had more outputs than classes
        try:
            by_index = {int(index): name for index, name in label_names.items()}
        except (TypeError, ValueError):
            return None
        if not by_index or min(by_index) < 0 or max(by_index) >= num_classes:
            return None
        label_names = [by_index.get(index) for index in range(max(by_index) + 1)]
    if not isinstance(label_names, (list, tuple)) or not label_names or len(label_names) > num_classes:
        return None
    names = [None if name is None else str(name) for name in label_names]
    return names if any(name is not None for name in names) else None


def release_class_names(num_labels: int, split_names: Optional[Sequence[Optional[str]]]) -> Optional[List[str]]:
    """The class list a CIFAR-*-C release's labels index: CIFAR-10's or CIFAR-100's when the run's classes are
    CIFAR's (by name), else the clean split's folder classes in sorted order (what a folder reader numbers them by);
    ``None`` when the split names no classes."""
    named = {name for name in split_names or [] if name is not None}
    for cifar in (CIFAR10_CLASSES, CIFAR100_CLASSES):
        if named and named <= set(cifar) and num_labels <= len(cifar):
            return list(cifar)
    from timm.data.readers.reader_image_folder import natural_key
    return sorted(named, key=natural_key) if named else None


def release_label_map(labels: np.ndarray, release_names: Optional[Sequence[str]],
                      run_names: Optional[Sequence[Optional[str]]], num_classes: int, where: str) -> np.ndarray:
    """The output index of every label of a released array (``labels``, class indices into ``release_names``).

    Refused (:class:`CliError`): a negative label, a label past the release's class list or the model's outputs, and
    a label of a class the run never had. Without names on either side the labels are the outputs themselves.
    """
    labels = np.asarray(labels)
    if labels.size and int(labels.min()) < 0:
        raise CliError(f'{where} holds the label {int(labels.min())}: a class index is >= 0; the release is damaged '
                       '(or not a CIFAR-*-C labels.npy)')
    largest = int(labels.max()) if labels.size else -1
    if release_names is None or run_names is None:
        if largest >= num_classes:
            raise CliError(f'{where} holds the label {largest} but the model has {num_classes} outputs (a release of '
                           'another data set?)')
        return labels
    if largest >= len(release_names):
        raise CliError(f'{where} has class index {largest} but the model has {num_classes} outputs and the run '
                       f'{len(release_names)} classes (a release of another data set?)')
    output_of = {name: index for index, name in enumerate(run_names) if name is not None}
    mapping = np.full(len(release_names), -1, dtype=np.int64)
    for index, name in enumerate(release_names):
        mapping[index] = output_of.get(name, -1)
    used = np.unique(labels)
    missing = [release_names[label] for label in used if mapping[label] < 0]
    if missing:
        raise CliError(f'{where} labels images of {len(missing)} class(es) the run never had ({", ".join(missing[:4])}'
                       f'{", ..." if len(missing) > 4 else ""}): they cannot be scored; evaluate a release of the '
                       "run's classes")
    return mapping[labels]


def check_ensemble_names(names: Sequence[Optional[Sequence[str]]], paths: Sequence[str],
                         flag: str = '--ensemble-checkpoints') -> Optional[List[str]]:
    """The class list of a deep ensemble's outputs: every network's must be the same; an older checkpoint that
    records none beside one that does is refused (its outputs' order cannot be checked)."""
    known = [(path, list(run_names)) for path, run_names in zip(paths, names) if run_names is not None]
    unnamed = [path for path, run_names in zip(paths, names) if run_names is None]
    if known and unnamed:
        raise CliError(f'{flag}: {unnamed[0]!r} records no class names but {known[0][0]!r} was trained on '
                       f'{len(known[0][1])} named classes: the order of its outputs is unknown, so averaging them '
                       'could mix classes; ensemble checkpoints that record their classes (runs of this version), '
                       'or only older ones')
    for path, run_names in known[1:]:
        if run_names != known[0][1]:
            raise CliError(f'{flag}: {known[0][0]!r} and {path!r} were trained on different classes '
                           f'({len(known[0][1])} and {len(run_names)}, e.g. {known[0][1][:3]} vs {run_names[:3]}): '
                           'their outputs cannot be averaged; ensemble runs of the same classes')
    return known[0][1] if known else None

