"""Remote-sensing augmentations for the sample dicts the course's Datasets return.

Why these and not the photo augmentations? An overhead image has no "up": every flip and 90° rotation
(the 8 elements of the dihedral group) is as plausible as the original, and none of them interpolates, so
masks stay exact. Radiometry is where remote sensing differs from photos: a sensor has 4-13 bands (not
RGB), illumination, haze and calibration change a band's gain and offset, bands and whole sensors go
missing, and clouds cover parts of optical images (but not radar). Time series gain from dropped dates
(clouds, revisit gaps), shifted seasons (another year or region) and unflagged cloudy observations.

Conventions:

* A sample is a dict. Images are ``[C, H, W]`` tensors under ``IMAGE_KEYS`` (optical under
  ``OPTICAL_KEYS``), masks are ``[H, W]`` (or ``[1, H, W]``) under ``MASK_KEYS``, time series are
  ``"x"`` ``[T, C]`` with ``"doy"`` ``[T]`` and ``"mask"`` ``[T]`` (True = real observation). Every
  transform takes the keys it works on as a parameter and skips keys the sample does not have.
* Radiometric transforms work on the *normalised* data the Datasets return (zero mean, unit standard
  deviation per band), so their amounts are in units of a band's standard deviation.
* Randomness: every transform draws from ``generator`` if given, else from torch's global RNG; so
  ``torch.manual_seed`` makes a pipeline reproducible and DataLoader workers get different draws.
* Transforms return a new dict and never modify the input tensors in place.
* Chain them with ``torchvision.transforms.v2.Compose([...])``, which calls each on the sample dict.

The geometric transforms are written in plain torch (``flip``, ``rot90``, slicing): they are exact
for any number of bands. torchvision's v2 colour transforms assume 1- or 3-channel RGB images, so the
radiometric ones are plain torch too. Values wrapped as ``tv_tensors.Image``/``Mask`` keep their type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors

IMAGE_KEYS = ("image", "s2", "s1", "dem")
OPTICAL_KEYS = ("image", "s2")
MASK_KEYS = ("mask", "landcover", "cloud")
SPATIAL_KEYS = IMAGE_KEYS + MASK_KEYS

Sample = dict[str, Any]


def _uniform(low: float, high: float, size: Sequence[int] | int, generator: torch.Generator | None) -> torch.Tensor:
    size = (size,) if isinstance(size, int) else tuple(size)
    return low + (high - low) * torch.rand(size, generator=generator)


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A random integer in ``0 .. high - 1``."""
    return int(torch.randint(high, (1,), generator=generator))


def _keep_type(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Re-wrap ``result`` as ``like``'s tv_tensor type (torch ops return plain tensors)."""
    return tv_tensors.wrap(result, like=like) if isinstance(like, tv_tensors.TVTensor) else result


def _present(sample: Sample, keys: Sequence[str]) -> list[str]:
    return [key for key in keys if key in sample]


def _spatial_keys(sample: Sample, keys: Sequence[str]) -> list[str]:
    """The keys of ``sample`` to transform geometrically; all must share the same ``H, W``."""
    present = _present(sample, keys)
    for key in present:
        if sample[key].ndim < 2:
            raise ValueError(
                f"sample[{key!r}] has shape {list(sample[key].shape)}; geometric transforms need [..., H, W]. "
                "Pass keys=... without time-series keys."
            )
    sizes = {key: tuple(sample[key].shape[-2:]) for key in present}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"image and mask sizes differ ({sizes}); resample them to one grid first.")
    return present


class RandomFlipRotate:
    """One of the 8 orientations of the dihedral group (4 rotations by 90°, each with or without a flip).

    Applied identically to every image and mask key, so labels stay aligned; no interpolation.
    """

    def __init__(self, keys: Sequence[str] = SPATIAL_KEYS, generator: torch.Generator | None = None) -> None:
        self.keys, self.generator = tuple(keys), generator

    def __call__(self, sample: Sample) -> Sample:
        quarter_turns, flip = _randint(4, self.generator), _randint(2, self.generator)
        out = dict(sample)
        for key in _spatial_keys(sample, self.keys):
            value = sample[key]
            turned = torch.rot90(value, quarter_turns, dims=(-2, -1))
            out[key] = _keep_type(torch.flip(turned, dims=(-1,)) if flip else turned, value)
        return out


