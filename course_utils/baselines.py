"""The field baselines a deep model must beat: a threshold rule with edges and a per-pixel random forest.

Both work on stored images ``[N, C, H, W]`` (chips, or a scene as one image) of any band count and 3-class labels
``[N, H, W]`` (0 non-field, 1 field interior, 2 field edge; :data:`IGNORE` marks pixels to leave out, such as
nodata or another part of a split scene):

* :func:`fit_threshold_rule`: a pixel is field when one score exceeds a threshold, and field pixels within
  ``edge_px`` of non-field become edges (:func:`with_edges`). The score is NDVI when the near-infrared and red
  bands are named; otherwise the single band (and direction) that does best. The threshold is the one with the
  highest mean IoU over the three classes on the images it is fitted on (the validation images, for a fair choice).
* :class:`PixelForest`: a class-balanced random forest (Breiman, 2001) on pixels sampled from the training
  images; its features (:func:`pixel_features`) are the bands as reflectance, NDVI when the near-infrared band is
  named, and optionally each of them averaged over a neighbourhood with its local standard deviation (texture),
  which gives the forest a little of the context a CNN learns. :func:`choose_forest_depth` picks its depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier

from course_utils.data.fields import ndvi
from course_utils.metrics import confusion_matrix
from course_utils.models.unet import class_miou

#: Label value of pixels that fitting and scoring leave out.
IGNORE = 255

#: Thresholds of NDVI that :func:`fit_threshold_rule` tries by default.
NDVI_THRESHOLDS = np.linspace(-0.1, 0.9, 51)


def masks_miou(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean IoU over the three classes of labels ``[..., H, W]`` (a class neither present nor predicted counts 0),
    leaving out :data:`IGNORE` pixels."""
    return class_miou(confusion_matrix(predicted, labels, 3, ignore_index=IGNORE))


def with_edges(extent: np.ndarray, edge_px: int = 1) -> np.ndarray:
    """Three classes from a field-extent mask ``[N, H, W]`` or ``[H, W]``: field pixels within ``edge_px`` (a square
    neighbourhood) of non-field become edges (2), the others interior (1); non-field stays 0."""
    extent = np.asarray(extent, dtype=bool)
    window = np.ones((1,) * (extent.ndim - 2) + (2 * edge_px + 1, 2 * edge_px + 1), dtype=bool)
    interior = ndimage.binary_erosion(extent, structure=window, border_value=1)
    return np.where(extent, np.where(interior, 1, 2), 0).astype(np.uint8)


def pixel_features(
    images: np.ndarray,
    *,
    red: int | None = None,
    nir: int | None = None,
    scale: float = 10_000,
    neighbourhood: int = 0,
) -> np.ndarray:
    """Per-pixel features ``[N * H * W, F]`` of stored images ``[N, C, H, W]``.

    Args:
        images: stored values (for the course's data, reflectance x ``scale``).
        red, nir: positions of the red and near-infrared bands; NDVI is added when both are given.
        scale: stored value of reflectance 1; the bands are divided by it.
        neighbourhood: when > 0, each feature's mean and standard deviation over a ``2 n + 1`` square are added.
    """
    images = np.asarray(images, dtype=np.float32)
    stacked = images / scale
    if nir is not None and red is not None:
        stacked = np.concatenate([stacked, ndvi(images, red=red, nir=nir)[:, None]], axis=1)
    if neighbourhood > 0:
        size = (1, 1, 2 * neighbourhood + 1, 2 * neighbourhood + 1)
        mean = ndimage.uniform_filter(stacked, size=size, mode="reflect")
        spread = np.sqrt(np.maximum(ndimage.uniform_filter(stacked**2, size=size, mode="reflect") - mean**2, 0))
        stacked = np.concatenate([stacked, mean, spread], axis=1)
    return stacked.transpose(0, 2, 3, 1).reshape(-1, stacked.shape[1])


