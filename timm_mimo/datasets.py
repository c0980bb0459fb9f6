"""The recipes' datasets read in the layouts their publishers release them: nothing to move by hand.

- ``tinyimagenet``: Tiny ImageNet as released (``tiny-imagenet-200/``): ``train/<wnid>/images/*.JPEG``,
  ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``, ``test/`` unlabelled (refused as a split to evaluate
  on), class order from ``wnids.txt``, the readable names from ``words.txt``. A copy re-laid in class folders
  (``val/<wnid>/``) reads too.
- ``imagenet``: ImageNet-1k (ILSVRC2012): ``train/<wnid>/*.JPEG``; the validation split either in class folders or
  flat as released (``ILSVRC2012_val_00000001.JPEG`` ...) with the labels of the release, detected: Kaggle's
  ``LOC_val_solution.csv`` (wnids) or the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (ILSVRC2012 IDs,
  mapped to wnids by the devkit's ``meta.mat``).
- ``imagenet100``: the ImageNet-100 subset (the 100 classes of Tian et al., "Contrastive Multiview Coding",
  arXiv:1906.05849, the CMC list) applied on the fly to an ImageNet folder (or to a copy holding only those classes):
  :data:`IMAGENET100_WNIDS`, no copy of the images.

An image folder (``--dataset ''``) whose files are one of these releases is read the same way (the release's own
files say so: ``wnids.txt`` + ``val/val_annotations.txt``, or a flat validation folder beside its label file).
Every reader gives timm's :class:`~timm.data.ImageDataset` with a reader that has ``samples``, ``class_to_idx``
(the label of every class name), ``layout`` (what was detected, in words) and ``class_descriptions`` (wnid -> words).
"""
import csv
import os
from typing import Dict, List, Optional, Sequence, Tuple

from timm.data import ImageDataset
from timm.data.readers.reader import Reader

__all__ = ['TINY_IMAGENET', 'IMAGENET', 'IMAGENET100', 'PUBLISHED_DATASETS', 'IMAGENET100_WNIDS', 'CLASS_SUBSETS',
           'ReaderImageList', 'is_published', 'detect_published', 'open_published', 'PublishedDataError']

TINY_IMAGENET = 'tinyimagenet'
IMAGENET = 'imagenet'
IMAGENET100 = 'imagenet100'
PUBLISHED_DATASETS = (TINY_IMAGENET, IMAGENET, IMAGENET100)

IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png')
TRAIN_SPLITS = ('train', 'training')
EVAL_SPLITS = ('val', 'valid', 'validation', 'eval', 'evaluation')

# The ImageNet-100 classes of Tian et al. (CMC, arXiv:1906.05849, its imagenet100.txt), in that list's order. The
# labels follow the sorted wnids (what a class-folder copy of the subset gives), see CLASS_SUBSETS.
IMAGENET100_WNIDS = (
    'n02869837', 'n01749939', 'n02488291', 'n02107142', 'n13037406', 'n02091831', 'n04517823', 'n04589890',
    'n03062245', 'n01773797', 'n01735189', 'n07831146', 'n07753275', 'n03085013', 'n04485082', 'n02105505',
    'n01983481', 'n02788148', 'n03530642', 'n04435653', 'n02086910', 'n02859443', 'n13040303', 'n03594734',
    'n02085620', 'n02099849', 'n01558993', 'n04493381', 'n02109047', 'n04111531', 'n02877765', 'n04429376',
    'n02009229', 'n01978455', 'n02106550', 'n01820546', 'n01692333', 'n07714571', 'n02974003', 'n02114855',
    'n03785016', 'n03764736', 'n03775546', 'n02087046', 'n07836838', 'n04099969', 'n04592741', 'n03891251',
    'n02701002', 'n03379051', 'n02259212', 'n07715103', 'n03947888', 'n04026417', 'n02326432', 'n03637318',
    'n01980166', 'n02113799', 'n02086240', 'n03903868', 'n02483362', 'n04127249', 'n02089973', 'n03017168',
    'n02093428', 'n02804414', 'n02396427', 'n04418357', 'n02172182', 'n01729322', 'n02113978', 'n03787032',
    'n02089867', 'n02119022', 'n03777754', 'n04238763', 'n02231487', 'n03032252', 'n02138441', 'n02104029',
    'n03837869', 'n03494278', 'n04136333', 'n03794056', 'n03492542', 'n02018207', 'n04067472', 'n03930630',
    'n03584829', 'n02123045', 'n04229816', 'n02100583', 'n03642806', 'n04336792', 'n03259280', 'n02116738',
    'n02108089', 'n03424325', 'n01855672', 'n02090622',
)
CLASS_SUBSETS: Dict[str, Tuple[str, ...]] = {IMAGENET100: tuple(sorted(IMAGENET100_WNIDS))}