class RandomCrop:
    """Cut the same random ``size`` window out of every image and mask key.

    Args:
        size: ``(height, width)`` of the window, or one int for a square.

    Raises:
        ValueError: when the sample is smaller than ``size``.
    """

    def __init__(
        self, size: int | tuple[int, int], keys: Sequence[str] = SPATIAL_KEYS, generator: torch.Generator | None = None
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.keys, self.generator = tuple(keys), generator

    def __call__(self, sample: Sample) -> Sample:
        present = _spatial_keys(sample, self.keys)
        if not present:
            return dict(sample)
        height, width = sample[present[0]].shape[-2:]
        crop_h, crop_w = self.size
        if crop_h > height or crop_w > width:
            raise ValueError(f"cannot crop {crop_h}x{crop_w} from a {height}x{width} sample; use a smaller size.")
        top, left = _randint(height - crop_h + 1, self.generator), _randint(width - crop_w + 1, self.generator)
        out = dict(sample)
        for key in present:
            out[key] = _keep_type(sample[key][..., top : top + crop_h, left : left + crop_w], sample[key])
        return out


class RandomBrightnessContrast:
    """Scale each band's contrast around its mean and shift its brightness (illumination, sun angle).

    ``x' = (x - mean) * c + mean + b`` per image with ``c ~ U(1 - contrast, 1 + contrast)`` and
    ``b ~ U(-brightness, brightness)`` (in band standard deviations for normalised data).
    """

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        keys: Sequence[str] = OPTICAL_KEYS,
        generator: torch.Generator | None = None,
    ) -> None:
        self.brightness, self.contrast = brightness, contrast
        self.keys, self.generator = tuple(keys), generator

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for key in _present(sample, self.keys):
            image = sample[key]
            mean = image.mean(dim=(-2, -1), keepdim=True)
            contrast = float(_uniform(1 - self.contrast, 1 + self.contrast, 1, self.generator))
            brightness = float(_uniform(-self.brightness, self.brightness, 1, self.generator))
            out[key] = _keep_type((image - mean) * contrast + mean + brightness, image)
        return out


class RandomGamma:
    """Gamma curve per image: rescale each band to 0..1 (its own min/max), raise to ``gamma``, scale back.

    The min-max rescaling makes it work on normalised and on reflectance data alike.
    """

    def __init__(
        self,
        gamma: tuple[float, float] = (0.8, 1.25),
        keys: Sequence[str] = OPTICAL_KEYS,
        generator: torch.Generator | None = None,
    ) -> None:
        self.gamma, self.keys, self.generator = gamma, tuple(keys), generator

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for key in _present(sample, self.keys):
            image = sample[key]
            low = image.amin(dim=(-2, -1), keepdim=True)
            span = (image.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-6)
            gamma = float(_uniform(*self.gamma, 1, self.generator))
            out[key] = _keep_type(((image - low) / span) ** gamma * span + low, image)
        return out


class GaussianNoise:
    """Add sensor noise ``N(0, std^2)`` to every pixel of every band."""

    def __init__(
        self, std: float = 0.05, keys: Sequence[str] = IMAGE_KEYS, generator: torch.Generator | None = None
    ) -> None:
        self.std, self.keys, self.generator = std, tuple(keys), generator

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for key in _present(sample, self.keys):
            image = sample[key]
            noise = torch.randn(image.shape, generator=self.generator, dtype=image.dtype)
            out[key] = _keep_type(image + self.std * noise, image)
        return out