@dataclass(frozen=True)
class ThresholdRule:
    """Field where a score is above (or below) a threshold, with edges (:func:`fit_threshold_rule` fits one).

    Attributes:
        band: the band position the score is, or ``None`` for NDVI of ``red`` and ``nir``.
        threshold: the threshold of the score.
        above: field where the score is above the threshold (else below).
        red, nir: band positions of NDVI (``None`` when the score is a band).
        edge_px: edge width in pixels.
    """

    band: int | None
    threshold: float
    above: bool = True
    red: int | None = None
    nir: int | None = None
    edge_px: int = 1

    def score(self, images: np.ndarray) -> np.ndarray:
        """The score ``[N, H, W]`` the rule thresholds: NDVI, or one band's stored values."""
        if self.band is None:
            return ndvi(images, red=self.red, nir=self.nir)
        return np.asarray(images[:, self.band], dtype=np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Three-class masks ``[N, H, W]`` of stored images ``[N, C, H, W]``."""
        score = self.score(images)
        return with_edges(score > self.threshold if self.above else score < self.threshold, self.edge_px)


def fit_threshold_rule(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    red: int | None = None,
    nir: int | None = None,
    edge_px: int = 1,
    thresholds: Sequence[float] | np.ndarray | None = None,
) -> ThresholdRule:
    """The threshold rule with the highest 3-class mean IoU on ``images`` ``[N, C, H, W]`` and ``labels``.

    With ``red`` and ``nir`` (band positions) the score is NDVI, tried at ``thresholds`` (default
    :data:`NDVI_THRESHOLDS`); without them every band is tried, both ways (field above or below), at
    ``thresholds`` or else at 51 quantiles of its values. Ties go to the first candidate.
    """
    if (red is None) != (nir is None):
        raise ValueError("name both the red and the near-infrared band for NDVI, or neither (the rule then uses bands)")
    labels = np.asarray(labels)
    if red is not None:
        candidates = [ThresholdRule(None, 0.0, True, red, nir, edge_px)]
    else:
        candidates = [ThresholdRule(b, 0.0, above, None, None, edge_px) for b in range(images.shape[1])
                      for above in (True, False)]  # fmt: skip
    best, best_miou = None, -1.0
    for rule in candidates:
        score = rule.score(images)
        grid = thresholds if thresholds is not None else NDVI_THRESHOLDS
        if rule.band is not None and thresholds is None:
            grid = np.quantile(score[labels != IGNORE], np.linspace(0.02, 0.98, 51))
        for threshold in grid:
            candidate = replace(rule, threshold=float(threshold))
            miou = masks_miou(candidate.predict(images), labels)
            if miou > best_miou:
                best, best_miou = candidate, miou
    return best


@dataclass
class PixelForest:
    """A class-balanced random forest on the features of single pixels (:func:`pixel_features`).

    Attributes:
        trees, depth: the forest's size and its trees' greatest depth.
        pixels: training pixels, the same number sampled from every image (labels :data:`IGNORE` are never drawn).
        red, nir, scale, neighbourhood: the features, see :func:`pixel_features`.
        seed: the pixel sample's and the forest's seed.
        n_jobs: processes of scikit-learn (-1: every core).
    """

    trees: int = 100
    depth: int | None = 14
    pixels: int = 40_000
    red: int | None = None
    nir: int | None = None
    scale: float = 10_000
    neighbourhood: int = 0
    seed: int = 0
    n_jobs: int = -1
    forest: RandomForestClassifier | None = field(default=None, repr=False)

    def features(self, images: np.ndarray) -> np.ndarray:
        """The forest's features ``[N * H * W, F]`` of stored images ``[N, C, H, W]``."""
        return pixel_features(images, red=self.red, nir=self.nir, scale=self.scale, neighbourhood=self.neighbourhood)

    def fit(self, images: np.ndarray, labels: np.ndarray) -> PixelForest:
        """Train on ``pixels // N`` random labelled pixels of each of the ``N`` images; returns itself."""
        rng = np.random.default_rng(self.seed)
        features, targets = [], []
        for image, label in zip(images, labels, strict=True):
            candidates = np.flatnonzero(label.ravel() != IGNORE)
            picks = rng.choice(candidates, min(self.pixels // len(labels), len(candidates)), replace=False)
            features.append(self.features(image[None])[picks])
            targets.append(label.ravel()[picks])
        if not sum(len(t) for t in targets):
            raise ValueError("no labelled pixels to train the forest on (every label is IGNORE)")
        self.forest = RandomForestClassifier(self.trees, max_depth=self.depth, class_weight="balanced",
                                             n_jobs=self.n_jobs, random_state=self.seed)  # fmt: skip
        self.forest.fit(np.concatenate(features), np.concatenate(targets))
        return self

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class masks ``[N, H, W]`` (uint8) of stored images, one image at a time (little memory)."""
        if self.forest is None:
            raise ValueError("the forest is not trained yet: call .fit(images, labels) first")
        masks = [self.forest.predict(self.features(image[None])).reshape(image.shape[1:]) for image in images]
        return np.stack(masks).astype(np.uint8)


def choose_forest_depth(
    forest: PixelForest,
    depths: Sequence[int | None],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
) -> tuple[int | None, dict[int | None, float]]:
    """The depth of ``depths`` whose forest (``forest``'s other settings) has the best 3-class mean IoU on ``val``.

    Args:
        forest: the settings to vary the depth of.
        depths: the candidates.
        train, val: ``(images, labels)`` to train on and to choose on.

    Returns:
        ``(best depth, {depth: validation mIoU})``.
    """
    scores = {depth: masks_miou(replace(forest, depth=depth).fit(*train).predict(val[0]), val[1]) for depth in depths}
    return max(scores, key=scores.get), scores