DEVKIT_GROUND_TRUTH = 'ILSVRC2012_validation_ground_truth.txt'
KAGGLE_SOLUTION = 'LOC_val_solution.csv'
KAGGLE_SYNSETS = 'LOC_synset_mapping.txt'


class PublishedDataError(ValueError):
    """A release that does not read (missing label file, unlabelled split); the message is one line."""


class ReaderImageList(Reader):
    """A timm reader over a fixed list of ``(path, label)`` samples (timm's folder reader interface).

    Args:
        root: The folder the paths are relative to in :meth:`filename`.
        samples: ``(absolute path, label index)`` of every image, in reading order.
        class_to_idx: Class name -> label index.
        layout: What was read, in words (``--dry-run`` prints it).
        class_descriptions: Class name -> readable name (Tiny ImageNet's ``words.txt``).
    """

    def __init__(self, root: str, samples: List[Tuple[str, int]], class_to_idx: Dict[str, int], layout: str,
                 class_descriptions: Optional[Dict[str, str]] = None):
        super().__init__()
        self.root = root
        self.samples = samples
        self.class_to_idx = class_to_idx
        self.layout = layout
        self.class_descriptions = class_descriptions or {}

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        return open(path, 'rb'), target

    def __len__(self) -> int:
        return len(self.samples)

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        path = self.samples[index][0]
        if basename:
            return os.path.basename(path)
        return path if absolute else os.path.relpath(path, self.root)


def is_published(name: str) -> bool:
    """True for a ``--dataset`` value of this module (``tinyimagenet``, ``imagenet``, ``imagenet100``)."""
    return (name or '').lower() in PUBLISHED_DATASETS


def _images(folder: str) -> List[str]:
    """The image files directly in ``folder``, sorted."""
    return sorted(entry.name for entry in os.scandir(folder)
                  if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS)