class SpectralJitter:
    """Per-band gain and offset (calibration, atmosphere): ``x' = x * (1 + g_c) + o_c``, both uniform."""

    def __init__(
        self,
        gain: float = 0.05,
        offset: float = 0.05,
        keys: Sequence[str] = IMAGE_KEYS,
        generator: torch.Generator | None = None,
    ) -> None:
        self.gain, self.offset, self.keys, self.generator = gain, offset, tuple(keys), generator

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for key in _present(sample, self.keys):
            image = sample[key]
            bands = image.shape[0]
            gain = 1 + _uniform(-self.gain, self.gain, (bands, 1, 1), self.generator)
            offset = _uniform(-self.offset, self.offset, (bands, 1, 1), self.generator)
            out[key] = _keep_type(image * gain.to(image.dtype) + offset.to(image.dtype), image)
        return out


class BandDropout:
    """Set each band to zero (the mean of normalised data) with probability ``p``; at least one band survives."""

    def __init__(
        self, p: float = 0.1, keys: Sequence[str] = IMAGE_KEYS, generator: torch.Generator | None = None
    ) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p={p} must be a probability in 0..1.")
        self.p, self.keys, self.generator = p, tuple(keys), generator

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for key in _present(sample, self.keys):
            image = sample[key]
            dropped = torch.rand(image.shape[0], generator=self.generator) < self.p
            if dropped.all():
                dropped[_randint(len(dropped), self.generator)] = False
            out[key] = _keep_type(image.masked_fill(dropped[:, None, None], 0), image)
        return out


class ModalityDropout:
    """Zero a whole modality (e.g. S2 under clouds, a missing DEM) with probability ``p``; one always stays.

    The key keeps its zero tensor so that samples still batch together.
    """

    def __init__(
        self, p: float = 0.3, keys: Sequence[str] = ("s2", "s1", "dem"), generator: torch.Generator | None = None
    ) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p={p} must be a probability in 0..1.")
        self.p, self.keys, self.generator = p, tuple(keys), generator

    def __call__(self, sample: Sample) -> Sample:
        present = _present(sample, self.keys)
        if not present:
            return dict(sample)
        dropped = torch.rand(len(present), generator=self.generator) < self.p
        if dropped.all():
            dropped[_randint(len(present), self.generator)] = False
        out = dict(sample)
        for key, drop in zip(present, dropped.tolist(), strict=True):
            if drop:
                out[key] = _keep_type(torch.zeros_like(sample[key]), sample[key])
        return out


class CloudSimulation:
    """With probability ``p``, cover the optical bands with a smooth bright blob and mark it in the cloud mask.

    The blob is a Gaussian with random centre and radius; the image becomes
    ``(1 - a) * image + a * brightness`` with opacity ``a`` (up to ``max_opacity``). Where ``a > 0.5`` the
    ``mask_key`` (if the sample has it) is set to 1. Radar (``"s1"``) is left as it is: clouds do not stop it.

    Args:
        brightness: the cloud's value in every band (about 3 band standard deviations above the mean of
            normalised data; use ~0.6 for reflectance).
    """

    def __init__(
        self,
        p: float = 0.5,
        brightness: float = 3.0,
        max_opacity: float = 1.0,
        keys: Sequence[str] = OPTICAL_KEYS,
        mask_key: str = "cloud",
        generator: torch.Generator | None = None,
    ) -> None:
        self.p, self.brightness, self.max_opacity = p, brightness, max_opacity
        self.keys, self.mask_key, self.generator = tuple(keys), mask_key, generator

    def __call__(self, sample: Sample) -> Sample:
        present = _present(sample, self.keys)
        if not present or float(torch.rand(1, generator=self.generator)) >= self.p:
            return dict(sample)
        height, width = sample[present[0]].shape[-2:]
        rows = torch.arange(height, dtype=torch.float32)[:, None]
        cols = torch.arange(width, dtype=torch.float32)[None, :]
        centre_row, centre_col = (_uniform(0, 1, 2, self.generator) * torch.tensor([height, width])).tolist()
        radius = float(_uniform(0.15, 0.4, 1, self.generator)) * min(height, width)
        opacity = float(_uniform(0.6, 1.0, 1, self.generator)) * self.max_opacity
        alpha = opacity * torch.exp(-((rows - centre_row) ** 2 + (cols - centre_col) ** 2) / (2 * radius**2))
        out = dict(sample)
        for key in present:
            image = sample[key]
            out[key] = _keep_type((image * (1 - alpha) + self.brightness * alpha).to(image.dtype), image)
        if self.mask_key in sample:
            cloud = sample[self.mask_key]
            out[self.mask_key] = _keep_type(torch.maximum(cloud, (alpha > 0.5).to(cloud.dtype)), cloud)
        return out


