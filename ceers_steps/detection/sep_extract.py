"""``sep.extract`` with the CEERS settings, growing SEP's buffers on crowded or deep frames."""

import sep

__all__ = ["DetectionError", "extract"]


# SEP's work buffers: start at the larger of _PIXSTACK_START and a quarter of the
# image's pixels, grow on overflow (crowded or deep frames).
_PIXSTACK_START = 300_000
_PIXSTACK_DIVISOR = 4
_SUBOBJECT_START = 4096
_GROW_TRIES = 8


class DetectionError(RuntimeError):
    """Detection could not be done on an image (the message says why)."""


def extract(sub, noise, mask, params):
    """
    ``sep.extract`` that grows SEP's pixel stack and sub-object limit on overflow.

    Crowded or deep frames overflow the defaults; each overflow multiplies the
    limit by 8, up to ``_GROW_TRIES`` times in all, before giving up with `DetectionError`.
    """
    kernel = params._kernel_array
    # SExtractor convolves ("conv"); SEP's "matched" filter differs with a noise map.
    extract_kwargs = {"filter_type": "conv"} if kernel is not None else {}
    pixstack = max(_PIXSTACK_START, sub.size // _PIXSTACK_DIVISOR)
    sublimit = _SUBOBJECT_START
    for _ in range(_GROW_TRIES + 1):
        sep.set_extract_pixstack(pixstack)
        sep.set_sub_object_limit(sublimit)
        try:
            return sep.extract(
                sub, params.detect_thresh, err=noise, mask=mask, minarea=params.detect_minarea,
                filter_kernel=kernel, deblend_nthresh=params.deblend_nthresh,
                deblend_cont=params.deblend_cont, clean=params.clean,
                clean_param=params.clean_param, **extract_kwargs)
        except Exception as exc:  # SEP raises plain Exception subclasses with its message
            message = str(exc)
            if "pixel buffer full" in message:
                pixstack *= 8
            elif "deblending overflow" in message or "sub-object" in message:
                sublimit *= 8
            else:
                raise DetectionError(f"SEP extraction failed: {message}") from exc
            last = message
    raise DetectionError(f"SEP extraction failed after growing its buffers "
                         f"(pixel stack {pixstack // 8}, sub-objects {sublimit}): {last}")