def _subfolders(folder: str) -> List[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _split_folder(root: str, split: str) -> Optional[str]:
    """The folder of ``split`` (timm's synonyms: ``val`` / ``validation`` ...), ``None`` when there is none."""
    synonyms = TRAIN_SPLITS if split in TRAIN_SPLITS else EVAL_SPLITS if split in EVAL_SPLITS else ()
    for candidate in (split, *synonyms):
        path = os.path.join(root, candidate)
        if os.path.isdir(path):
            return path
    return None


def _read_lines(path: str) -> List[str]:
    with open(path, encoding='utf-8') as f:
        return [line.rstrip('\n\r') for line in f if line.strip()]


def _class_folders(folder: str, nested_images: bool) -> Tuple[List[Tuple[str, str]], List[str]]:
    """``(path, class)`` of every image of a class-folder split (``<class>/images/*`` when ``nested_images``)."""
    samples, classes = [], []
    for name in _subfolders(folder):
        class_folder = os.path.join(folder, name)
        if nested_images and os.path.isdir(os.path.join(class_folder, 'images')):
            class_folder = os.path.join(class_folder, 'images')
        files = _images(class_folder)
        if files:
            classes.append(name)
            samples += [(os.path.join(class_folder, file), name) for file in files]
    return samples, classes


# --- Tiny ImageNet ---------------------------------------------------------------------------------------------------

def _tiny_classes(root: str) -> Tuple[List[str], str]:
    """The wnids of ``wnids.txt`` in its order (the label order), else the sorted folders of ``train/``."""
    path = os.path.join(root, 'wnids.txt')
    if os.path.isfile(path):
        wnids = [line.split()[0] for line in _read_lines(path)]
        if len(set(wnids)) != len(wnids):
            raise PublishedDataError(f'{path!r} lists a wnid twice')
        return wnids, 'wnids.txt'
    train = os.path.join(root, 'train')
    if not os.path.isdir(train):
        raise PublishedDataError(f'{root!r} is not Tiny ImageNet: no wnids.txt and no train/ folder (expected the '
                                 'release, tiny-imagenet-200/ with wnids.txt, train/, val/)')
    return _subfolders(train), 'the sorted folders of train/'


def _tiny_words(root: str, wnids: Sequence[str]) -> Dict[str, str]:
    """``words.txt`` (``wnid<TAB>words``, all of WordNet) restricted to the dataset's wnids; ``{}`` without it."""
    path = os.path.join(root, 'words.txt')
    if not os.path.isfile(path):
        return {}
    wanted, words = set(wnids), {}
    for line in _read_lines(path):
        wnid, _, text = line.partition('\t')
        if wnid in wanted:
            words[wnid] = text.strip()
    return words


def _open_tiny_imagenet(root: str, split: str) -> ReaderImageList:
    wnids, order = _tiny_classes(root)
    class_to_idx = {wnid: index for index, wnid in enumerate(wnids)}
    if split == 'test':
        raise PublishedDataError(f"split 'test' of Tiny ImageNet {root!r} is unlabelled (the release gives no test "
                                 "labels): evaluate on 'val' (--val-split val / --split val)")
    folder = _split_folder(root, split)
    if folder is None:
        raise PublishedDataError(f'split {split!r} not found in Tiny ImageNet {root!r} (its splits: train, val; '
                                 'test is unlabelled)')
    annotations = os.path.join(folder, 'val_annotations.txt')
    if os.path.isfile(annotations):
        labels = {}
        for number, line in enumerate(_read_lines(annotations), 1):
            fields = line.split('\t')
            if len(fields) < 2:
                raise PublishedDataError(f'{annotations!r} line {number}: expected "<file>\\t<wnid>\\t<box>", got '
                                         f'{line[:80]!r}')
            labels[fields[0]] = fields[1]
        image_folder = os.path.join(folder, 'images')
        if not os.path.isdir(image_folder):
            raise PublishedDataError(f'{folder!r} has val_annotations.txt but no images/ folder')
        files = _images(image_folder)
        unlabelled = [file for file in files if file not in labels]
        if unlabelled:
            raise PublishedDataError(f'{len(unlabelled)} images of {image_folder!r} have no line in {annotations!r} '
                                     f'(first: {unlabelled[0]!r})')
        missing = sorted(set(labels) - set(files))
        if missing:
            raise PublishedDataError(f'{annotations!r} names {len(missing)} images that {image_folder!r} lacks '
                                     f'(first: {missing[0]!r})')
        named = [(os.path.join(image_folder, file), labels[file]) for file in files]
        layout = f'Tiny ImageNet release: {os.path.basename(folder)}/images/ labelled by val_annotations.txt'
    else:
        named, _ = _class_folders(folder, nested_images=True)
        nested = any(os.sep + 'images' + os.sep in path for path, _ in named[:1])
        layout = f'Tiny ImageNet: {os.path.basename(folder)}/<wnid>/{"images/" if nested else ""}*.JPEG'
    unknown = sorted({wnid for _, wnid in named} - set(class_to_idx))
    if unknown:
        raise PublishedDataError(f'split {split!r} of {root!r} holds classes {", ".join(unknown[:4])} that {order} '
                                 'does not list')
    samples = [(path, class_to_idx[wnid]) for path, wnid in named]
    return ReaderImageList(folder, samples, class_to_idx, f'{layout}; classes in {order} order',
                           _tiny_words(root, wnids))


# --- ImageNet ------------------------------------------------------------------------------------------------------

def _label_file(root: str, folder: str, names: Sequence[str]) -> Optional[str]:
    """The first of ``names`` found in the split folder, the data dir, the devkit's ``data/`` folders or up to three
    levels above the data dir (Kaggle's ``ILSVRC/Data/CLS-LOC/``)."""
    places = [folder, root]
    for base in (root, os.path.dirname(os.path.abspath(root))):
        places += [os.path.join(base, 'ILSVRC2012_devkit_t12', 'data'), os.path.join(base, 'data')]
    above = os.path.abspath(root)
    for _ in range(3):
        above = os.path.dirname(above)
        places.append(above)
    for place in places:
        for name in names:
            path = os.path.join(place, name)
            if os.path.isfile(path):
                return path
    return None


def _devkit_wnids(meta_path: str) -> Dict[int, str]:
    """ILSVRC2012 ID -> wnid of the 1000 leaf synsets of the devkit's ``meta.mat``."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise PublishedDataError(f'reading {meta_path!r} (the devkit labels) needs scipy: pip install scipy') from None
    try:
        synsets = loadmat(meta_path, squeeze_me=True)['synsets']
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PublishedDataError(f'{meta_path!r} is not the devkit\'s meta.mat ({" ".join(str(exc).split())})') \
            from None
    return {int(ident): str(wnid) for ident, wnid, children in
            zip(synsets['ILSVRC2012_ID'], synsets['WNID'], synsets['num_children']) if int(children) == 0}


def _flat_validation_labels(root: str, folder: str, files: Sequence[str]) -> Tuple[Dict[str, str], str]:
    """file name -> wnid of a flat ImageNet validation folder, from the release's label file (detected)."""
    solution = _label_file(root, folder, (KAGGLE_SOLUTION,))
    if solution is not None:
        labels = {}
        with open(solution, newline='', encoding='utf-8') as f:
            for row in csv.DictReader(f):
                image, prediction = row.get('ImageId'), row.get('PredictionString')
                if not image or not prediction:
                    raise PublishedDataError(f'{solution!r} is not Kaggle\'s LOC_val_solution.csv (expected columns '
                                             'ImageId, PredictionString)')
                labels[image] = prediction.split()[0]
        by_file = {file: labels.get(os.path.splitext(file)[0]) for file in files}
        return by_file, f'flat, labelled by {solution}'
    truth = _label_file(root, folder, (DEVKIT_GROUND_TRUTH,))
    if truth is not None:
        meta = os.path.join(os.path.dirname(truth), 'meta.mat')
        if not os.path.isfile(meta):
            raise PublishedDataError(f'{truth!r} labels the validation images by ILSVRC2012 ID, which only the '
                                     f'devkit\'s meta.mat maps to wnids: put meta.mat beside it ({meta!r})')
        id_to_wnid = _devkit_wnids(meta)
        ids = [int(line) for line in _read_lines(truth)]
        by_file = {}
        for file in files:
            stem = os.path.splitext(file)[0]
            number = stem.rsplit('_', 1)[-1]
            position = int(number) - 1 if number.isdigit() else -1
            by_file[file] = id_to_wnid.get(ids[position]) if 0 <= position < len(ids) else None
        return by_file, f'flat, labelled by {truth} (ILSVRC2012 IDs through meta.mat)'
    raise PublishedDataError(
        f'{folder!r} holds its images flat (no class folders) and no label file of the release was found: put '
        f'Kaggle\'s {KAGGLE_SOLUTION} or the devkit (ILSVRC2012_devkit_t12/data/{DEVKIT_GROUND_TRUTH} with '
        'meta.mat) in the data dir, or sort the images into class folders')


def _imagenet_descriptions(wnids: Sequence[str]) -> Dict[str, str]:
    """The readable names of ImageNet wnids (timm's ImageNet info)."""
    try:
        from timm.data import ImageNetInfo
        described = ImageNetInfo('imagenet-1k').label_descriptions(as_dict=True)
    except Exception:  # timm without its ImageNet info files: the wnids stay the names
        return {}
    return {wnid: described[wnid] for wnid in wnids if wnid in described}


def _open_imagenet(root: str, split: str, subset: Optional[Sequence[str]] = None,
                   subset_name: str = '') -> ReaderImageList:
    folder = _split_folder(root, split)
    if folder is None:
        found = ', '.join(_subfolders(root)[:12]) or 'none'
        raise PublishedDataError(f'split {split!r} not found in ImageNet {root!r} (folders there: {found})')
    split_name = os.path.basename(folder)
    flat = _images(folder)
    if flat:
        if split in TRAIN_SPLITS:
            raise PublishedDataError(f'the training split {folder!r} holds images outside class folders: ImageNet '
                                     'trains on train/<wnid>/*.JPEG')
        labels, how = _flat_validation_labels(root, folder, flat)
        unlabelled = [file for file in flat if labels.get(file) is None]
        if unlabelled:
            raise PublishedDataError(f'{len(unlabelled)} images of {folder!r} have no label in the release\'s label '
                                     f'file (first: {unlabelled[0]!r}); {how}')
        named = [(os.path.join(folder, file), labels[file]) for file in flat]
        layout = f'ImageNet: {split_name}/ {how}'
    else:
        named, _ = _class_folders(folder, nested_images=False)
        layout = f'ImageNet: {split_name}/<wnid>/*.JPEG'
    classes = sorted({wnid for _, wnid in named})
    if subset is not None:
        wanted = set(subset)
        if split in TRAIN_SPLITS:
            missing = [wnid for wnid in subset if wnid not in set(classes)]
            if missing:
                raise PublishedDataError(f'{folder!r} lacks {len(missing)} of the {len(subset)} {subset_name} classes '
                                         f'(first: {", ".join(missing[:4])}): --data-dir must hold ImageNet (or a '
                                         f'copy of its {subset_name} classes)')
        named = [(path, wnid) for path, wnid in named if wnid in wanted]
        classes = list(subset)
        layout += f', the {len(subset)} {subset_name} classes applied on the fly'
    class_to_idx = {wnid: index for index, wnid in enumerate(classes)}
    samples = [(path, class_to_idx[wnid]) for path, wnid in named]
    return ReaderImageList(folder, samples, class_to_idx, layout, _imagenet_descriptions(classes))


# --- detection and opening ------------------------------------------------------------------------------------------

def detect_published(root: Optional[str], split: str) -> Optional[str]:
    """The release an image folder (``--dataset ''``) holds, from the release's own files; ``None``: a plain folder.

    Tiny ImageNet: ``wnids.txt`` and ``val/val_annotations.txt`` in the data dir. ImageNet: the split's folder holds
    its images flat (no class folders) and a label file of the release is found (:func:`open_published`).
    """
    if not root or not os.path.isdir(root):
        return None
    if os.path.isfile(os.path.join(root, 'wnids.txt')) and \
            os.path.isfile(os.path.join(root, 'val', 'val_annotations.txt')):
        return TINY_IMAGENET
    folder = _split_folder(root, split) if split in EVAL_SPLITS else None
    if folder is not None and _images(folder) and \
            _label_file(root, folder, (KAGGLE_SOLUTION, DEVKIT_GROUND_TRUTH)) is not None:
        return IMAGENET
    return None


def open_published(name: str, root: str, split: str) -> ImageDataset:
    """timm's :class:`~timm.data.ImageDataset` over a published layout (module docstring); no transform yet.

    Raises:
        PublishedDataError: The folder is not in the layout, or the split cannot be evaluated on (one line).
    """
    name = name.lower()
    if name == TINY_IMAGENET:
        reader = _open_tiny_imagenet(root, split)
    elif name == IMAGENET:
        reader = _open_imagenet(root, split)
    elif name in CLASS_SUBSETS:
        reader = _open_imagenet(root, split, CLASS_SUBSETS[name], 'ImageNet-100 (CMC list)')
    else:
        raise PublishedDataError(f'unknown published dataset {name!r}; expected one of {", ".join(PUBLISHED_DATASETS)}')
    return ImageDataset(root, reader=reader)