def _compact(sample: Sample, keep: torch.Tensor) -> Sample:
    """Keep the observations where ``keep`` is True, in order, and pad the end like the Datasets do."""
    length, kept = len(keep), int(keep.sum())
    out = dict(sample)
    out["x"] = torch.zeros_like(sample["x"])
    out["x"][:kept] = sample["x"][keep]
    out["doy"] = torch.zeros_like(sample["doy"])
    out["doy"][:kept] = sample["doy"][keep]
    out["mask"] = torch.arange(length) < kept
    return out


class RandomTemporalDropout:
    """Drop each real observation with probability ``p`` (as if clouded out), keeping at least ``min_keep``.

    Dropped observations are removed and the series is padded at the end (``mask`` False), so the
    sample keeps its length and format. Series with ``min_keep`` or fewer observations are left as they are.
    """

    def __init__(self, p: float = 0.2, min_keep: int = 8, generator: torch.Generator | None = None) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p={p} must be a probability in 0..1.")
        self.p, self.min_keep, self.generator = p, min_keep, generator

    def __call__(self, sample: Sample) -> Sample:
        valid = sample["mask"].clone()
        n_valid = int(valid.sum())
        if n_valid <= self.min_keep:
            return dict(sample)
        drop = torch.rand(len(valid), generator=self.generator) < self.p
        n_keep = max(self.min_keep, n_valid - int((drop & valid).sum()))
        # Undropped observations score 1..2, dropped ones 0..1, padding -1: the top n_keep are the undropped
        # ones, topped up with random dropped ones when fewer than min_keep survived.
        score = torch.rand(len(valid), generator=self.generator) + (~drop).float()
        score[~valid] = -1
        keep = torch.zeros_like(valid)
        keep[torch.topk(score, n_keep).indices] = True
        return _compact(sample, keep)


class RandomTemporalShift:
    """Shift the days of year of all real observations by the same ``U{-max_days..max_days}`` (another season).

    Days are clipped to 1..366; a multi-year series (days counted on past 366) is only kept from going below
    day 1. Padding keeps day 0.
    """

    def __init__(self, max_days: int = 10, generator: torch.Generator | None = None) -> None:
        self.max_days, self.generator = max_days, generator

    def __call__(self, sample: Sample) -> Sample:
        shift = _randint(2 * self.max_days + 1, self.generator) - self.max_days
        multi_year = bool((sample["doy"][sample["mask"]] > 366).any())
        last = None if multi_year else 366
        out = dict(sample)
        out["doy"] = torch.where(sample["mask"], (sample["doy"] + shift).clamp(1, last), sample["doy"])
        return out


class TemporalCloudNoise:
    """Replace each real observation with probability ``p`` by a bright, flat (cloudy) spectrum, unflagged.

    Args:
        brightness: the cloud's value in every band, in the units of ``x`` (a scalar or one value per band;
            for normalised data ``(0.5 - mean) / std`` of the reflectance statistics is a realistic cloud).
        jitter: standard deviation of the noise added to the cloud spectrum.
    """

    def __init__(
        self,
        p: float = 0.1,
        brightness: float | torch.Tensor = 3.0,
        jitter: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p={p} must be a probability in 0..1.")
        self.p, self.brightness, self.jitter, self.generator = p, brightness, jitter, generator

    def __call__(self, sample: Sample) -> Sample:
        x = sample["x"]
        clouded = (torch.rand(len(x), generator=self.generator) < self.p) & sample["mask"]
        cloud = torch.as_tensor(self.brightness, dtype=x.dtype) + self.jitter * torch.randn(
            x.shape, generator=self.generator, dtype=x.dtype
        )
        out = dict(sample)
        out["x"] = torch.where(clouded[:, None], cloud, x)
        return out
